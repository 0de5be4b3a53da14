"""Hostile or degenerate public keys: refused at load, counted as skipped, never usable.

A JWKS is input too. An issuer that publishes (or an attacker who can write) a key that
verifies forgeries must not turn extauthz into a door: such keys are skipped one by one
with a reason, a JWKS left with none is refused, and a provider with no usable key is
not ready.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from joserfc.jwk import OctKey, RSAKey
from joserfc.util import urlsafe_b64decode

from extauthz import config as cfgmod
from extauthz import metrics
from extauthz.core.decision import Decision
from extauthz.core.policy import Policy
from extauthz.core.request import AuthRequest
from extauthz.errors import JwksError
from extauthz.keys import jwks
from tests.adversarial.build import b64
from tests.support.answers import settled
from tests.support.server import ServerThread
from tests.support.signing import Signer, claims

ISS = "https://issuer.example"

# Ed25519 encodings of small-order points (the identity, and points of order 2, 4 and 8)
# and non-canonical encodings of them; libsodium refuses the same set.
ED25519_DEGENERATE = {
    "identity": "01" + "00" * 31,
    "order-2": "ec" + "ff" * 30 + "7f",
    "order-4": "00" * 32,
    "order-4-signed": "00" * 31 + "80",
    "order-8-a": "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "order-8-b": "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
    "order-8-c": "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "order-8-d": "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
    "identity-negative-zero": "01" + "00" * 30 + "80",
    "y-above-p": "ee" + "ff" * 30 + "7f",
    "y-equals-p": "ed" + "ff" * 30 + "7f",
}
# The Ed25519 base point: a forged signature under the identity key is (B, s=1).
BASE_POINT = bytes.fromhex("58" + "66" * 31)


def okp(x: bytes, crv: str = "Ed25519", kid: str = "bad") -> dict[str, Any]:
    return {"kty": "OKP", "crv": crv, "x": b64(x), "kid": kid, "use": "sig"}


def test_the_threat_is_real_openssl_accepts_a_forgery_under_the_identity_key() -> None:
    """Why these keys must never load: the crypto library itself does not refuse them."""
    identity = Ed25519PublicKey.from_public_bytes(bytes.fromhex(ED25519_DEGENERATE["identity"]))
    forged = BASE_POINT + (1).to_bytes(32, "little")
    identity.verify(forged, b"any token anyone writes")  # does not raise


@pytest.mark.parametrize("name", sorted(ED25519_DEGENERATE))
def test_degenerate_ed25519_keys_are_skipped(name: str) -> None:
    good = Signer("EdDSA")
    keyset = jwks.parse_keyset({"keys": [okp(bytes.fromhex(ED25519_DEGENERATE[name])), good.jwk()]})
    assert [k.kid for k in keyset.keys] == [good.kid], "only the sound key is usable"
    (skipped,) = keyset.skipped
    assert skipped[0] == "bad"
    assert "small order" in skipped[1] or "not a canonical" in skipped[1]
    with pytest.raises(JwksError, match="no usable key"):
        jwks.parse_keyset({"keys": [okp(bytes.fromhex(ED25519_DEGENERATE[name]))]})


@pytest.mark.parametrize(
    "x",
    [(1).to_bytes(57, "little"), (2**448 - 2**224 - 2).to_bytes(57, "little")],
    ids=["identity", "order-2"],
)
def test_degenerate_ed448_keys_are_skipped(x: bytes) -> None:
    with pytest.raises(JwksError, match="Ed448 public key of small order"):
        jwks.parse_keyset({"keys": [okp(x, crv="Ed448")]})


def test_a_forged_token_under_a_published_identity_key_is_refused() -> None:
    cfg = cfgmod.from_mapping(
        {"providers": {"p": {"issuer": ISS, "audiences": ["api"], "jwks": {"keys": []}}}}
    )
    good = Signer("EdDSA")
    keyset = jwks.parse_keyset(
        {"keys": [okp(bytes.fromhex(ED25519_DEGENERATE["identity"]), kid="id"), good.jwk()]}
    )
    header = b64(b'{"alg":"EdDSA","kid":"id"}')
    payload = b64(
        b'{"iss":"%s","aud":"api","sub":"mallory","exp":%d}' % (ISS.encode(), time.time() + 60)
    )
    forged = f"{header}.{payload}.{b64(BASE_POINT + (1).to_bytes(32, 'little'))}"
    req = AuthRequest(headers={"authorization": f"Bearer {forged}"})
    policy = Policy(cfg)
    decision = settled(policy.decide(req, lambda _: keyset, time.time()))
    assert (decision.allowed, decision.reason) == (False, "unknown_key")


def test_ec_point_off_the_curve_is_skipped() -> None:
    good = Signer("ES256")
    bad = dict(good.jwk(), kid="off-curve")
    y = bytearray(urlsafe_b64decode(bad["y"].encode()))
    y[-1] ^= 1
    bad["y"] = b64(bytes(y))
    keyset = jwks.parse_keyset({"keys": [bad, good.jwk()]})
    assert [k.kid for k in keyset.keys] == [good.kid]
    assert keyset.skipped == (("off-curve", "not a point on curve P-256"),)


@pytest.mark.filterwarnings("ignore:Key size")
def test_rsa_minimum_is_configurable_and_2048_by_default() -> None:
    small = dict(RSAKey.generate_key(1024, private=False).as_dict(), kid="small", use="sig")
    mid = Signer("RS256", kid="mid")
    with pytest.raises(JwksError, match="1024 bits is below 2048"):
        jwks.parse_keyset({"keys": [small]})
    assert [k.kid for k in jwks.parse_keyset({"keys": [small]}, min_rsa_bits=1024).keys] == [
        "small"
    ]
    with pytest.raises(JwksError, match="2048 bits is below 3072"):
        jwks.parse_keyset({"keys": [mid.jwk()]}, min_rsa_bits=3072)


def test_an_rsa_key_with_a_huge_public_exponent_is_skipped() -> None:
    """Valid RSA, but each verification would cost tens of milliseconds."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    n = rsa.generate_private_key(65537, 2048).public_key().public_numbers().n
    huge = {"kty": "RSA", "kid": "huge-e", "n": b64(n.to_bytes(256, "big")),
            "e": b64(((1 << 1023) + 1).to_bytes(128, "big"))}  # fmt: skip
    good = Signer("RS256", kid="good")
    keyset = jwks.parse_keyset({"keys": [huge, good.jwk()]})
    assert [k.kid for k in keyset.keys] == ["good"]
    assert keyset.skipped == (("huge-e", "RSA public exponent above 2**32"),)


