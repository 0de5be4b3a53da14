"""Sender-constrained tokens (design §11), in process: DPoP proofs (RFC 9449), the
``cnf.jkt`` and ``cnf["x5t#S256"]`` bindings (RFC 8705), replay, the RFC 9449 §7.1
challenges through both front doors' answer tables, ``require_typ`` (RFC 9068) and the
``extauthz_dpop_total`` metric. No sockets: the gRPC servicer is called directly and
the HTTP door is fed bytes through a fake transport. Every clock is injected."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import tracemalloc
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from joserfc.jwk import ECKey, OKPKey, RSAKey
from joserfc.jws import JWSRegistry
from joserfc.util import urlsafe_b64decode

from extauthz import config, metrics
from extauthz.authorizer import Authorizer
from extauthz.config import DEFAULT_TOKEN_SOURCES, DpopSettings, Provider, TokenSource
from extauthz.core import binding, dpop
from extauthz.core.decision import Decision, NeedKeys
from extauthz.core.policy import Policy
from extauthz.core.request import AuthRequest, ClientCert
from extauthz.core.tokens import Found, extract
from extauthz.dev.client import certificate_thumbprint, generate_key, thumbprint
from extauthz.errors import (
    BindingMismatch,
    ConfigError,
    Denied,
    DenyKind,
    InvalidDpopProof,
    InvalidRequest,
    ReplayStoreDown,
)
from extauthz.frontdoor import grpc as grpc_door
from extauthz.frontdoor import http as http_door
from extauthz.keys import jwks
from extauthz.keys.source import InlineFetcher, KeySource
from extauthz.replay import MEMORY_ENTRIES, MemoryReplayStore
from tests.support.answers import wire
from tests.support.certs import CA
from tests.support.signing import Signer, b64, claims

NOW = 1_700_000_000.0  # the clock of every decision in this file
HOST = "api.example.com"
URL = f"https://{HOST}/orders"
ISS_DP = "https://dpop.example"  # dpop: {} — both schemes
ISS_REQ = "https://required.example"  # dpop: required, algorithms [EdDSA, ES256]
ISS_PLAIN = "https://plain.example"  # no dpop settings
ISS_TYP = "https://typed.example"  # require_typ: at+jwt
ALL_ALGS = "ES256 EdDSA RS256 PS256"  # the default dpop.algorithms, in order

ISSUER = Signer("ES256")  # signs every provider's access tokens
CLIENT = generate_key("ES256")  # the client's DPoP key
OTHER = generate_key("ES256")  # someone else's
JKT = thumbprint(CLIENT)
ALGS = JWSRegistry.algorithms

CONFIG: dict[str, Any] = {
    "server": {"realm": "extauthz", "admin_listen": None},
    "providers": {
        "dp": {
            "issuer": ISS_DP,
            "audiences": ["api"],
            "jwks": {"keys": [ISSUER.jwk()]},
            "claims_to_headers": {"x-user-id": "sub"},
            "dpop": {},
        },
        "req": {
            "issuer": ISS_REQ,
            "audiences": ["api"],
            "jwks": {"keys": [ISSUER.jwk()]},
            "dpop": {"required": True, "algorithms": ["EdDSA", "ES256"], "max_age": "30s"},
        },
        "plain": {"issuer": ISS_PLAIN, "audiences": ["api"], "jwks": {"keys": [ISSUER.jwk()]}},
        "typed": {
            "issuer": ISS_TYP,
            "audiences": ["api"],
            "jwks": {"keys": [ISSUER.jwk()]},
            "require_typ": "at+jwt",
        },
    },
    "rules": [
        {"name": "required", "match": {"path_prefix": "/required"}, "providers": ["req"]},
        {"name": "plain", "match": {"path_prefix": "/plain"}, "providers": ["plain"]},
        {"name": "admin", "match": {"path_prefix": "/admin"}, "scopes": ["admin"]},
        {"name": "default", "match": {"path_prefix": "/"}},
    ],
}
CFG = config.from_mapping(CONFIG)
KEYSET = jwks.parse_keyset({"keys": [ISSUER.jwk()]})


def keys(_provider: str) -> jwks.KeySet:
    return KEYSET


# -- building tokens and proofs --------------------------------------------------------
def token(iss: str = ISS_DP, *, typ: str | None = "JWT", cnf: Any = None, **extra: Any) -> str:
    header: dict[str, Any] = {"alg": "ES256", "kid": ISSUER.kid}
    if typ is not None:
        header["typ"] = typ
    body = claims(iss, "api", now=NOW, **extra)
    if cnf is not None:
        body["cnf"] = cnf
    return ISSUER.sign_raw(header, json.dumps(body).encode())


def bound(key: Any = CLIENT, iss: str = ISS_DP, **extra: Any) -> str:
    return token(iss, cnf={"jkt": thumbprint(key)}, **extra)


TOKEN = bound()


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def compact(header: Mapping[str, Any] | bytes, body: Mapping[str, Any] | bytes, key: Any) -> str:
    """A JWS signed by hand (joserfc would refuse some of the headers built here)."""
    head = header if isinstance(header, bytes) else _json(header)
    alg = json.loads(head)["alg"]
    payload = body if isinstance(body, bytes) else _json(body)
    signing_input = f"{b64(head)}.{b64(payload)}"
    signature = ALGS[alg].sign(signing_input.encode(), key)
    return f"{signing_input}.{b64(bytes(signature))}"


def proof_header(key: Any = CLIENT, alg: str | None = None, **over: Any) -> dict[str, Any]:
    kty = key.key_type
    default_alg = {"EC": "ES256", "OKP": "EdDSA", "RSA": "PS256"}[kty]
    header: dict[str, Any] = {
        "typ": "dpop+jwt",
        "alg": alg or default_alg,
        "jwk": dict(key.as_dict(private=False)),
    }
    header.update(over)
    return {k: v for k, v in header.items() if v is not None}


def proof_claims(
    *, tok: str = TOKEN, method: str = "GET", url: str = URL, now: float = NOW, **over: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "jti": uuid.uuid4().hex,
        "htm": method,
        "htu": url,
        "iat": int(now),
        "ath": dpop.access_token_hash(tok),
    }
    body.update(over)
    return {k: v for k, v in body.items() if v is not None}


def proof(
    key: Any = CLIENT,
    *,
    header: Mapping[str, Any] | None = None,
    signer: Any = None,
    **claim_over: Any,
) -> str:
    """A valid proof for GET URL with TOKEN, unless told otherwise."""
    return compact(proof_header(key, **(header or {})), proof_claims(**claim_over), signer or key)


SETTINGS = DpopSettings(max_age=60)
SKEW = 5.0


def verify(
    value: str,
    *,
    tok: str = TOKEN,
    method: str = "GET",
    uri: str = URL,
    algs: tuple[Any, ...] | None = None,
    now: float = NOW,
    jkt: str | None = None,
) -> dpop.Proof:
    settings_ = SETTINGS if algs is None else DpopSettings(max_age=60, algorithms=algs)
    return dpop.verify_proof(
        value, tok, method=method, uri=uri, settings=settings_, clock_skew=SKEW, now=now, jkt=jkt
    )


def refused(value: str, message: str, **kw: Any) -> None:
    with pytest.raises(InvalidDpopProof) as info:
        verify(value, **kw)
    assert info.value.description == message
    assert info.value.reason == "invalid_dpop_proof"


# -- verify_proof ---------------------------------------------------------------------
@pytest.mark.parametrize("alg", ["ES256", "EdDSA", "RS256", "PS256"])
def test_a_valid_proof_passes_for_every_default_algorithm(alg: str) -> None:
    key = generate_key(alg)
    got = verify(proof(key, header={"alg": alg}, tok=TOKEN), jkt=thumbprint(key))
    assert got.jkt == thumbprint(key)
    assert got.iat == NOW


def test_the_proof_names_its_key_jti_and_iat() -> None:
    got = verify(proof(jti="abc"))
    assert (got.jkt, got.jti, got.iat) == (JKT, "abc", NOW)


def test_rfc_examples_ath_and_jwk_thumbprint() -> None:
    # RFC 9449 §7.1: ath of the example access token.
    assert (
        dpop.access_token_hash("Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU")
        == "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"
    )
    # RFC 9449 §6.1: the example key's RFC 7638 thumbprint, as cnf.jkt holds it.
    example: dict[str, str | list[str]] = {
        "kty": "EC",
        "crv": "P-256",
        "x": "l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs",
        "y": "9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA",
    }
    assert thumbprint(ECKey.import_key(example)) == "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
    (parsed,) = jwks.parse_keyset({"keys": [example]}).keys
    assert parsed.thumbprint == "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"


@pytest.mark.parametrize("typ", ["dpop+jwt", "DPoP+JWT", "application/dpop+jwt"])
def test_typ_is_compared_as_a_media_type(typ: str) -> None:
    """RFC 7515 §4.1.9: case-insensitive, the "application/" prefix optional."""
    header = dict(proof_header(), typ=typ)
    assert verify(compact(header, proof_claims(), CLIENT)).jkt == thumbprint(CLIENT)


@pytest.mark.parametrize(
    "typ",
    [None, "JWT", "at+jwt", "dpop", "dpop+jwt ", "text/dpop+jwt", 1, ["dpop+jwt"]],
    ids=repr,
)
def test_typ_must_be_dpop_jwt(typ: Any) -> None:
    header = proof_header()
    if typ is None:
        del header["typ"]
    else:
        header["typ"] = typ
    refused(compact(header, proof_claims(), CLIENT), "DPoP proof typ is not dpop+jwt")


def test_alg_must_be_in_the_providers_list() -> None:
    ed = generate_key("EdDSA")
    value = proof(ed, header={"alg": "EdDSA"})
    verify(value)  # in the default list
    refused(value, "DPoP proof algorithm not allowed", algs=("ES256",))


@pytest.mark.parametrize("alg", ["none", "HS256", "ES384", "RS512", "", 256])
def test_algs_outside_the_list_are_refused(alg: Any) -> None:
    header = proof_header()
    header["alg"] = alg
    refused(_unsigned(header), "DPoP proof algorithm not allowed")


def _unsigned(header: Mapping[str, Any], body: Mapping[str, Any] | None = None) -> str:
    """Header and claims with a signature that verifies nothing."""
    return f"{b64(_json(header))}.{b64(_json(body or proof_claims()))}.{b64(b'x' * 64)}"


def test_hs256_keyed_with_a_symmetric_jwk_is_refused() -> None:
    import hmac as hmac_

    secret = b"s" * 32
    header = {"typ": "dpop+jwt", "alg": "HS256", "jwk": {"kty": "oct", "k": b64(secret)}}
    signing_input = f"{b64(_json(header))}.{b64(_json(proof_claims()))}"
    mac = hmac_.new(secret, signing_input.encode(), hashlib.sha256).digest()
    refused(f"{signing_input}.{b64(mac)}", "DPoP proof algorithm not allowed")
    # Even a list naming HS256 cannot be configured: a proof is signed with a public key.
    with pytest.raises(ConfigError, match="HS256: a DPoP proof is signed with a public key"):
        config.from_mapping(
            {"providers": {"x": dict(CONFIG["providers"]["dp"], dpop={"algorithms": ["HS256"]})}}
        )


@pytest.mark.parametrize(
    ("jwk", "message"),
    [
        (None, "DPoP proof jwk is not a public key"),
        ("a-string", "DPoP proof jwk is not a public key"),
        ([], "DPoP proof jwk is not a public key"),
        (dict(CLIENT.as_dict(private=True)), "DPoP proof jwk is not a public key"),
        ({**CLIENT.as_dict(private=False), "d": "AAAA"}, "DPoP proof jwk is not a public key"),
        ({"kty": "oct", "k": "c2VjcmV0c2VjcmV0c2VjcmV0"}, "DPoP proof jwk is not a public key"),
        ({"kty": "EC", "crv": "P-256"}, "DPoP proof jwk is not a usable public key"),
        (
            {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"},
            "DPoP proof jwk is not a usable public key",
        ),
        (
            {**CLIENT.as_dict(private=False), "use": "enc"},
            "DPoP proof jwk is not a usable public key",
        ),
    ],
    ids=["missing", "string", "list", "private", "with-d", "oct", "no-point", "off-curve", "enc"],
)
def test_jwk_must_be_a_usable_public_key(jwk: Any, message: str) -> None:
    header = proof_header()
    if jwk is None:
        del header["jwk"]
    else:
        header["jwk"] = jwk
    refused(compact(header, proof_claims(), CLIENT), message)


@pytest.mark.parametrize(
    ("key", "alg"),
    [
        (RSAKey.generate_key(2048), "ES256"),  # RSA key, EC algorithm
        (ECKey.generate_key("P-384"), "ES256"),  # right type, wrong curve
        (OKPKey.generate_key("Ed25519"), "ES256"),
        (ECKey.generate_key("P-256"), "EdDSA"),
        (ECKey.generate_key("P-256"), "RS256"),
    ],
    ids=["rsa-es256", "p384-es256", "ed25519-es256", "p256-eddsa", "p256-rs256"],
)
def test_the_key_type_and_curve_must_fit_the_algorithm(key: Any, alg: str) -> None:
    header = proof_header(key)
    header["alg"] = alg
    refused(_unsigned(header), "DPoP proof jwk does not fit its algorithm")


def test_an_rsa_key_below_2048_bits_is_refused_without_a_warning() -> None:
    """Refused before joserfc imports it (which would emit a SecurityWarning: with this
    suite's filterwarnings=error, that would be an exception here)."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    numbers = rsa.generate_private_key(65537, 1024).public_key().public_numbers()
    small = {
        "kty": "RSA",
        "n": b64(numbers.n.to_bytes(128, "big")),
        "e": b64(numbers.e.to_bytes(3, "big")),
    }
    header = {"typ": "dpop+jwt", "alg": "RS256", "jwk": small}
    refused(_unsigned(header), "DPoP proof jwk is not a usable public key")
    for n in (None, 7, "not base64!", "\u00e9"):
        header["jwk"] = {**small, "n": n}
        refused(_unsigned(header), "DPoP proof jwk is not a usable public key")


def test_a_signature_by_another_key_is_refused() -> None:
    refused(proof(CLIENT, signer=OTHER), "DPoP proof signature invalid")


def test_a_changed_signature_byte_is_refused() -> None:
    head, body, sig = proof().split(".")
    raw = bytearray(urlsafe_b64decode(sig.encode()))
    raw[5] ^= 0x01
    refused(f"{head}.{body}.{b64(bytes(raw))}", "DPoP proof signature invalid")


@pytest.mark.parametrize(
    ("jti", "message"),
    [
        (None, "DPoP proof jti missing"),
        ("", "DPoP proof jti missing"),
        (12345, "DPoP proof jti is not a string"),
        (["a"], "DPoP proof jti is not a string"),
        ("x" * (dpop.MAX_JTI + 1), "DPoP proof jti too long"),
    ],
    ids=["missing", "empty", "number", "list", "too-long"],
)
def test_jti(jti: Any, message: str) -> None:
    body = proof_claims()
    if jti is None:
        del body["jti"]
    else:
        body["jti"] = jti
    refused(compact(proof_header(), body, CLIENT), message)


def test_the_longest_jti_is_accepted() -> None:
    assert dpop.MAX_JTI == 256
    assert verify(proof(jti="x" * 256)).jti == "x" * 256


@pytest.mark.parametrize(
    ("htm", "method"),
    [("get", "GET"), ("GET", "get"), ("POST", "GET"), ("GET ", "GET"), ("", "GET"), (1, "GET")],
)
def test_htm_is_compared_exactly(htm: Any, method: str) -> None:
    message = (
        "DPoP proof htm missing"
        if htm == ""
        else "DPoP proof htm is not a string"
        if not isinstance(htm, str)
        else "DPoP proof htm does not match the request"
    )
    refused(proof(htm=htm, method="GET"), message, method=method)


def test_htm_matching_passes() -> None:
    verify(proof(htm="DELETE"), method="DELETE")


H = HOST
HTU_SAME = [
    ("HTTPS://API.Example.COM/orders", f"https://{H}/orders"),  # scheme and host case
    (f"https://{H}/orders", f"HTTPS://{H.upper()}/orders"),
    (f"https://{H}:443/orders", f"https://{H}/orders"),  # default port, both ways
    (f"https://{H}/orders", f"https://{H}:443/orders"),
    (f"http://{H}:80/orders", f"http://{H}/orders"),
    (f"https://{H}/%6Frders", f"https://{H}/orders"),  # %6F is "o", both ways
    (f"https://{H}/orders", f"https://{H}/%6frders"),
    (f"https://{H}/%41", f"https://{H}/A"),
    (f"https://{H}/a%2fb", f"https://{H}/a%2Fb"),  # reserved escapes: only their case
    (f"https://{H}/orders", f"https://{H}/orders?page=2&x=%41"),  # the query is ignored
    (f"https://{H}/orders?page=1", f"https://{H}/orders?page=2"),
    (f"https://{H}/orders#frag", f"https://{H}/orders"),
    (f"https://{H}", f"https://{H}/"),  # an empty path is "/"
    (f"https://{H}.:8443/x", f"https://{H}:8443/x"),  # a trailing root dot
    (f"https://{H}/api/v1/../orders", f"https://{H}/api/orders"),  # dot segments, both ways
    (f"https://{H}/api/orders", f"https://{H}/api/./x/../orders"),
    (f"https://{H}/api/%2E%2E/orders", f"https://{H}/orders"),  # %2E is an unreserved "."
]
HTU_DIFFERENT = [
    (f"http://{H}/orders", f"https://{H}/orders"),  # scheme
    ("https://evil.example/orders", f"https://{H}/orders"),  # host
    (f"https://{H}:8443/orders", f"https://{H}/orders"),  # another port
    (f"http://{H}:443/orders", f"http://{H}/orders"),  # 443 is not http's default
    (f"https://{H}/Orders", f"https://{H}/orders"),  # path case
    (f"https://{H}/orders/", f"https://{H}/orders"),  # trailing slash
    (f"https://{H}/a%2Fb", f"https://{H}/a/b"),  # an escaped "/" is not a "/"
    (f"https://{H}/orders/1", f"https://{H}/orders"),
    (f"https://{H}/a/../orders", f"https://{H}/a/orders"),
]


@pytest.mark.parametrize(("htu", "uri"), HTU_SAME)
def test_htu_matches_after_rfc3986_normalisation(htu: str, uri: str) -> None:
    verify(proof(htu=htu), uri=uri)
    assert dpop.normalise_uri(htu) == dpop.normalise_uri(uri)


@pytest.mark.parametrize(("htu", "uri"), HTU_DIFFERENT)
def test_htu_of_another_uri_is_refused(htu: str, uri: str) -> None:
    refused(proof(htu=htu), "DPoP proof htu does not match the request", uri=uri)


@pytest.mark.parametrize(
    "htu", ["https://[api.example.com/orders", "https://api.example.com:99999/x",
            "https://api.example.com:port/x", "https://ex\uff03ample.com/x"],
    ids=["unclosed-bracket", "port-range", "port-text", "nfkc"],
)  # fmt: skip
def test_an_unparseable_htu_is_a_refusal_not_a_crash(htu: str) -> None:
    refused(proof(htu=htu), "DPoP proof htu is not a URI")


@pytest.mark.parametrize(
    "htu", ["/orders", f"//{H}/orders", f"ftp://{H}/orders", "https:///orders", "urn:x:y"]
)
def test_htu_must_be_an_absolute_http_url(htu: str) -> None:
    refused(proof(htu=htu), "DPoP proof htu is not an http(s) URL")


def test_the_iat_window_edges() -> None:
    """[now - max_age - clock_skew, now + clock_skew], inclusive, with now injected."""
    lo, hi = NOW - SETTINGS.max_age - SKEW, NOW + SKEW
    assert verify(proof(iat=lo)).iat == lo
    assert verify(proof(iat=hi)).iat == hi
    refused(proof(iat=lo - 1), "DPoP proof too old or from the future")
    refused(proof(iat=hi + 1), "DPoP proof too old or from the future")
    refused(proof(iat=lo - 0.001), "DPoP proof too old or from the future")
    refused(proof(iat=hi + 0.001), "DPoP proof too old or from the future")
    # The same proof is fine a second later, stale once the window has passed it.
    same = proof(iat=NOW)
    verify(same, now=NOW + SETTINGS.max_age + SKEW)
    refused(same, "DPoP proof too old or from the future", now=NOW + SETTINGS.max_age + SKEW + 1)


def test_a_float_iat_within_the_window_is_accepted() -> None:
    """RFC 7519 §2: a NumericDate may be non-integer. Accepted on purpose, and compared
    as the float it is (not rounded into the window)."""
    assert verify(proof(iat=NOW - 0.5)).iat == NOW - 0.5
    refused(proof(iat=NOW + SKEW + 0.5), "DPoP proof too old or from the future")


@pytest.mark.parametrize(
    "iat",
    [None, "1700000000", True, [NOW], 10**400],
    ids=["missing", "string", "bool", "list", "huge"],
)
def test_iat_must_be_a_number(iat: Any) -> None:
    body = proof_claims()
    if iat is None:
        del body["iat"]
    else:
        body["iat"] = iat
    refused(compact(proof_header(), body, CLIENT), "DPoP proof iat is not a number")


@pytest.mark.parametrize("literal", [b"1e400", b"-1e400"])
def test_an_infinite_iat_is_not_a_number(literal: bytes) -> None:
    body = _json(proof_claims(iat=None))[:-1] + b',"iat":' + literal + b"}"
    refused(compact(proof_header(), body, CLIENT), "DPoP proof iat is not a number")


@pytest.mark.parametrize(
    "ath",
    [None, dpop.access_token_hash("another token"), "", 42, "\u00e9" * 43],
    ids=["missing", "other-token", "empty", "number", "non-ascii"],
)
def test_ath_must_hash_this_access_token(ath: Any) -> None:
    body = proof_claims()
    if ath is None:
        del body["ath"]
    else:
        body["ath"] = ath
    message = (
        "DPoP proof has no ath" if ath is None else "DPoP proof ath does not match the access token"
    )
    refused(compact(proof_header(), body, CLIENT), message)


@pytest.mark.parametrize(
    "member",
    [{"jku": "https://evil/jwks"}, {"x5u": "https://evil/cert"}, {"x5c": ["MIIB"]},
     {"crit": ["exp"]}, {"b64": False}, {"zip": "DEF"}, {"enc": "A128GCM"}],
    ids=lambda m: next(iter(m)),
)  # fmt: skip
def test_headers_that_could_name_other_keys_or_change_meaning_are_refused(
    member: dict[str, Any],
) -> None:
    header = proof_header()
    header.update(member)
    refused(compact(header, proof_claims(), CLIENT), "DPoP proof header not accepted")


DUPLICATE_TYP = ".".join(map(b64, [b'{"typ":"dpop+jwt","typ":"dpop+jwt"}', b"{}", b"sig"]))
NAN_CLAIM = ".".join(map(b64, [b"{}", b'{"a":NaN}', b"sig"]))


@pytest.mark.parametrize(
    "value",
    [
        "",
        "a.b",
        "a.b.c.d.e",
        "..",
        "é.é.é",
        "x" * 9000,
        f"{b64(b'{}')}.{b64(b'{}')}.",
        f"{b64(b'[]')}.{b64(b'{}')}.{b64(b'sig')}",
        f"{b64(b'{')}.{b64(b'{}')}.{b64(b'sig')}",
        DUPLICATE_TYP,
        NAN_CLAIM,
        "eyJ.eyJ.A=",
    ],
    ids=["empty", "two", "five", "dots", "non-ascii", "oversized", "no-sig", "header-list",
         "header-broken", "header-duplicate", "nan", "bad-b64"],
)  # fmt: skip
def test_malformed_proofs(value: str) -> None:
    refused(value, "DPoP proof malformed")


def test_the_size_cap_is_the_access_tokens() -> None:
    from extauthz.core.verify import MAX_TOKEN_BYTES

    n = 5000
    while len(proof(pad="x" * (n + 1), jti="j")) <= MAX_TOKEN_BYTES:
        n += 1
    largest = proof(pad="x" * n, jti="j")
    assert MAX_TOKEN_BYTES - 4 <= len(largest) <= MAX_TOKEN_BYTES
    verify(largest)
    refused(proof(pad="x" * (n + 1), jti="j"), "DPoP proof malformed")


def test_a_key_the_token_is_not_bound_to_is_refused_before_its_signature() -> None:
    """With ``jkt``, a proof by another key is a binding mismatch without any signature
    verification (an RSA key with a huge exponent costs ~20 ms to verify)."""
    with pytest.raises(BindingMismatch, match="DPoP proof key does not match the token"):
        verify(proof(OTHER, signer=CLIENT), jkt=JKT)  # its signature is not even valid
    with pytest.raises(BindingMismatch):
        verify(proof(OTHER), jkt=JKT)
    verify(proof(CLIENT), jkt=JKT)


# -- tokens: the DPoP scheme ----------------------------------------------------------
@pytest.mark.parametrize("scheme", ["DPoP", "dpop", "DPOP", "dPoP"])
def test_the_dpop_scheme_is_read_by_the_default_source_in_any_case(scheme: str) -> None:
    found = extract({"authorization": f"{scheme} {TOKEN}"}, "/", DEFAULT_TOKEN_SOURCES)
    assert found is not None
    assert (found.token, found.scheme) == (TOKEN, "dpop")
    bearer = extract({"authorization": f"Bearer {TOKEN}"}, "/", DEFAULT_TOKEN_SOURCES)
    assert bearer is not None and bearer.scheme == "bearer"


def test_the_same_token_under_both_schemes_is_ambiguous() -> None:
    with pytest.raises(InvalidRequest):
        extract({"authorization": f"DPoP {TOKEN},Bearer {TOKEN}"}, "/", DEFAULT_TOKEN_SOURCES)


def test_a_custom_header_does_not_read_dpop() -> None:
    custom = TokenSource(header="x-jwt", prefix="Token ")
    assert extract({"x-jwt": f"DPoP {TOKEN}"}, "/", (custom,)) is None


# -- binding.check --------------------------------------------------------------------
SOURCE = DEFAULT_TOKEN_SOURCES[0]
PROVIDERS: Mapping[str, Provider] = CFG.providers


def claims_of(tok: str) -> dict[str, Any]:
    return dict(json.loads(urlsafe_b64decode(tok.split(".")[1].encode())))


def auth_request(
    tok: str = TOKEN,
    *,
    scheme: str = "DPoP",
    dpop_header: str | None = None,
    path: str = "/orders",
    method: str = "GET",
    host: str = HOST,
    url_scheme: str = "https",
    cert: ClientCert | None = None,
    extra: Mapping[str, str] | None = None,
) -> AuthRequest:
    headers = {"authorization": f"{scheme} {tok}", **(extra or {})}
    if dpop_header is not None:
        headers["dpop"] = dpop_header
    return AuthRequest(
        method=method, scheme=url_scheme, host=host, path=path, headers=headers, client_cert=cert
    )


def check(
    req: AuthRequest, provider: str = "dp", *, tok: str | None = None, now: float = NOW
) -> tuple[str, float] | None:
    found = extract(req.headers, req.path, DEFAULT_TOKEN_SOURCES)
    assert found is not None
    use = tok or found.token
    return binding.check(req, Found(use, SOURCE, found.scheme), provider,
                         PROVIDERS[provider], claims_of(use), now)  # fmt: skip


def test_a_bound_token_with_its_proof_owes_a_replay_check() -> None:
    owed = check(auth_request(dpop_header=proof(jti="j-1")))
    assert owed is not None
    key, ttl = owed
    dp = PROVIDERS["dp"]
    assert dp.dpop is not None
    assert ttl == dp.dpop.max_age + 2 * dp.clock_skew  # the whole iat window
    assert key == binding.replay_key("dp", JKT, "j-1")
    assert "j-1" not in key and len(key) < 64  # bounded, the jti never stored in clear
    # One key per provider, per proof key and per jti.
    assert len({key, binding.replay_key("req", JKT, "j-1"), binding.replay_key("dp", "k", "j-1"),
                binding.replay_key("dp", JKT, "j-2")}) == 4  # fmt: skip


def test_the_proof_is_checked_against_the_original_request() -> None:
    # The proof names https://api.example.com/orders; the request says what was asked.
    ok = auth_request(dpop_header=proof(), path="/orders?page=3")
    assert check(ok) is not None
    with pytest.raises(InvalidDpopProof, match="htu"):
        check(auth_request(dpop_header=proof(), url_scheme="http"))
    with pytest.raises(InvalidDpopProof, match="htu"):
        check(auth_request(dpop_header=proof(), host="other.example.com"))
    with pytest.raises(InvalidDpopProof, match="htu"):
        check(auth_request(dpop_header=proof(), path="/orders/1"))
    with pytest.raises(InvalidDpopProof, match="htm"):
        check(auth_request(dpop_header=proof(), method="POST"))
    # The Host header with a port, as Envoy reports it.
    assert check(auth_request(dpop_header=proof(), host=f"{HOST}:443")) is not None
    with pytest.raises(InvalidDpopProof, match="htu"):
        check(auth_request(dpop_header=proof(), host=f"{HOST}:8443"))


ACCENT = token(cnf={"jkt": "\u00e9"})  # not ASCII: hmac.compare_digest would raise


@pytest.mark.parametrize(
    ("req", "provider", "exc", "message"),
    [
        (auth_request(scheme="Bearer"), "dp", BindingMismatch, "DPoP-bound token sent as Bearer"),
        (auth_request(scheme="Bearer", dpop_header=proof()), "dp", BindingMismatch,
         "DPoP-bound token sent as Bearer"),
        (auth_request(token(), dpop_header=proof(tok=token())), "dp", BindingMismatch,
         "token is not DPoP-bound"),
        (auth_request(dpop_header=proof()), "plain", BindingMismatch,
         "DPoP is not accepted for this issuer"),
        (auth_request(scheme="Bearer"), "plain", BindingMismatch,
         "DPoP-bound token sent as Bearer"),
        (auth_request(token(), scheme="Bearer"), "req", BindingMismatch,
         "this issuer's tokens must be sent with DPoP"),
        (auth_request(), "dp", InvalidDpopProof, "DPoP proof missing"),
        (auth_request(dpop_header=proof(OTHER)), "dp", BindingMismatch,
         "DPoP proof key does not match the token"),
        # Another key and a bad signature: the key is compared first (no verification).
        (auth_request(dpop_header=proof(OTHER, signer=CLIENT)), "dp", BindingMismatch,
         "DPoP proof key does not match the token"),
        (auth_request(dpop_header=f"{proof()},{proof()}"), "dp", InvalidDpopProof,
         "more than one DPoP proof"),
        (auth_request(dpop_header=f"{proof()}, {proof(OTHER)}"), "dp", InvalidDpopProof,
         "more than one DPoP proof"),
        (auth_request(dpop_header=""), "dp", InvalidDpopProof, "DPoP proof malformed"),
        (auth_request(token(cnf={"jkt": 7}), dpop_header=proof(tok=token(cnf={"jkt": 7}))), "dp",
         BindingMismatch, "token is not DPoP-bound"),
        (auth_request(token(cnf={"jkt": 7}), scheme="Bearer"), "dp", BindingMismatch,
         "DPoP-bound token sent as Bearer"),
        (auth_request(ACCENT, dpop_header=proof(tok=ACCENT)), "dp", BindingMismatch,
         "DPoP proof key does not match the token"),
    ],
    ids=["bound-as-bearer", "bound-as-bearer-with-proof", "unbound-as-dpop", "no-dpop-settings",
         "bound-as-bearer-no-settings", "required", "no-proof", "other-key",
         "other-key-bad-signature", "two-proofs", "two-proofs-other-key", "empty-proof",
         "jkt-not-a-string", "jkt-not-a-string-bearer", "jkt-non-ascii"],
)  # fmt: skip
def test_binding_refusals(req: AuthRequest, provider: str, exc: type[Denied], message: str) -> None:
    with pytest.raises(exc) as info:
        check(req, provider)
    assert type(info.value) is exc
    assert info.value.description == message
    # What a client sees: a binding problem is invalid_token, a proof problem its own.
    expected = "invalid_dpop_proof" if exc is InvalidDpopProof else "invalid_token"
    assert wire(info.value).http_status == 401
    assert wire(info.value).oauth_error == expected


def test_unbound_bearer_tokens_still_pass_where_dpop_is_optional() -> None:
    assert check(auth_request(token(), scheme="Bearer"), "dp") is None
    assert check(auth_request(token(ISS_PLAIN), scheme="Bearer"), "plain") is None


# -- certificate-bound tokens (RFC 8705) ----------------------------------------------
@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    ca = CA(tmp_path_factory.mktemp("ca"))
    mine = ca.issue("client", server=False).cert.read_text()
    theirs = ca.issue("other-client", server=False).cert.read_text()
    return mine, theirs


def _sha256_hex(pem: str) -> str:
    der = x509.load_pem_x509_certificate(pem.encode()).public_bytes(Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def test_x5t_is_base64url_sha256_of_the_der(certs: tuple[str, str]) -> None:
    mine, _ = certs
    digest = bytes.fromhex(_sha256_hex(mine))
    assert certificate_thumbprint(mine) == b64(digest)
    assert ClientCert(pem=mine).thumbprint() == b64(digest)
    assert ClientCert(sha256_hex=_sha256_hex(mine)).thumbprint() == b64(digest)
    assert ClientCert(sha256_hex=_sha256_hex(mine).upper()).thumbprint() == b64(digest)
    assert ClientCert(pem="not a certificate").thumbprint() == ""
    assert ClientCert(sha256_hex="abcd").thumbprint() == ""  # not 32 bytes
    assert ClientCert(sha256_hex="zz" * 32).thumbprint() == ""


def test_certificate_bound_tokens(certs: tuple[str, str]) -> None:
    mine, theirs = certs
    tok = token(cnf={"x5t#S256": certificate_thumbprint(mine)})

    def bearer(cert: ClientCert | None) -> AuthRequest:
        return auth_request(tok, scheme="Bearer", cert=cert)

    assert check(bearer(ClientCert(pem=mine))) is None
    assert check(bearer(ClientCert(sha256_hex=_sha256_hex(mine)))) is None  # XFCC Hash=
    for cert, message in [
        (None, "certificate-bound token without a client certificate"),
        (ClientCert(pem="garbage"), "certificate-bound token without a client certificate"),
        (ClientCert(pem=theirs), "client certificate does not match the token"),
        (ClientCert(sha256_hex=_sha256_hex(theirs)), "client certificate does not match the token"),
    ]:
        with pytest.raises(BindingMismatch) as info:
            check(bearer(cert))
        assert info.value.description == message
        assert wire(info.value).oauth_error == "invalid_token"


@pytest.mark.parametrize("x5t", [7, "", "\u00e9t\u00e9", None])
def test_a_strange_x5t_never_matches(certs: tuple[str, str], x5t: Any) -> None:
    mine, _ = certs
    tok = token(cnf={"x5t#S256": x5t})
    with pytest.raises(BindingMismatch):
        check(auth_request(tok, scheme="Bearer", cert=ClientCert(pem=mine)))
    if x5t is None:  # null: the claim is there, no certificate can match it
        with pytest.raises(BindingMismatch):
            check(auth_request(tok, scheme="Bearer"))


@pytest.mark.parametrize("cnf", ["abc", None, 7, ["jkt"]], ids=repr)
def test_a_cnf_that_is_not_an_object_is_refused(cnf: Any) -> None:
    body = claims(ISS_DP, "api", now=NOW, cnf=None)
    body["cnf"] = cnf  # claims() drops None members: set it here
    tok = ISSUER.sign_raw({"alg": "ES256", "kid": ISSUER.kid}, json.dumps(body).encode())
    with pytest.raises(BindingMismatch, match="token cnf claim is not an object"):
        check(auth_request(tok, scheme="Bearer"))


def test_a_null_jkt_still_refuses_a_downgrade() -> None:
    tok = token(cnf={"jkt": None})
    with pytest.raises(BindingMismatch, match="DPoP-bound token sent as Bearer"):
        check(auth_request(tok, scheme="Bearer"))


def test_dpop_and_certificate_bindings_both_hold(certs: tuple[str, str]) -> None:
    mine, theirs = certs
    tok = token(cnf={"jkt": JKT, "x5t#S256": certificate_thumbprint(mine)})
    ok = auth_request(tok, dpop_header=proof(tok=tok), cert=ClientCert(pem=mine))
    assert check(ok) is not None
    with pytest.raises(BindingMismatch, match="client certificate does not match"):
        check(auth_request(tok, dpop_header=proof(tok=tok), cert=ClientCert(pem=theirs)))
    with pytest.raises(BindingMismatch, match="sent as Bearer"):
        check(auth_request(tok, scheme="Bearer", cert=ClientCert(pem=mine)))


@pytest.mark.parametrize(
    ("form", "matches"),
    [
        ("xfcc-hash", True),
        ("xfcc-cert", True),
        ("xfcc-quoted", True),
        ("xfcc-subject-with-commas", True),
        ("nginx", True),
        ("xfcc-other", False),
    ],
)
def test_the_http_doors_certificate_header_forms(
    certs: tuple[str, str], form: str, matches: bool
) -> None:
    mine, theirs = certs
    escaped = quote(mine, safe="")
    value = {
        "xfcc-hash": f'By=spiffe://proxy;Hash={_sha256_hex(mine)};Subject="CN=client"',
        "xfcc-cert": f"Hash={_sha256_hex(mine)};Cert={escaped}",
        "xfcc-quoted": f'Cert="{escaped}";URI=spiffe://client',
        "xfcc-subject-with-commas": (
            f'Hash={_sha256_hex(mine)};Subject="CN=client,O=Example\\, Inc.,C=FR";URI='
        ),
        "nginx": escaped,
        "xfcc-other": f"Hash={_sha256_hex(theirs)}",
    }[form]
    cert = http_door.parse_client_cert_header(value)
    assert cert is not None
    assert (cert.thumbprint() == certificate_thumbprint(mine)) is matches


def test_an_xfcc_header_with_several_elements_names_no_certificate(
    certs: tuple[str, str],
) -> None:
    """Behind an edge that appends (APPEND_FORWARD) rather than sanitises, the first
    element may be the client's own invention: none of them is believed."""
    mine, theirs = certs
    forged = f"Hash={_sha256_hex(mine)}"
    assert http_door.parse_client_cert_header(f"{forged},Hash={_sha256_hex(theirs)}") is None
    assert http_door.parse_client_cert_header(f'{forged};Subject="a,b",By=x;Hash=00') is None


# -- through Policy and Authorizer ------------------------------------------------------
class _Rotating(InlineFetcher):
    """A key source whose documents change from one fetch to the next."""

    def __init__(self, *documents: Any) -> None:
        super().__init__(documents[0])
        self._bodies = [json.dumps(d).encode() for d in documents]

    async def fetch(self, *, no_cache: bool = False) -> Any:
        from extauthz.keys.source import Fetched

        body = self._bodies.pop(0) if len(self._bodies) > 1 else self._bodies[0]
        return Fetched(body)


class Clock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def make_authorizer(
    store: MemoryReplayStore | None = None, *, fetchers: Mapping[str, InlineFetcher] | None = None,
    cfg: config.Config = CFG,
) -> Authorizer:  # fmt: skip
    sources: dict[str, KeySource] = {}
    for name, prov in cfg.providers.items():
        fetcher = (fetchers or {}).get(name) or InlineFetcher({"keys": [ISSUER.jwk()]})
        source = KeySource(name, prov, fetcher)
        assert await source.refresh("startup")
        sources[name] = source
    return Authorizer(Policy(cfg), sources, replay=store or MemoryReplayStore(clock=Clock()),
                      clock=lambda: NOW)  # fmt: skip


def decide(policy: Policy, req: AuthRequest) -> Decision:
    result = policy.decide(req, keys, NOW)
    assert isinstance(result, Decision)
    return result


def _cache_hits() -> float:
    return metrics.REGISTRY.get_sample_value("extauthz_token_cache_total", {"result": "hit"}) or 0.0


def test_a_cached_bound_token_still_needs_a_good_proof_every_time() -> None:
    policy = Policy(CFG)
    first = decide(policy, auth_request(dpop_header=proof()))
    assert first.allowed and first.replay is not None and first.reuse_key is None
    hits = _cache_hits()
    for req, reason in [
        (auth_request(dpop_header=proof(OTHER)), "binding_mismatch"),  # fresh, wrong key
        (auth_request(dpop_header=proof(htu=f"https://{HOST}/other")), "invalid_dpop_proof"),
        (auth_request(dpop_header=proof(iat=NOW - 3600)), "invalid_dpop_proof"),
        (auth_request(), "invalid_dpop_proof"),  # no proof at all
        (auth_request(scheme="Bearer"), "binding_mismatch"),  # downgrade
    ]:
        d = decide(policy, req)
        assert not d.allowed and d.reason == reason, (d.description, reason)
    assert _cache_hits() >= hits + 5, "these requests must have been cache hits"
    assert decide(policy, auth_request(dpop_header=proof())).allowed


def test_a_cached_certificate_bound_token_is_checked_against_each_certificate(
    certs: tuple[str, str],
) -> None:
    mine, theirs = certs
    policy = Policy(CFG)
    tok = token(cnf={"x5t#S256": certificate_thumbprint(mine)})
    assert decide(policy, auth_request(tok, scheme="Bearer", cert=ClientCert(pem=mine))).allowed
    assert decide(policy, auth_request(tok, scheme="Bearer", cert=ClientCert(pem=mine))).allowed
    wrong = decide(policy, auth_request(tok, scheme="Bearer", cert=ClientCert(pem=theirs)))
    assert not wrong.allowed and wrong.description == "client certificate does not match the token"
    assert not decide(policy, auth_request(tok, scheme="Bearer")).allowed


async def test_the_same_proof_twice_is_a_replay() -> None:
    authorizer = await make_authorizer()
    value = proof()
    first = await authorizer.check(auth_request(dpop_header=value))
    assert first.allowed and first.replay is None
    second = await authorizer.check(auth_request(dpop_header=value))
    assert not second.allowed
    assert (second.reason, second.description) == ("invalid_dpop_proof", "DPoP proof replayed")
    assert second.dpop and second.dpop_algs == tuple(ALL_ALGS.split())
    assert wire(second).http_status == 401


async def test_a_jti_is_a_replay_whatever_uri_it_names() -> None:
    authorizer = await make_authorizer()
    assert (await authorizer.check(auth_request(dpop_header=proof(jti="once")))).allowed
    other = proof(jti="once", method="POST", htu=f"https://{HOST}/payments")
    again = await authorizer.check(auth_request(dpop_header=other, method="POST", path="/payments"))
    assert again.description == "DPoP proof replayed"


async def test_one_clients_jti_does_not_block_anothers() -> None:
    authorizer = await make_authorizer()
    theirs = bound(OTHER)
    assert (await authorizer.check(auth_request(dpop_header=proof(jti="same")))).allowed
    req = auth_request(theirs, dpop_header=proof(OTHER, jti="same", tok=theirs))
    assert (await authorizer.check(req)).allowed


async def test_a_refused_proof_is_not_remembered() -> None:
    """Only an allow claims its jti: a proof refused for its binding leaves the jti free."""
    authorizer = await make_authorizer()
    wrong_key = auth_request(dpop_header=proof(OTHER, jti="j"))
    assert not (await authorizer.check(wrong_key)).allowed
    assert (await authorizer.check(auth_request(dpop_header=proof(jti="j")))).allowed


async def test_replay_is_checked_after_an_unknown_kid_refetch() -> None:
    stranger = Signer("ES256")
    fetcher = _Rotating({"keys": [stranger.jwk()]}, {"keys": [ISSUER.jwk()]})
    authorizer = await make_authorizer(fetchers={"dp": fetcher})
    value = proof()
    first = authorizer.first(auth_request(dpop_header=value))
    assert isinstance(first, NeedKeys)
    assert (await authorizer.check(auth_request(dpop_header=value))).allowed
    again = await authorizer.check(auth_request(dpop_header=value))
    assert again.description == "DPoP proof replayed"


# -- the in-process replay store -------------------------------------------------------
def test_memory_store_claims_once_and_forgets_after_the_window() -> None:
    clock = Clock(100.0)
    store = MemoryReplayStore(clock=clock)
    assert store.claim_now("k", 10.0)
    assert not store.claim_now("k", 10.0)
    clock.now = 109.999
    assert not store.claim_now("k", 10.0)
    clock.now = 110.0  # the window is over: the entry is gone
    assert store.status()["entries"] == 1
    assert store.claim_now("other", 10.0)
    assert store.status()["entries"] == 1  # "k" expired and was dropped
    assert store.claim_now("k", 10.0)


async def test_memory_store_async_claim_is_the_same_claim() -> None:
    store = MemoryReplayStore(clock=Clock())
    assert await store.claim("k", 5.0)
    assert not store.claim_now("k", 5.0)
    assert not await store.claim("k", 5.0)


def test_memory_store_is_bounded_and_refuses_rather_than_forget_a_live_proof() -> None:
    """The bound: MEMORY_ENTRIES (100,000) entries per process. Full of live entries, it
    refuses (a 503, as with Redis down) rather than forget a proof still in its window:
    forgetting would let a client flooding proofs of its own reopen a victim's."""
    assert MEMORY_ENTRIES == 100_000
    clock = Clock(0.0)
    store = MemoryReplayStore(entries=3, clock=clock)
    for key in ("a", "b", "c"):
        assert store.claim_now(key, 60.0)
    with pytest.raises(ReplayStoreDown):
        store.claim_now("d", 60.0)
    assert store.status() == {"kind": "memory", "state": "full", "entries": 3}
    assert not store.claim_now("a", 60.0)  # still remembered: a replay stays a replay
    clock.now = 60.0  # the window ends: room again, and the state says so
    assert store.claim_now("d", 60.0)
    assert store.status() == {"kind": "memory", "state": "ok", "entries": 1}


async def test_a_full_memory_store_refuses_dpop_requests_as_unavailable() -> None:
    store = MemoryReplayStore(entries=1, clock=Clock())
    authorizer = await make_authorizer(store)
    first = await authorizer.check(auth_request(dpop_header=proof()))
    assert first.allowed, first
    second = await authorizer.check(auth_request(dpop_header=proof()))
    assert not second.allowed and second.reason == "replay_store_unavailable", second
    assert second.deny is DenyKind.UNAVAILABLE  # a 503 on both front doors


def test_memory_store_entry_size_keeps_the_bound_near_22_mb() -> None:
    """Measured with real keys: at most 256 bytes an entry, so 100,000 entries stay
    under 26 MB (docs/sender-constrained.md says about 22 MB)."""
    n = 20_000
    store = MemoryReplayStore(entries=n, clock=Clock())
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(n):
            store.claim_now(binding.replay_key("provider", JKT, f"jti-{i}"), 180.0)
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert store.status()["entries"] == n
    assert used / n <= 256, f"{used / n:.0f} bytes per entry"


# -- challenges through both front doors ------------------------------------------------
_CHALLENGE = re.compile(r"(?:^|,\s*)(Bearer|DPoP) ")


def challenges(value: str) -> dict[str, dict[str, str]]:
    """``{"Bearer": {...}, "DPoP": {...}}`` from one WWW-Authenticate value."""
    out: dict[str, dict[str, str]] = {}
    starts = [(m.group(1), m.start(1)) for m in _CHALLENGE.finditer(value)]
    for i, (scheme, start) in enumerate(starts):
        end = starts[i + 1][1] if i + 1 < len(starts) else len(value)
        text = value[start + len(scheme) : end]
        out[scheme] = {k: v for k, v in re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', text)}
    return out


class FakeContext:
    def time_remaining(self) -> float | None:
        return None


def check_request(req: AuthRequest, certificate: str = "") -> Any:
    message = grpc_door.CheckRequest()
    http = message.attributes.request.http
    http.method, http.scheme, http.host, http.path = req.method, req.scheme, req.host, req.path
    http.headers.update(dict(req.headers))
    if certificate:
        message.attributes.source.certificate = quote(certificate, safe="")
    return message


class GrpcAnswer:
    def __init__(self, raw: bytes) -> None:
        response = grpc_door.CheckResponse.FromString(raw)
        self.allowed = response.status.code == 0
        if self.allowed:
            self.status = 200
            self.headers = {h.header.key: h.header.value for h in response.ok_response.headers}
            self.body = ""
        else:
            self.status = response.denied_response.status.code
            self.headers = {h.header.key: h.header.value for h in response.denied_response.headers}
            self.body = response.denied_response.body


async def via_grpc(authorizer: Authorizer, req: AuthRequest, certificate: str = "") -> GrpcAnswer:
    # As grpcio's server calls it: on a thread of its own, waits resolved on this loop.
    servicer = grpc_door.AuthorizationServicer(authorizer, asyncio.get_running_loop())
    raw = await asyncio.to_thread(servicer.Check, check_request(req, certificate), FakeContext())
    return GrpcAnswer(raw)


class FakeTransport(asyncio.Transport):
    def __init__(self, peer: str) -> None:
        super().__init__()
        self.peer = peer
        self.out = bytearray()
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return (self.peer, 40000) if name == "peername" else default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.out += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class HttpAnswer:
    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()


async def via_http(
    authorizer: Authorizer,
    req: AuthRequest,
    *,
    mode: str = "original",
    peer: str = "127.0.0.1",
    cert_header: str | None = None,
    cert_value: str | None = None,
) -> HttpAnswer:
    """One request through the HTTP door, fed to a Connection through a fake transport
    (the door's own parsing, no socket). ``mode`` is ``server.http.original_request``:
    the original request is the auth request itself (``request``), or is described by
    X-Forwarded-* (``forwarded``) or X-Original-* (``original``) headers."""
    settings_ = config.HttpSettings(
        listen="127.0.0.1:0", original_request=mode, client_cert_header=cert_header
    )
    door = http_door.Door(settings_, authorizer)
    connection = door.protocol()
    transport = FakeTransport(peer)
    connection.connection_made(transport)
    lines = {
        "request": [f"{req.method} {req.path} HTTP/1.1", f"host: {req.host}"],
        "forwarded": [
            "GET /auth HTTP/1.1",
            "host: auth.internal",
            f"x-forwarded-method: {req.method}",
            f"x-forwarded-host: {req.host}",
            f"x-forwarded-uri: {req.path}",
        ],
        "original": [
            "GET /auth HTTP/1.1",
            f"host: {req.host}",
            f"x-original-method: {req.method}",
            f"x-original-uri: {req.path}",
        ],
    }[mode]
    lines += [f"x-forwarded-proto: {req.scheme}", *(f"{k}: {v}" for k, v in req.headers.items())]
    if cert_header is not None and cert_value is not None:
        lines.append(f"{cert_header}: {cert_value}")
    try:
        # Known keys and the in-process store: the answer is written before this returns.
        connection.data_received(("\r\n".join(lines) + "\r\n\r\n").encode())
    finally:
        connection.connection_lost(None)
    assert transport.out, "no answer"
    return HttpAnswer(bytes(transport.out))


DOORS = ["grpc", "http"]


async def through(door: str, authorizer: Authorizer, req: AuthRequest) -> GrpcAnswer | HttpAnswer:
    if door == "grpc":
        return await via_grpc(authorizer, req)
    return await via_http(authorizer, req)


@pytest.mark.parametrize("door", DOORS)
async def test_a_proof_problem_is_an_invalid_dpop_proof_challenge(door: str) -> None:
    authorizer = await make_authorizer()
    answer = await through(door, authorizer, auth_request(dpop_header=proof(htm="POST")))
    assert answer.status == 401
    value = answer.headers["www-authenticate"]
    got = challenges(value)
    assert set(got) == {"Bearer", "DPoP"}  # the provider accepts both schemes
    assert got["DPoP"] == {
        "realm": "extauthz",
        "error": "invalid_dpop_proof",
        "error_description": "DPoP proof htm does not match the request",
        "algs": ALL_ALGS,
    }
    assert got["Bearer"] == {"realm": "extauthz"}
    assert value.startswith('Bearer realm="extauthz", DPoP realm="extauthz", error=')
    body = json.loads(answer.body)
    assert body["error"] == "invalid_dpop_proof"


@pytest.mark.parametrize("door", DOORS)
async def test_a_replayed_proof_through_each_door(door: str) -> None:
    authorizer = await make_authorizer()
    value = proof()
    assert (await through(door, authorizer, auth_request(dpop_header=value))).status == 200
    answer = await through(door, authorizer, auth_request(dpop_header=value))
    assert answer.status == 401
    dpop_challenge = challenges(answer.headers["www-authenticate"])["DPoP"]
    assert dpop_challenge["error"] == "invalid_dpop_proof"
    assert dpop_challenge["error_description"] == "DPoP proof replayed"


@pytest.mark.parametrize("door", DOORS)
@pytest.mark.parametrize(
    ("req", "on", "description"),
    [
        (auth_request(dpop_header=proof(OTHER)), "DPoP", "DPoP proof key does not match the token"),
        (auth_request(scheme="Bearer"), "Bearer", "DPoP-bound token sent as Bearer"),
        (auth_request(token(), dpop_header=proof(tok=token())), "DPoP", "token is not DPoP-bound"),
    ],
    ids=["other-key", "downgrade", "unbound-as-dpop"],
)
async def test_a_binding_problem_is_an_invalid_token_challenge(
    door: str, req: AuthRequest, on: str, description: str
) -> None:
    authorizer = await make_authorizer()
    answer = await through(door, authorizer, req)
    assert answer.status == 401
    got = challenges(answer.headers["www-authenticate"])
    assert set(got) == {"Bearer", "DPoP"}
    assert got[on]["error"] == "invalid_token"
    assert got[on]["error_description"] == description
    other = "Bearer" if on == "DPoP" else "DPoP"
    assert "error" not in got[other]
    assert got["DPoP"]["algs"] == ALL_ALGS


@pytest.mark.parametrize("door", DOORS)
async def test_insufficient_scope_goes_on_the_scheme_used_and_does_not_spend_the_proof(
    door: str,
) -> None:
    authorizer = await make_authorizer()
    value = proof(htu=f"https://{HOST}/admin/x", jti="admin-1")
    answer = await through(door, authorizer, auth_request(dpop_header=value, path="/admin/x"))
    assert answer.status == 403
    got = challenges(answer.headers["www-authenticate"])
    assert got["DPoP"]["error"] == "insufficient_scope" and got["DPoP"]["scope"] == "admin"
    assert "error" not in got["Bearer"]
    # Only an allow claims the jti: "admin-1" of this key is still free.
    tok = bound(scope="admin")
    again = auth_request(tok, dpop_header=proof(htu=f"https://{HOST}/admin/x", tok=tok,
                                                 jti="admin-1"), path="/admin/x")  # fmt: skip
    assert (await through(door, authorizer, again)).status == 200


@pytest.mark.parametrize("door", DOORS)
async def test_required_dpop_has_only_the_dpop_challenge_with_exactly_its_algs(door: str) -> None:
    authorizer = await make_authorizer()
    tok = token(ISS_REQ)
    answer = await through(door, authorizer, auth_request(tok, scheme="Bearer", path="/required"))
    assert answer.status == 401
    got = challenges(answer.headers["www-authenticate"])
    assert set(got) == {"DPoP"}
    assert got["DPoP"]["algs"] == "EdDSA ES256"  # the provider's list, in its order
    assert got["DPoP"]["error"] == "invalid_token"
    assert got["DPoP"]["error_description"] == "this issuer's tokens must be sent with DPoP"
    # No token at all: the challenge, without an error.
    missing = await through(door, authorizer, AuthRequest(host=HOST, path="/required/x"))
    assert challenges(missing.headers["www-authenticate"]) == {
        "DPoP": {"realm": "extauthz", "algs": "EdDSA ES256"}
    }


@pytest.mark.parametrize("door", DOORS)
async def test_a_provider_without_dpop_settings_refuses_dpop_with_a_bearer_challenge(
    door: str,
) -> None:
    authorizer = await make_authorizer()
    refused_ = await through(
        door, authorizer, auth_request(token(ISS_PLAIN), dpop_header=proof(), path="/plain/x")
    )
    assert refused_.status == 401
    assert challenges(refused_.headers["www-authenticate"]) == {
        "Bearer": {
            "realm": "extauthz",
            "error": "invalid_token",
            "error_description": "DPoP is not accepted for this issuer",
        }
    }


@pytest.mark.parametrize("door", DOORS)
async def test_a_rule_whose_providers_refuse_dpop_does_not_offer_it(door: str) -> None:
    authorizer = await make_authorizer()
    answer = await through(door, authorizer, AuthRequest(host=HOST, path="/plain/x"))
    assert answer.status == 401
    assert answer.headers["www-authenticate"] == 'Bearer realm="extauthz"'


@pytest.mark.parametrize("door", DOORS)
async def test_no_token_where_both_schemes_are_accepted_offers_both(door: str) -> None:
    authorizer = await make_authorizer()
    answer = await through(door, authorizer, AuthRequest(host=HOST, path="/orders"))
    assert answer.status == 401
    assert challenges(answer.headers["www-authenticate"]) == {
        "Bearer": {"realm": "extauthz"},
        "DPoP": {"realm": "extauthz", "algs": ALL_ALGS},
    }


@pytest.mark.parametrize("mode", ["request", "forwarded", "original"])
async def test_the_http_door_checks_the_proof_against_the_original_request(mode: str) -> None:
    authorizer = await make_authorizer()
    ok = await via_http(authorizer, auth_request(dpop_header=proof()), mode=mode)
    assert ok.status == 200
    for bad, what in [
        (proof(htu="https://auth.internal/auth"), "htu"),  # the auth request's own URL
        (proof(htu=f"http://{HOST}/orders"), "htu"),  # the scheme the proxy reported
        (proof(htm="POST"), "htm"),
    ]:
        answer = await via_http(authorizer, auth_request(dpop_header=bad), mode=mode)
        assert answer.status == 401
        got = challenges(answer.headers["www-authenticate"])["DPoP"]
        assert got["error_description"] == f"DPoP proof {what} does not match the request"


async def test_grpc_checks_the_proof_against_envoys_attributes() -> None:
    """Envoy reports :scheme as ``scheme`` and the Host header, port included, as ``host``."""
    authorizer = await make_authorizer()
    ported = auth_request(dpop_header=proof(htu=f"https://{HOST}:8443/orders"), host=f"{HOST}:8443")
    assert (await via_grpc(authorizer, ported)).status == 200
    plain = auth_request(dpop_header=proof(htu=f"http://{HOST}/orders"), url_scheme="http")
    assert (await via_grpc(authorizer, plain)).status == 200
    wrong = auth_request(dpop_header=proof(htu=f"http://{HOST}/orders"), url_scheme="https")
    assert (await via_grpc(authorizer, wrong)).status == 401


async def test_grpc_reads_the_client_certificate_from_source_certificate(
    certs: tuple[str, str],
) -> None:
    mine, theirs = certs
    authorizer = await make_authorizer()
    tok = token(cnf={"x5t#S256": certificate_thumbprint(mine)})
    req = auth_request(tok, scheme="Bearer")
    assert (await via_grpc(authorizer, req, mine)).status == 200
    for certificate, description in [
        (theirs, "client certificate does not match the token"),
        ("", "certificate-bound token without a client certificate"),
    ]:
        answer = await via_grpc(authorizer, req, certificate)
        assert answer.status == 401
        got = challenges(answer.headers["www-authenticate"])
        assert got["Bearer"]["error"] == "invalid_token"
        assert got["Bearer"]["error_description"] == description


@pytest.mark.parametrize(
    ("peer", "header", "form", "status"),
    [
        ("127.0.0.1", "x-forwarded-client-cert", "hash", 200),
        ("127.0.0.1", "x-forwarded-client-cert", "cert", 200),
        ("127.0.0.1", "x-ssl-client-cert", "nginx", 200),
        ("127.0.0.1", "x-forwarded-client-cert", "other", 401),
        ("127.0.0.1", "x-forwarded-client-cert", None, 401),
    ],
)
async def test_the_http_door_reads_the_certificate_of_a_trusted_proxy(
    certs: tuple[str, str], peer: str, header: str, form: str | None, status: int
) -> None:
    mine, theirs = certs
    authorizer = await make_authorizer()
    tok = token(cnf={"x5t#S256": certificate_thumbprint(mine)})
    value = {
        "hash": f"Hash={_sha256_hex(mine)}",
        "cert": f'Hash={_sha256_hex(mine)};Cert="{quote(mine, safe="")}"',
        "nginx": quote(mine, safe=""),
        "other": f"Hash={_sha256_hex(theirs)}",
        None: None,
    }[form]
    answer = await via_http(
        authorizer, auth_request(tok, scheme="Bearer"), cert_header=header, cert_value=value
    )
    assert answer.status == status


async def test_the_http_door_ignores_a_certificate_header_from_an_untrusted_peer(
    certs: tuple[str, str],
) -> None:
    """In ``request`` mode an untrusted client may reach the door: its own
    x-forwarded-client-cert must not bind anything."""
    mine, _ = certs
    authorizer = await make_authorizer()
    settings_ = config.HttpSettings(
        listen="127.0.0.1:0", client_cert_header="x-forwarded-client-cert"
    )
    door = http_door.Door(settings_, authorizer)
    tok = token(cnf={"x5t#S256": certificate_thumbprint(mine)})
    headers = {
        "host": [HOST],
        "authorization": [f"Bearer {tok}"],
        "x-forwarded-client-cert": [f"Hash={_sha256_hex(mine)}"],
    }
    untrusted = door.original("GET", "/orders", headers, "203.0.113.9")
    assert untrusted.client_cert is None
    decision = await authorizer.check(untrusted)
    assert decision.description == "certificate-bound token without a client certificate"
    trusted = door.original("GET", "/orders", headers, "127.0.0.1")
    assert (await authorizer.check(trusted)).allowed


# -- metrics ---------------------------------------------------------------------------
def _dpop_count(provider: str, result: str) -> float:
    return (
        metrics.REGISTRY.get_sample_value(
            "extauthz_dpop_total", {"provider": provider, "result": result}
        )
        or 0.0
    )


async def test_dpop_requests_are_counted_by_provider_and_result() -> None:
    authorizer = await make_authorizer()
    before = {r: _dpop_count("dp", r) for r in ("ok", "invalid_dpop_proof", "binding_mismatch")}
    value = proof()
    for req in [
        auth_request(dpop_header=value),  # ok
        auth_request(dpop_header=value),  # replayed
        auth_request(dpop_header=proof(htm="PUT")),  # a proof problem
        auth_request(dpop_header=proof(OTHER)),  # a binding problem
        auth_request(dpop_header=proof(OTHER)),
    ]:
        await via_grpc(authorizer, req)
    assert _dpop_count("dp", "ok") == before["ok"] + 1
    assert _dpop_count("dp", "invalid_dpop_proof") == before["invalid_dpop_proof"] + 2
    assert _dpop_count("dp", "binding_mismatch") == before["binding_mismatch"] + 2
    # A plain Bearer request is not a DPoP request.
    plain = _dpop_count("plain", "ok")
    await via_grpc(authorizer, auth_request(token(ISS_PLAIN), scheme="Bearer", path="/plain"))
    assert _dpop_count("plain", "ok") == plain


# -- require_typ (RFC 9068) ------------------------------------------------------------
@pytest.mark.parametrize("typ", ["at+jwt", "AT+JWT", "application/at+jwt", "application/AT+JWT"])
def test_require_typ_accepts_at_jwt_in_any_case_with_or_without_application(typ: str) -> None:
    d = decide(Policy(CFG), auth_request(token(ISS_TYP, typ=typ), scheme="Bearer"))
    assert d.allowed, d.description


@pytest.mark.parametrize("typ", ["JWT", None, "jwt", "at+jwt+x", "application/jwt", "text/at+jwt"])
def test_require_typ_refuses_other_types_clearly(typ: str | None) -> None:
    d = decide(Policy(CFG), auth_request(token(ISS_TYP, typ=typ), scheme="Bearer"))
    assert not d.allowed
    assert (d.reason, d.description) == ("wrong_token_type", "token type not accepted")
    assert wire(d).http_status == 401 and wire(d).oauth_error == "invalid_token"


def test_require_typ_only_applies_to_its_provider() -> None:
    assert decide(Policy(CFG), auth_request(token(ISS_PLAIN, typ=None), scheme="Bearer")).allowed


# -- property: every single change of a valid proof is refused ---------------------------
PROP_TOKEN = bound()
PROP_CLAIMS = claims_of(PROP_TOKEN)
PROP_HEADER = proof_header()
PROP_BODY = proof_claims(tok=PROP_TOKEN, jti="fixed-jti")
PROP_PROOF = compact(PROP_HEADER, PROP_BODY, CLIENT)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)  # fmt: skip


def _prop_check(value: str) -> tuple[str, float] | None:
    req = auth_request(PROP_TOKEN, dpop_header=value)
    return binding.check(req, Found(PROP_TOKEN, SOURCE, "dpop"), "dp", PROVIDERS["dp"],
                         PROP_CLAIMS, NOW)  # fmt: skip


def _segments() -> list[str]:
    return PROP_PROOF.split(".")


@st.composite
def single_changes(draw: st.DrawFn) -> tuple[str, str]:
    """(what changed, the changed proof): one change of PROP_PROOF."""
    head, body, sig = _segments()
    kind = draw(
        st.sampled_from(
            ["header-member", "claim-member", "drop-header", "drop-claim", "add-member",
             "signature-byte", "payload-byte", "header-byte", "swap-key", "swap-signer",
             "resigned-claim", "resigned-header"]
        )
    )  # fmt: skip
    if kind in ("header-member", "claim-member"):
        obj = dict(PROP_HEADER if kind == "header-member" else PROP_BODY)
        name = draw(st.sampled_from(sorted(obj)))
        value = draw(json_values.filter(lambda v: _json(v) != _json(obj[name])))
        obj[name] = value
        encoded = b64(_json(obj))
        return f"{kind} {name}={value!r}", (
            f"{encoded}.{body}.{sig}" if kind == "header-member" else f"{head}.{encoded}.{sig}"
        )
    if kind in ("drop-header", "drop-claim"):
        obj = dict(PROP_HEADER if kind == "drop-header" else PROP_BODY)
        name = draw(st.sampled_from(sorted(obj)))
        del obj[name]
        encoded = b64(_json(obj))
        return f"{kind} {name}", (
            f"{encoded}.{body}.{sig}" if kind == "drop-header" else f"{head}.{encoded}.{sig}"
        )
    if kind == "add-member":
        in_header = draw(st.booleans())
        obj = dict(PROP_HEADER if in_header else PROP_BODY)
        name = draw(st.text(min_size=1, max_size=6).filter(lambda n: n not in obj))
        obj[name] = draw(json_values)
        encoded = b64(_json(obj))
        return f"add {name} to {'header' if in_header else 'claims'}", (
            f"{encoded}.{body}.{sig}" if in_header else f"{head}.{encoded}.{sig}"
        )
    if kind in ("signature-byte", "payload-byte", "header-byte"):
        index = {"header-byte": 0, "payload-byte": 1, "signature-byte": 2}[kind]
        parts = [head, body, sig]
        raw = bytearray(urlsafe_b64decode(parts[index].encode()))
        at = draw(st.integers(0, len(raw) - 1))
        raw[at] ^= draw(st.integers(1, 255))
        parts[index] = b64(bytes(raw))
        return f"{kind} {at}", ".".join(parts)
    if kind == "swap-key":  # another key, signing as itself: a valid proof, not ours
        other = draw(st.sampled_from([OTHER, generate_key("EdDSA")]))
        return "swap key", compact(proof_header(other), PROP_BODY, other)
    if kind == "swap-signer":  # our jwk, another key's signature
        return "swap signer", compact(PROP_HEADER, PROP_BODY, OTHER)
    if kind == "resigned-claim":  # the key holder changes a checked claim
        obj = dict(PROP_BODY)
        name = draw(st.sampled_from(["htm", "htu", "iat", "ath"]))
        obj[name] = draw(
            {
                "htm": st.sampled_from(["POST", "get", "HEAD", "PUT", ""]),
                "htu": st.from_regex(r"[a-z]{1,8}", fullmatch=True)
                .filter(lambda p: p != "orders")
                .map(lambda p: f"https://{HOST}/{p}"),
                "iat": st.one_of(
                    st.integers(max_value=int(NOW - 121)), st.integers(min_value=int(NOW + 61))
                ),
                "ath": st.text(max_size=50).filter(lambda a: a != PROP_BODY["ath"]),
            }[name]
        )
        return f"re-signed {name}={obj[name]!r}", compact(PROP_HEADER, obj, CLIENT)
    obj = dict(PROP_HEADER)  # resigned-header: the key holder changes typ or alg
    name = draw(st.sampled_from(["typ", "alg"]))
    obj[name] = draw(
        st.sampled_from(["JWT", "at+jwt", "dpop"] if name == "typ" else ["ES384", "none", "HS256"])
    )
    signing_input = f"{b64(_json(obj))}.{body}"
    signature = ALGS["ES256"].sign(signing_input.encode(), CLIENT)  # what the holder can sign
    return f"re-signed header {name}={obj[name]}", f"{signing_input}.{b64(bytes(signature))}"


def test_the_unchanged_property_proof_passes() -> None:
    assert _prop_check(PROP_PROOF) is not None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(change=single_changes())
def test_every_single_change_of_a_valid_proof_is_refused(change: tuple[str, str]) -> None:
    what, value = change
    assert value != PROP_PROOF, what
    with pytest.raises(Denied) as info:
        _prop_check(value)
    assert isinstance(info.value, InvalidDpopProof | BindingMismatch), (what, info.value)
    assert wire(info.value).http_status == 401, what


proof_members = st.one_of(
    json_values,
    st.sampled_from(["dpop+jwt", "ES256", "EdDSA", "none", "HS256", "GET", URL, NOW, -1]),
    st.just(dict(CLIENT.as_dict(private=False))),
    st.just(dict(CLIENT.as_dict(private=True))),
    st.just({"kty": "RSA", "n": "AQAB", "e": "AQAB"}),
    st.just({"kty": "OKP", "crv": "X25519", "x": b64(b"x" * 32)}),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    header=st.dictionaries(
        st.sampled_from(["typ", "alg", "jwk", "kid", "jku", "crit", "x"]), proof_members
    ),
    body=st.dictionaries(
        st.sampled_from(["jti", "htm", "htu", "iat", "ath", "nonce"]), proof_members
    ),
)
def test_any_signed_proof_passes_or_is_refused_never_crashes(
    header: dict[str, Any], body: dict[str, Any]
) -> None:
    signing_input = f"{b64(_json(header))}.{b64(_json(body))}"
    signature = ALGS["ES256"].sign(signing_input.encode(), CLIENT)
    try:
        _prop_check(f"{signing_input}.{b64(bytes(signature))}")
    except (InvalidDpopProof, BindingMismatch) as exc:
        assert wire(exc).http_status == 401
    else:  # only a proof that is right in every member passes
        assert header.get("typ") == "dpop+jwt" and body.get("ath") == PROP_BODY["ath"]


# Keep the fixtures honest: the helpers must build what the real client helper builds.
def test_the_test_proofs_match_the_dev_client() -> None:
    from extauthz.dev.client import make_proof

    value = make_proof(CLIENT, method="GET", url=f"{URL}?q=1", token=TOKEN, now=NOW)
    assert check(auth_request(dpop_header=value, path="/orders?q=1")) is not None
