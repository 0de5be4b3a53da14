"""JWKS parsing: usable keys kept, unusable ones skipped with a reason, never an empty set."""

from __future__ import annotations

import json
import warnings
from typing import Any, Literal, cast

import pytest
from joserfc.jwk import ECKey, OKPKey, RSAKey

from extauthz.errors import JwksError
from extauthz.keys import jwks
from tests.support.signing import Signer

# The curves joserfc's OKPKey.generate_key accepts (its own alias is private).
OKPCurve = Literal["Ed25519", "Ed448", "X25519", "X448"]

ALGS = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
    "ES256", "ES384", "ES512", "EdDSA", "Ed25519",
]  # fmt: skip


@pytest.fixture(scope="module")
def signers() -> dict[str, Signer]:
    return {alg: Signer(alg, kid=f"k-{alg}") for alg in ALGS}


@pytest.fixture(scope="module")
def rsa_signer() -> Signer:
    return Signer("RS256", kid="rsa")


def small_rsa_jwk(bits: int = 1024) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        key = RSAKey.generate_key(bits)
    return {**key.as_dict(private=False), "kid": f"rsa-{bits}", "use": "sig"}


@pytest.mark.parametrize("alg", ALGS)
def test_usable_keys_are_kept(signers: dict[str, Signer], alg: str) -> None:
    s = signers[alg]
    ks = jwks.parse_keyset({"keys": [s.jwk()]})
    assert ks.skipped == ()
    (key,) = ks.keys
    assert key.kid == s.kid
    assert key.alg == alg
    assert key.kty == ("EC" if alg.startswith("ES") else "OKP" if alg.startswith("Ed") else "RSA")
    assert ks.kids == {s.kid}
    assert ks.by_kid[s.kid] == (key,)
    assert key.thumbprint and ks.thumbprints == {key.thumbprint}
    assert ks.candidates(s.kid, alg) == (key,)
    assert ks.candidates(None, alg) == (key,)
    assert not key.key.is_private


def test_mixed_document_from_bytes_and_str(signers: dict[str, Signer]) -> None:
    doc = {"keys": [signers[a].jwk() for a in ("RS256", "ES256", "EdDSA")]}
    for form in (json.dumps(doc), json.dumps(doc).encode()):
        ks = jwks.parse_keyset(form)
        assert ks.kids == {"k-RS256", "k-ES256", "k-EdDSA"}
        assert {k.kty for k in ks.keys} == {"RSA", "EC", "OKP"}


def test_keys_without_use_or_alg_are_usable() -> None:
    key = ECKey.generate_key("P-256")
    ks = jwks.parse_keyset({"keys": [key.as_dict(private=False)]})
    (vk,) = ks.keys
    assert vk.kid is None and vk.alg is None and vk.crv == "P-256"
    assert ks.candidates(None, "ES256") == (vk,)
    assert ks.candidates("any-kid", "ES256") == ()  # kid given: lookup only by kid


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"use": "enc"}, "use"),
        ({"key_ops": ["encrypt"]}, "key_ops"),
        ({"key_ops": "verify"}, "key_ops"),
        ({"alg": "RSA-OAEP"}, "unsupported alg"),
        ({"alg": "none"}, "unsupported alg"),
        ({"kid": 42}, "kid"),
    ],
)
def test_unusable_members_are_skipped_with_reason(
    rsa_signer: Signer, extra: dict[str, Any], reason: str
) -> None:
    good = Signer("ES256", kid="good")
    ks = jwks.parse_keyset({"keys": [rsa_signer.jwk(**extra), good.jwk()]})
    assert [k.kid for k in ks.keys] == ["good"]
    ((label, why),) = ks.skipped
    assert reason in why
    assert label in ("rsa", "42")


def test_enc_key_skipped_by_kid(rsa_signer: Signer) -> None:
    ks = jwks.parse_keyset(
        {"keys": [rsa_signer.jwk(use="enc", kid="enc-key"), Signer("EdDSA").jwk()]}
    )
    assert "enc-key" not in ks.kids
    assert ks.skipped[0][0] == "enc-key"
    assert "enc" in ks.skipped[0][1]


@pytest.mark.filterwarnings("ignore:Key size")
@pytest.mark.parametrize("bits", [1024, 1536, 2040])
def test_small_rsa_keys_skipped(bits: int) -> None:
    ks = jwks.parse_keyset({"keys": [small_rsa_jwk(bits), Signer("ES256", kid="ec").jwk()]})
    assert ks.kids == {"ec"}
    ((label, why),) = ks.skipped
    assert label == f"rsa-{bits}"
    assert str(bits) in why and "2048" in why


@pytest.mark.filterwarnings("ignore:Key size")
def test_small_rsa_only_document_rejected() -> None:
    with pytest.raises(JwksError, match="below 2048"):
        jwks.parse_keyset({"keys": [small_rsa_jwk()]})


@pytest.mark.parametrize("crv", ["X25519", "X448"])
def test_x_curve_okp_keys_skipped(crv: OKPCurve) -> None:
    key = OKPKey.generate_key(crv)
    ks = jwks.parse_keyset(
        {"keys": [{**key.as_dict(private=False), "kid": "x"}, Signer("EdDSA").jwk()]}
    )
    assert "x" not in ks.kids
    assert ks.skipped[0][0] == "x"
    assert "not a signature curve" in ks.skipped[0][1]