def test_min_rsa_bits_is_applied_by_the_key_source() -> None:
    mid = Signer("RS256", kid="mid")
    cfg = {
        "server": {"listen": "127.0.0.1:0", "admin_listen": None},
        "providers": {
            "p": {
                "issuer": ISS,
                "audiences": ["api"],
                "jwks": {"keys": [mid.jwk()]},
                "min_rsa_bits": 3072,
            }
        },
    }
    with ServerThread(cfg) as server:
        src = server.server.sources["p"]
        assert server.call(src.wait_ready(1.0)) is False
        assert src.usable() is None and "below 3072" in (src.last_error or "")
        assert not server.server.ready, "a provider whose keys are all refused is not ready"


def test_skipped_keys_are_counted_and_never_usable() -> None:
    good = Signer("RS256", kid="good")
    weak = okp(bytes.fromhex(ED25519_DEGENERATE["identity"]), kid="weak")
    cfg = {
        "server": {"listen": "127.0.0.1:0", "admin_listen": None},
        "providers": {
            "counted": {"issuer": ISS, "audiences": ["api"],
                        "jwks": {"keys": [good.jwk(), weak]}},
        },
    }  # fmt: skip
    with ServerThread(cfg) as server:
        server.wait_ready()
        assert server.server.sources["counted"].usable().kids == {"good"}  # type: ignore[union-attr]
        labels = {"provider": "counted"}
        assert metrics.REGISTRY.get_sample_value("extauthz_jwks_keys_skipped", labels) == 1
        assert metrics.REGISTRY.get_sample_value("extauthz_jwks_keys", labels) == 1


@pytest.mark.parametrize(
    ("size", "alg", "usable_for"),
    [
        (16, None, None),  # shorter than any HMAC hash: refused at load
        (31, "HS256", None),
        (32, "HS384", None),  # its own alg needs 48 bytes
        (48, "HS512", None),
        (32, None, {"HS256"}),  # no alg: usable only where it is long enough
        (48, None, {"HS256", "HS384"}),
        (64, None, {"HS256", "HS384", "HS512"}),
    ],
)
def test_hmac_keys_shorter_than_their_hash_are_refused(
    size: int, alg: str | None, usable_for: set[str] | None
) -> None:
    secret = OctKey.import_key(b"k" * size).as_dict()
    jwk = {**secret, "kid": "s", **({"alg": alg} if alg else {})}
    if usable_for is None:
        with pytest.raises(JwksError, match="shorter than its hash"):
            jwks.parse_keyset({"keys": [jwk]})
        return
    (key,) = jwks.parse_keyset({"keys": [jwk]}).keys
    assert {a for a in ("HS256", "HS384", "HS512") if key.accepts(a)} == usable_for


def test_a_token_without_kid_is_tried_against_a_bounded_number_of_keys() -> None:
    signers = [Signer("RS256", kid=f"k{i}") for i in range(jwks.MAX_KIDLESS_CANDIDATES + 2)]
    keyset = jwks.parse_keyset({"keys": [s.jwk() for s in signers]})
    cfg = cfgmod.from_mapping(
        {"providers": {"p": {"issuer": ISS, "audiences": ["api"], "jwks": {"keys": []}}}}
    )
    policy = Policy(cfg)

    def decide(signer: Signer) -> tuple[bool, str]:
        token = signer.sign(claims(ISS, "api"), kid=None)
        d = policy.decide(AuthRequest(headers={"authorization": f"Bearer {token}"}),
                          lambda _: keyset, time.time())  # fmt: skip
        assert isinstance(d, Decision)  # every kid is in the key set: never NeedKeys
        return d.allowed, d.reason

    assert decide(signers[jwks.MAX_KIDLESS_CANDIDATES - 1]) == (True, "ok")
    assert decide(signers[jwks.MAX_KIDLESS_CANDIDATES]) == (False, "bad_signature")
