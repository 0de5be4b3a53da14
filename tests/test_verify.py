"""Token verification against RFC 8725: every rule has a token that must fail.

Time is always passed explicitly (``NOW``); nothing here sleeps or reads the clock.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from joserfc.jws import JWSRegistry

from extauthz import errors
from extauthz.config import DEFAULT_ALGORITHMS, Provider, from_mapping
from extauthz.core import verify
from extauthz.keys import jwks
from extauthz.keys.jwks import KeySet
from tests.support.answers import wire
from tests.support.signing import Signer, b64, claims

NOW = 1_700_000_000
ISS = "https://issuer.example"
AUD = "api"
ALL_ALGS = (*DEFAULT_ALGORITHMS, "Ed25519")


# --------------------------------------------------------------------------- helpers


def provider(**overrides: Any) -> Provider:
    base: dict[str, Any] = {
        "issuer": ISS,
        "audiences": (AUD,),
        "jwks": {"keys": []},
        "algorithms": ALL_ALGS,
    }
    base.update(overrides)
    return Provider(**base)


PROVIDER = provider()


def good_claims(**extra: Any) -> dict[str, Any]:
    return claims(ISS, AUD, now=NOW, ttl=300, **extra)


def check(
    token: str, keys: KeySet, prov: Provider = PROVIDER, now: float = NOW, name: str = "main"
) -> verify.Verified:
    return verify.verify_token(verify.parse_token(token), name, prov, keys, now)


def denied(
    token: str,
    keys: KeySet,
    exc: type[errors.InvalidToken] | tuple[type[errors.InvalidToken], ...],
    prov: Provider = PROVIDER,
    now: float = NOW,
) -> errors.InvalidToken:
    with pytest.raises(exc) as info:
        check(token, keys, prov, now)
    err = info.value
    assert isinstance(err, errors.InvalidToken)
    assert err.reason == type(err).reason  # a bounded metrics label, not free text
    assert wire(err).http_status == 401 and wire(err).oauth_error == "invalid_token"
    return err


def sign_manually(
    signer: Signer, header: dict[str, Any] | bytes, payload: dict[str, Any] | bytes
) -> str:
    """Sign bytes joserfc would refuse to serialize (crit, zip, duplicate members...)."""
    alg = json.loads(header)["alg"] if isinstance(header, bytes) else header["alg"]
    signing_input = f"{b64(header)}.{b64(payload)}"
    sig = JWSRegistry.algorithms[alg].sign(signing_input.encode(), signer.key)
    return f"{signing_input}.{b64(sig)}"


def split(token: str) -> tuple[str, str, str]:
    h, p, s = token.split(".")
    return h, p, s


def decode(segment: str) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    )
    return decoded


@pytest.fixture(scope="module")
def signers() -> dict[str, Signer]:
    return {alg: Signer(alg, kid=f"k-{alg}") for alg in ALL_ALGS}


@pytest.fixture(scope="module")
def keys(signers: dict[str, Signer]) -> KeySet:
    return jwks.parse_keyset({"keys": [s.jwk() for s in signers.values()]})


@pytest.fixture(scope="module")
def rs(signers: dict[str, Signer]) -> Signer:
    return signers["RS256"]


# --------------------------------------------------------------------------- valid


@pytest.mark.parametrize("alg", ALL_ALGS)
def test_valid_tokens_verify(signers: dict[str, Signer], keys: KeySet, alg: str) -> None:
    s = signers[alg]
    result = check(s.sign(good_claims(scope="read")), keys)
    assert isinstance(result, verify.Verified)
    assert result.provider == "main"
    assert result.kid == s.kid
    assert result.thumbprint == keys.by_kid[s.kid][0].thumbprint
    assert result.claims["sub"] == "user-1"
    assert result.claims["scope"] == "read"
    assert result.claims["exp"] == NOW + 300


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_token_without_kid_tries_matching_keys(
    signers: dict[str, Signer], keys: KeySet, alg: str
) -> None:
    result = check(signers[alg].sign(good_claims(), kid=None), keys)
    assert result.kid == signers[alg].kid


def test_via_from_mapping_provider(rs: Signer) -> None:
    cfg = from_mapping(
        {"providers": {"zuplo": {"issuer": ISS, "audiences": [AUD], "jwks": {"keys": []}}}}
    )
    ks = jwks.parse_keyset({"keys": [rs.jwk()]})
    result = check(rs.sign(good_claims()), ks, cfg.providers["zuplo"], name="zuplo")
    assert result.provider == "zuplo"


# --------------------------------------------------------------------------- algorithms


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
@pytest.mark.parametrize("signature", ["", "c2ln"])
def test_alg_none_rejected(keys: KeySet, alg: str, signature: str) -> None:
    token = f"{b64({'alg': alg, 'typ': 'JWT'})}.{b64(good_claims())}.{signature}"
    with pytest.raises(errors.AlgorithmNotAllowed):
        verify.parse_token(token)
    denied(token, keys, errors.AlgorithmNotAllowed)
    denied(token, keys, errors.AlgorithmNotAllowed, prov=provider(algorithms=("HS256",)))


@pytest.mark.parametrize(
    ("token_alg", "allowed"),
    [
        ("RS256", ("ES256",)),
        ("RS256", ("RS384", "RS512")),
        ("PS256", ("RS256",)),
        ("ES384", ("ES256",)),
        ("EdDSA", ("Ed25519",)),  # distinct names: each only when listed
        ("Ed25519", ("EdDSA",)),
        ("Ed25519", DEFAULT_ALGORITHMS),  # not in the default list
        ("HS256", DEFAULT_ALGORITHMS),
    ],
)
def test_alg_not_in_allow_list(
    signers: dict[str, Signer], keys: KeySet, token_alg: str, allowed: tuple[str, ...]
) -> None:
    s = signers.get(token_alg) or Signer(token_alg)
    denied(
        s.sign(good_claims()), keys, errors.AlgorithmNotAllowed, prov=provider(algorithms=allowed)
    )


@pytest.mark.parametrize("alg", ["ES256K", "Ed448", "RS1", "HS1", "A256GCM", "dir"])
def test_unknown_or_unlisted_alg_names(rs: Signer, keys: KeySet, alg: str) -> None:
    token = sign_manually(rs, {"alg": "RS256", "kid": rs.kid}, good_claims())
    _, p, s = split(token)
    forged = f"{b64({'alg': alg, 'kid': rs.kid})}.{p}.{s}"
    err = denied(forged, keys, (errors.AlgorithmNotAllowed, errors.MalformedToken))
    assert not isinstance(err, errors.BadSignature)


def _hs(alg: str, secret: bytes, header: dict[str, Any], payload: dict[str, Any]) -> str:
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    signing_input = f"{b64(header)}.{b64(payload)}"
    mac = hmac.new(secret, signing_input.encode(), digest).digest()
    return f"{signing_input}.{b64(mac)}"


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
@pytest.mark.parametrize("with_kid", [True, False])
@pytest.mark.parametrize("jwk_alg", [True, False])
@pytest.mark.parametrize("secret_form", ["pem", "pem-no-newline", "jwk-json", "der"])
def test_algorithm_confusion_hmac_with_rsa_public_key(
    alg: str, with_kid: bool, jwk_alg: bool, secret_form: str
) -> None:
    rsa = Signer("RS256", kid="rsa")
    published = rsa.jwk() if jwk_alg else rsa.jwk(alg=None)
    pem = rsa.key.as_pem(private=False)
    secret = {
        "pem": pem,
        "pem-no-newline": pem.strip(),
        "jwk-json": json.dumps(published).encode(),
        "der": rsa.key.as_der(private=False),
    }[secret_form]
    header = {"alg": alg, "typ": "JWT", **({"kid": "rsa"} if with_kid else {})}
    token = _hs(alg, secret, header, good_claims())
    ks = jwks.parse_keyset({"keys": [published]})
    # Even a provider that (unwisely) allows HMAC next to RSA never verifies this.
    for prov in (provider(), provider(algorithms=("RS256", alg))):
        denied(token, ks, (errors.AlgorithmNotAllowed, errors.BadSignature), prov=prov)


@pytest.mark.parametrize(
    ("signed", "relabel"),
    [("RS256", "PS256"), ("PS256", "RS256"), ("RS384", "PS384"), ("PS512", "RS512")],
)
@pytest.mark.parametrize("jwk_alg", [True, False])
def test_rsa_pss_relabel(signed: str, relabel: str, jwk_alg: bool) -> None:
    s = Signer(signed, kid="rsa")
    ks = jwks.parse_keyset({"keys": [s.jwk() if jwk_alg else s.jwk(alg=None)]})
    _, p, sig = split(s.sign(good_claims()))
    forged = f"{b64({'alg': relabel, 'typ': 'JWT', 'kid': 'rsa'})}.{p}.{sig}"
    expected = errors.AlgorithmNotAllowed if jwk_alg else errors.BadSignature
    denied(forged, ks, expected)


@pytest.mark.parametrize("jwk_alg", ["ES384", None])
def test_es256_token_but_kid_is_p384(jwk_alg: str | None) -> None:
    p384 = Signer("ES384", kid="ec")
    es256 = Signer("ES256", kid="ec")
    ks = jwks.parse_keyset({"keys": [p384.jwk(alg=jwk_alg)]})
    denied(es256.sign(good_claims()), ks, errors.AlgorithmNotAllowed)
    # and the ES384 key's own tokens still verify
    assert check(p384.sign(good_claims()), ks).kid == "ec"


def test_jwk_alg_must_equal_token_alg() -> None:
    s = Signer("RS256", kid="rsa")
    ks = jwks.parse_keyset({"keys": [s.jwk(alg="RS384")]})
    denied(s.sign(good_claims()), ks, errors.AlgorithmNotAllowed)
    denied(s.sign(good_claims(), kid=None), ks, errors.AlgorithmNotAllowed)
    assert check(s.sign(good_claims(), alg="RS384"), ks).kid == "rsa"


def test_ed25519_and_eddsa_keys_are_distinct(signers: dict[str, Signer], keys: KeySet) -> None:
    # The EdDSA-labelled JWK will not verify an Ed25519-labelled token, and vice versa.
    ed = signers["EdDSA"]
    denied(ed.sign(good_claims(), alg="Ed25519"), keys, errors.AlgorithmNotAllowed)
    ed2 = signers["Ed25519"]
    denied(ed2.sign(good_claims(), alg="EdDSA"), keys, errors.AlgorithmNotAllowed)


# --------------------------------------------------------------------------- issuer / audience


@pytest.mark.parametrize(
    "iss",
    [
        "https://evil.example",
        ISS + "/",
        ISS.upper(),
        " " + ISS,
        "",
        None,
        [ISS],
        {"iss": ISS},
        1,
    ],
)
def test_wrong_issuer(rs: Signer, keys: KeySet, iss: Any) -> None:
    c = good_claims()
    if iss is None:
        del c["iss"]
    else:
        c["iss"] = iss
    denied(rs.sign(c), keys, errors.UnknownIssuer)


def test_keys_bound_to_issuer(rs: Signer) -> None:
    """A token whose iss names us but is signed by another provider's key never verifies."""
    other = Signer("RS256", kid="other")
    ours = jwks.parse_keyset({"keys": [rs.jwk()]})
    denied(other.sign(good_claims()), ours, errors.UnknownKey)
    denied(other.sign(good_claims(), kid=rs.kid), ours, errors.BadSignature)
    denied(other.sign(good_claims(), kid=None), ours, errors.BadSignature)