@pytest.mark.parametrize("alg", ["RS256", "ES256", "ES512", "EdDSA"])
def test_private_members_not_imported(alg: str) -> None:
    s = Signer(alg, kid="leaky")
    leaked = {**s.key.as_dict(private=True), "kid": "leaky", "alg": alg}
    assert "d" in leaked
    ks = jwks.parse_keyset({"keys": [leaked]})
    (vk,) = ks.keys
    assert not vk.key.is_private
    assert vk.key.private_key is None
    assert "d" not in vk.key.as_dict(private=False)
    assert vk.thumbprint == jwks.parse_keyset({"keys": [s.jwk()]}).keys[0].thumbprint


@pytest.mark.parametrize(
    "junk",
    [
        "a string",
        42,
        None,
        ["list"],
        {},
        {"kty": "RSA"},
        {"kty": "RSA", "n": "AA", "e": "AQAB"},
        {"kty": "RSA", "n": 5, "e": "AQAB"},
        {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"},
        {"kty": "EC", "crv": "P-999", "x": "AA", "y": "AA"},
        {"kty": "OKP", "crv": "Ed25519", "x": "AA"},
        {"kty": "OKP", "x": "AA"},
        {"kty": "oct"},
        {"kty": "unknown"},
        {"kty": {"nested": 1}},
        {"kty": None},
        {"kty": "RSA", "alg": ["RS256"]},
        {"kty": "RSA", "alg": {"x": 1}},
        {"kty": "RSA", "use": ["sig"]},
    ],
)
def test_junk_entries_skipped(junk: object) -> None:
    good = Signer("EdDSA", kid="good")
    ks = jwks.parse_keyset({"keys": [junk, good.jwk()]})
    assert ks.kids == {"good"}
    assert len(ks.keys) == 1
    assert len(ks.skipped) == 1
    with pytest.raises(JwksError):
        jwks.parse_keyset({"keys": [junk]})


@pytest.mark.parametrize(
    "document",
    [
        b"not json",
        b"\xff\xfe",
        "",
        "[]",
        "null",
        '{"keys": {}}',
        '{"keys": "abc"}',
        {},
        {"keys": None},
        {"keys": []},
        {"keys": [{"kty": "RSA", "use": "enc"}]},
        {"other": []},
    ],
)
def test_no_usable_key_raises(document: Any) -> None:
    with pytest.raises(JwksError):
        jwks.parse_keyset(document)


def test_duplicate_kids_are_all_candidates() -> None:
    a, b = Signer("ES256", kid="same"), Signer("ES256", kid="same")
    ks = jwks.parse_keyset({"keys": [a.jwk(), b.jwk()]})
    assert len(ks.by_kid["same"]) == 2
    assert len(ks.candidates("same", "ES256")) == 2


@pytest.mark.parametrize(
    ("key_alg", "token_alg", "ok"),
    [
        # EC: the curve must match the algorithm.
        ("ES256", "ES256", True),
        ("ES256", "ES384", False),
        ("ES256", "ES512", False),
        ("ES384", "ES256", False),
        ("ES512", "ES512", True),
        ("ES256", "EdDSA", False),
        ("ES256", "RS256", False),
        # RSA: never HMAC, never EC/EdDSA; JWK `alg` must equal the token's.
        ("RS256", "RS256", True),
        ("RS256", "HS256", False),
        ("RS256", "HS384", False),
        ("RS256", "RS384", False),
        ("RS256", "PS256", False),
        ("PS256", "RS256", False),
        ("RS256", "ES256", False),
        ("RS256", "EdDSA", False),
        ("RS256", "none", False),
        # OKP Ed25519.
        ("EdDSA", "EdDSA", True),
        ("EdDSA", "Ed25519", False),  # JWK alg EdDSA != token alg Ed25519
        ("Ed25519", "Ed25519", True),
        ("EdDSA", "ES256", False),
        ("EdDSA", "HS256", False),
    ],
)
def test_candidates_enforce_kty_crv_and_jwk_alg(
    signers: dict[str, Signer], key_alg: str, token_alg: str, ok: bool
) -> None:
    s = signers[key_alg]
    ks = jwks.parse_keyset({"keys": [s.jwk()]})
    assert bool(ks.candidates(s.kid, token_alg)) is ok
    assert bool(ks.candidates(None, token_alg)) is ok


@pytest.mark.parametrize(
    ("key", "token_alg", "ok"),
    [
        # Without a JWK `alg`, key type and curve alone decide.
        ("RSA", "RS256", True),
        ("RSA", "PS512", True),
        ("RSA", "HS256", False),
        ("RSA", "ES256", False),
        ("P-256", "ES256", True),
        ("P-256", "ES384", False),
        ("P-384", "ES384", True),
        ("P-384", "ES256", False),
        ("P-521", "ES512", True),
        ("Ed25519", "EdDSA", True),
        ("Ed25519", "Ed25519", True),
        ("Ed448", "EdDSA", True),
        ("Ed448", "Ed25519", False),
        ("Ed25519", "ES256", False),
    ],
)
def test_candidates_without_jwk_alg(key: str, token_alg: str, ok: bool) -> None:
    if key == "RSA":
        k: RSAKey | ECKey | OKPKey = RSAKey.generate_key(2048)
    elif key.startswith("P-"):
        k = ECKey.generate_key(key)
    else:
        assert key in ("Ed25519", "Ed448")
        k = OKPKey.generate_key(cast(OKPCurve, key))
    ks = jwks.parse_keyset({"keys": [{**k.as_dict(private=False), "kid": "k"}]})
    assert bool(ks.candidates("k", token_alg)) is ok


def test_empty_keyset_constant() -> None:
    assert jwks.EMPTY.keys == ()
    assert jwks.EMPTY.candidates(None, "RS256") == ()
    assert jwks.EMPTY.candidates("x", "RS256") == ()