@pytest.mark.parametrize(
    ("aud", "audiences", "ok"),
    [
        (AUD, (AUD,), True),
        ([AUD], (AUD,), True),
        (["other", AUD], (AUD,), True),
        (["x", "y"], ("y", "z"), True),
        ("other", (AUD, "more"), False),
        (["other", "x"], (AUD,), False),
        ([], (AUD,), False),
        ("", (AUD,), False),
        (AUD.upper(), (AUD,), False),
        ([[AUD]], (AUD,), False),
        ({AUD: True}, (AUD,), False),
        (1, (AUD,), False),
        (None, (AUD,), False),  # missing aud
        # `audiences: []` disables the check explicitly.
        (None, (), True),
        ("anything", (), True),
        (["a", "b"], (), True),
    ],
)
def test_audience_any_of(
    rs: Signer, keys: KeySet, aud: Any, audiences: tuple[str, ...], ok: bool
) -> None:
    c = claims(ISS, aud, now=NOW)  # aud=None drops the claim
    token = rs.sign(c)
    prov = provider(audiences=audiences)
    if ok:
        assert check(token, keys, prov).kid == rs.kid
    else:
        denied(token, keys, errors.WrongAudience, prov=prov)


# --------------------------------------------------------------------------- time


@pytest.mark.parametrize(
    ("changes", "skew", "outcome"),
    [
        ({"exp": None}, 60, errors.InvalidClaims),  # exp always required
        ({"exp": NOW - 61}, 60, errors.Expired),
        ({"exp": NOW - 60}, 60, errors.Expired),  # boundary: now >= exp + skew
        ({"exp": NOW - 59}, 60, None),
        ({"exp": NOW - 30}, 60, None),  # expired 30 s ago, 60 s skew: ok
        ({"exp": NOW - 1}, 0, errors.Expired),
        ({"exp": NOW}, 0, errors.Expired),
        ({"exp": NOW + 1}, 0, None),
        ({"exp": NOW - 3600, "iat": NOW - 7200}, 60, errors.Expired),
        ({"exp": float(NOW + 10.5)}, 0, None),
        ({"nbf": NOW + 61}, 60, errors.NotYetValid),
        ({"nbf": NOW + 60}, 60, None),
        ({"nbf": NOW + 30}, 60, None),
        ({"nbf": NOW + 1}, 0, errors.NotYetValid),
        ({"nbf": NOW - 100}, 0, None),
        ({"iat": NOW + 61}, 60, errors.NotYetValid),
        ({"iat": NOW + 60}, 60, None),
        ({"iat": NOW + 1}, 0, errors.NotYetValid),
        ({"iat": None}, 60, None),
        # NumericDate must be a JSON number.
        ({"exp": str(NOW + 300)}, 60, errors.InvalidClaims),
        ({"exp": True}, 60, errors.InvalidClaims),
        ({"exp": False}, 60, errors.InvalidClaims),
        ({"exp": [NOW + 300]}, 60, errors.InvalidClaims),
        ({"exp": {"v": NOW + 300}}, 60, errors.InvalidClaims),
        ({"nbf": "0"}, 60, errors.InvalidClaims),
        ({"nbf": True}, 60, errors.InvalidClaims),
        ({"iat": "now"}, 60, errors.InvalidClaims),
        ({"iat": False}, 60, errors.InvalidClaims),
    ],
)
def test_time_claims(
    rs: Signer,
    keys: KeySet,
    changes: dict[str, Any],
    skew: float,
    outcome: type[errors.InvalidToken] | None,
) -> None:
    c = good_claims()
    for k, v in changes.items():
        if v is None:
            c.pop(k, None)
        else:
            c[k] = v
    token = rs.sign(c)
    prov = provider(clock_skew=skew)
    if outcome is None:
        assert check(token, keys, prov).kid == rs.kid
    else:
        denied(token, keys, outcome, prov=prov)


@pytest.mark.parametrize(
    "exp_json",
    [b"1" + b"0" * 400, b"-1" + b"0" * 400, b"1e400", b"-1e400"],
)
def test_numeric_date_out_of_float_range(rs: Signer, keys: KeySet, exp_json: bytes) -> None:
    payload = b'{"iss": "%s", "aud": "api", "exp": %s}' % (ISS.encode(), exp_json)
    token = rs.sign_raw({"alg": "RS256", "kid": rs.kid}, payload)
    denied(token, keys, errors.InvalidClaims)


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_numeric_date_non_standard_constants(rs: Signer, keys: KeySet, literal: bytes) -> None:
    payload = b'{"iss": "%s", "aud": "api", "exp": %s}' % (ISS.encode(), literal)
    token = rs.sign_raw({"alg": "RS256", "kid": rs.kid}, payload)
    denied(token, keys, errors.MalformedToken)


def test_check_claims_rerun_later_expires(rs: Signer, keys: KeySet) -> None:
    """check_claims against a later `now` rejects the same claims once they expire."""
    result = check(rs.sign(good_claims()), keys)
    verify.check_claims(result.claims, PROVIDER, NOW + 300)
    with pytest.raises(errors.Expired):
        verify.check_claims(result.claims, PROVIDER, NOW + 300 + 60)


@pytest.mark.parametrize(
    ("lifetime", "iat", "exp", "outcome"),
    [
        (3600, NOW, NOW + 3600, None),
        (3600, NOW, NOW + 3601, errors.InvalidClaims),
        (3600, NOW - 10, NOW + 86400, errors.InvalidClaims),
        (3600, None, NOW + 60, errors.InvalidClaims),  # iat required to bound the lifetime
        (None, NOW, NOW + 10 * 365 * 86400, None),
    ],
)
def test_max_lifetime(
    rs: Signer,
    keys: KeySet,
    lifetime: float | None,
    iat: int | None,
    exp: int,
    outcome: type[errors.InvalidToken] | None,
) -> None:
    c = good_claims(exp=exp, iat=iat)
    token = rs.sign(c)
    prov = provider(max_lifetime=lifetime)
    if outcome is None:
        check(token, keys, prov)
    else:
        denied(token, keys, outcome, prov=prov)


def test_max_lifetime_from_config(rs: Signer, keys: KeySet) -> None:
    cfg = from_mapping(
        {
            "providers": {
                "p": {"issuer": ISS, "audiences": [AUD], "jwks": {"keys": []}, "max_lifetime": "1h"}
            }
        }
    )
    prov = cfg.providers["p"]
    check(rs.sign(good_claims(exp=NOW + 3600)), keys, prov)
    denied(rs.sign(good_claims(exp=NOW + 3601)), keys, errors.InvalidClaims, prov=prov)


@pytest.mark.parametrize(
    ("required", "extra", "ok"),
    [
        (("sub",), {}, True),
        (("tenant",), {}, False),
        (("tenant",), {"tenant": "acme"}, True),
        (("tenant", "scope"), {"tenant": "acme"}, False),
        (("tenant", "scope"), {"tenant": "acme", "scope": ""}, True),
    ],
)
def test_required_claims(
    rs: Signer, keys: KeySet, required: tuple[str, ...], extra: dict[str, Any], ok: bool
) -> None:
    token = rs.sign(good_claims(**extra))
    prov = provider(required_claims=required)
    if ok:
        check(token, keys, prov)
    else:
        denied(token, keys, errors.InvalidClaims, prov=prov)


# --------------------------------------------------------------------------- headers


@pytest.mark.parametrize(
    "extra",
    [
        {"crit": ["exp"], "exp": NOW},
        {"crit": ["http://example.com/unknown"]},
        {"crit": []},
        {"b64": False, "crit": ["b64"]},
        {"b64": True},
        {"zip": "DEF"},
        {"enc": "A256GCM"},
    ],
)
def test_unsupported_headers(rs: Signer, keys: KeySet, extra: dict[str, Any]) -> None:
    token = sign_manually(rs, {"alg": "RS256", "kid": rs.kid, **extra}, good_claims())
    with pytest.raises(errors.UnsupportedHeader):
        verify.parse_token(token)
    denied(token, keys, errors.UnsupportedHeader)


def test_b64_false_without_crit_is_rejected(rs: Signer, keys: KeySet) -> None:
    # RFC 7797 requires "b64" to be listed in "crit"; joserfc already refuses the
    # unencoded payload while parsing, so this surfaces as malformed rather than
    # unsupported. Either way it never verifies.
    token = sign_manually(rs, {"alg": "RS256", "kid": rs.kid, "b64": False}, good_claims())
    denied(token, keys, (errors.UnsupportedHeader, errors.MalformedToken))


@pytest.mark.parametrize("member", ["jwk", "jku", "x5u", "x5c", "all"])
@pytest.mark.parametrize("kid_choice", ["attacker", "victim", None])
def test_embedded_key_headers_are_never_followed(
    rs: Signer, keys: KeySet, member: str, kid_choice: str | None
) -> None:
    attacker = Signer("RS256", kid="attacker")
    values: dict[str, Any] = {
        "jwk": attacker.jwk(),
        "jku": "https://attacker.example/jwks.json",
        "x5u": "https://attacker.example/cert.pem",
        "x5c": [base64.b64encode(attacker.key.as_der(private=False)).decode()],
    }
    extra = values if member == "all" else {member: values[member]}
    kid = {"attacker": "attacker", "victim": rs.kid, None: None}[kid_choice]
    token = attacker.sign(good_claims(), header=extra, kid=kid)
    assert member == "all" or member in decode(split(token)[0])
    expected = errors.UnknownKey if kid_choice == "attacker" else errors.BadSignature
    denied(token, keys, expected)


def test_unknown_kid(rs: Signer, keys: KeySet) -> None:
    denied(rs.sign(good_claims(), kid="no-such-kid"), keys, errors.UnknownKey)
    denied(rs.sign(good_claims(), kid=""), keys, errors.UnknownKey)


def test_no_keys_at_all_is_unknown_key(rs: Signer) -> None:
    denied(rs.sign(good_claims(), kid=None), jwks.EMPTY, errors.UnknownKey)
    denied(rs.sign(good_claims()), jwks.EMPTY, errors.UnknownKey)


@pytest.mark.parametrize("kid", [["x"], 7, {"$ne": None}, None])
def test_non_string_kid_is_malformed(rs: Signer, keys: KeySet, kid: object) -> None:
    # RFC 7515 §4.1.4: kid is a string. Anything else is refused, not guessed around.
    token = sign_manually(rs, {"alg": "RS256", "kid": kid}, good_claims())
    denied(token, keys, errors.MalformedToken)


# --------------------------------------------------------------------------- shape / size


def test_token_size_cap(rs: Signer, keys: KeySet) -> None:
    def token_with_pad(n: int) -> str:
        return rs.sign(good_claims(pad="x" * n))

    n = 5000
    while len(token_with_pad(n + 1)) <= verify.MAX_TOKEN_BYTES:
        n += 1
    biggest = token_with_pad(n)
    assert verify.MAX_TOKEN_BYTES - 3 <= len(biggest) <= verify.MAX_TOKEN_BYTES
    assert check(biggest, keys).kid == rs.kid
    too_big = token_with_pad(n + 1)
    assert len(too_big) > verify.MAX_TOKEN_BYTES
    denied(too_big, keys, errors.TokenTooLarge)
    denied("a" * 100_000, keys, errors.TokenTooLarge)


def test_rsa_4096_token_verifies() -> None:
    s = Signer("RS512", kid="big")
    from joserfc.jwk import RSAKey

    s.key = RSAKey.generate_key(4096)
    assert check(s.sign(good_claims()), jwks.parse_keyset({"keys": [s.jwk()]})).kid == "big"


@pytest.mark.parametrize(
    "token",
    [
        "",
        ".",
        "..",
        "...",
        "abc",
        "abc.def",
        "a.b.c.d",
        "a.b.c.d.e.f",
        "eyJhbGciOiJSUzI1NiJ9",
        "eyJhbGciOiJSUzI1NiJ9.",
        "!!!.@@@.###",
        "a b.c d.e f",
        " eyJhbGciOiJSUzI1NiJ9.e30.c2ln",
        "eyJhbGciOiJSUzI1NiJ9.e30.c2ln\n",
        "héllo.wörld.sig",
        "eyJhbGciOiJSUzI1NiJ9.e30.c2ln\u200b",
    ],
)
def test_garbage_is_malformed(keys: KeySet, token: str) -> None:
    denied(token, keys, errors.MalformedToken)


def test_jwe_shaped_token_is_malformed(keys: KeySet) -> None:
    jwe = ".".join(
        [
            b64({"alg": "RSA-OAEP", "enc": "A256GCM"}),
            b64(b"k" * 32),
            b64(b"iv"),
            b64(b"ct"),
            b64(b"t"),
        ]
    )
    err = denied(jwe, keys, errors.MalformedToken)
    assert "encrypted" in err.description


@pytest.mark.parametrize(
    "header",
    [
        b"[]",
        b'"RS256"',
        b"null",
        b"not json",
        b'{"alg": 256}',
        b'{"alg": null}',
        b'{"alg": ["RS256"]}',
        b'{"typ": "JWT"}',
        b"\xff\xfe",
    ],
)
def test_bad_header_is_malformed(keys: KeySet, header: bytes) -> None:
    denied(f"{b64(header)}.{b64(good_claims())}.c2ln", keys, errors.MalformedToken)


@pytest.mark.parametrize("signature", ["", "AAAA", b64(b"\x00" * 256), "c2ln"])
def test_empty_or_wrong_signature(rs: Signer, keys: KeySet, signature: str) -> None:
    h, p, _ = split(rs.sign(good_claims()))
    denied(f"{h}.{p}.{signature}", keys, (errors.MalformedToken, errors.BadSignature))


def test_signature_not_base64url(rs: Signer, keys: KeySet) -> None:
    h, p, _ = split(rs.sign(good_claims()))
    denied(f"{h}.{p}.!!!!", keys, (errors.MalformedToken, errors.BadSignature))


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"not json", "not JSON"),
        (b"", "not JSON"),
        (b"\xff\xfe\x00", "not JSON"),
        (b"[1, 2, 3]", "not a JSON object"),
        (b'"a string"', "not a JSON object"),
        (b"42", "not a JSON object"),
        (b"null", "not a JSON object"),
        (b'{"iss": "x", "exp": 1', "not JSON"),
        # Duplicate members: which `iss` or `exp` wins must never be a parser's choice.
        (
            b'{"iss": "https://evil.example", "iss": "https://issuer.example", "exp": 2000000000}',
            "not JSON",
        ),
        (b'{"iss": "https://issuer.example", "exp": 1, "exp": 2000000000}', "not JSON"),
        (
            b'{"iss": "https://issuer.example", "x": {"a": 1, "a": 2}, "exp": 2000000000}',
            "not JSON",
        ),
    ],
)
def test_payload_must_be_a_json_object(rs: Signer, keys: KeySet, payload: bytes, why: str) -> None:
    token = rs.sign_raw({"alg": "RS256", "kid": rs.kid}, payload)
    err = denied(token, keys, errors.MalformedToken)
    assert why in err.description


@pytest.mark.parametrize(
    "tamper",
    [
        {"sub": "admin"},
        {"aud": ["api", "admin-api"]},
        {"exp": NOW + 86400},
        {"scope": "admin"},
    ],
)
def test_tampered_payload(rs: Signer, keys: KeySet, tamper: dict[str, Any]) -> None:
    h, p, s = split(rs.sign(good_claims()))
    forged = f"{h}.{b64({**decode(p), **tamper})}.{s}"
    denied(forged, keys, errors.BadSignature)


def test_tampered_header(rs: Signer, keys: KeySet) -> None:
    h, p, s = split(rs.sign(good_claims()))
    forged = f"{b64({**decode(h), 'typ': 'at+jwt'})}.{p}.{s}"
    denied(forged, keys, errors.BadSignature)


def test_signature_from_another_token(rs: Signer, keys: KeySet) -> None:
    h1, p1, _ = split(rs.sign(good_claims(sub="alice")))
    _, _, s2 = split(rs.sign(good_claims(sub="bob")))
    denied(f"{h1}.{p1}.{s2}", keys, errors.BadSignature)


def test_errors_never_echo_the_token(rs: Signer, keys: KeySet) -> None:
    token = rs.sign(good_claims(exp=NOW - 3600, sub="secret-subject"))
    err = denied(token, keys, errors.Expired)
    assert "secret-subject" not in str(err) and token not in str(err)


# --------------------------------------------------------------------------- property


_KEYSET_SIGNERS = {
    "RS256": Signer("RS256", kid="p-rs"),
    "ES256": Signer("ES256", kid="p-es"),
    "EdDSA": Signer("EdDSA", kid="p-ed"),
    "HS256": Signer("HS256", kid="p-hs"),
}
_PROP_KEYS = jwks.parse_keyset({"keys": [s.jwk() for s in _KEYSET_SIGNERS.values()]})
_PROP_PROVIDER = provider(algorithms=(*ALL_ALGS, "HS256", "HS384", "HS512"))

_json_scalar = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**500), max_value=10**500)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)


def _json_containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    # A named function, not a lambda: Hypothesis reads a multi-line lambda's source
    # wrongly and warns that it "doesn't use its argument".
    return st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)


_json = st.recursive(_json_scalar, _json_containers, max_leaves=10)
_plausible_date = st.integers(min_value=NOW - 10_000, max_value=NOW + 10_000)
_numeric_date = (
    _plausible_date
    | _plausible_date
    | st.integers()
    | st.floats()
    | st.booleans()
    | st.text(max_size=12)
    | st.none()
    | st.just(10**400)
)
_header = st.fixed_dictionaries(
    {
        "alg": st.one_of(
            st.sampled_from(["RS256", "ES256", "EdDSA", "HS256"]),  # mostly reach the claims
            st.sampled_from(["RS256", "ES256", "EdDSA", "HS256"]),
            st.sampled_from([*ALL_ALGS, "none", "None", "ES256K", "Ed448", "RSA-OAEP", ""]),
            st.sampled_from([*ALL_ALGS, "none"]),
            _json,
        ),
    },
    optional={
        "kid": st.sampled_from(["p-rs", "p-es", "p-ed", "p-hs", "nope", ""]) | _json,
        "typ": _json,
        "jwk": _json,
        "jku": _json,
        "x5c": _json,
    },
)
_claims = st.fixed_dictionaries(
    {
        "iss": st.one_of(st.just(ISS), st.just(ISS), st.sampled_from([ISS + "/", ""]), _json),
        "exp": st.integers(min_value=NOW + 100, max_value=NOW + 5_000) | _numeric_date,
        "aud": st.sampled_from([AUD, [AUD], ["x", AUD]]) | st.sampled_from([[], "x"]) | _json,
    },
    optional={
        "nbf": _numeric_date,
        "iat": _numeric_date,
        "sub": _json,
    },
)


def _encode(value: Any) -> bytes:
    try:
        return json.dumps(value, allow_nan=True).encode()
    except ValueError:
        return b"{}"


_b64_segment = st.binary(max_size=300).map(b64) | st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=+/", max_size=80
)
_structured = st.builds(
    lambda h, c, sig: f"{b64(_encode(h))}.{b64(_encode(c))}.{sig}",
    _header,
    _claims,
    st.binary(max_size=300).map(b64),
)
_segments = st.lists(_b64_segment, min_size=1, max_size=6).map(".".join)
_tokens = st.one_of(_structured, _structured, _structured, st.text(max_size=200), _segments)


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(token=_tokens, now=st.sampled_from([NOW, NOW - 10_000, NOW + 10_000]))
def test_arbitrary_tokens_only_raise_invalid_token(token: str, now: int) -> None:
    try:
        unverified = verify.parse_token(token)
        result = verify.verify_token(unverified, "main", _PROP_PROVIDER, _PROP_KEYS, now)
    except errors.InvalidToken:
        return
    pytest.fail(f"an arbitrary token verified: {result!r}")
