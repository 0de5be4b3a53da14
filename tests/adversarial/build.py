"""Turn an adversarial case (cases.yaml) into an HTTP request: method, path, headers.

Tokens are signed at build time from the fixed private JWKs in ``keys.json`` (signatures
depend on keys and on ``now``), by hand where joserfc would refuse the attack (HMAC keyed
with a public key, ``alg`` relabelling, duplicate header members, JWE, ...).

A recipe (``case["token"]``) is a mapping:

``raw``            a literal token; ``repeat`` repeats it that many times.
``header``         members over the default ``{"alg": <sign alg>, "typ": "JWT", "kid": <key>}``;
                   a ``null`` value removes the member.
``header_json``    the header's exact JSON text instead (duplicate members...);
                   ``header_b64`` its exact bytes (standard base64).
``claims``         members over the default claims (iss, aud, sub, iat, exp); ``null`` removes.
``payload``        the payload's exact text instead (UTF-8); ``payload_b64`` exact bytes
                   (standard base64); ``payload_token`` a nested recipe (nested JWT);
                   ``payload_encoding`` the text encoding of the default claims.
``sign``           ``none`` (empty signature) or ``{key, alg, as}``: ``as`` is ``private``
                   (default), or the public key encoding used as an HMAC secret
                   (``public_pem``, ``public_pem_pkcs1``, ``public_der``, ``public_jwk_json``,
                   ``public_jwk_json_sorted``, ``public_raw``), or ``secret:TEXT``.
``jwe``            ``{key, alg, enc}``: encrypt the (nested) JWS to that public key.
``length``         pad the claims so the final token is exactly this many characters.
``mutate``         a list of ``{op: value}`` applied in order (see ``_mutate``).

A request (``case["request"]``) says where the token goes (``via``, ``scheme``, ``second``,
``path``, ``host``, ``method``, ``headers``) and, with ``dpop``, sends a DPoP proof (RFC 9449)
in the ``DPoP`` header, the token then going as ``Authorization: DPoP`` unless ``scheme``
says otherwise. A proof recipe is a mapping:

``key``            the client key that signs it and whose public JWK is its ``jwk``
                   (default ``dpop_ec``); ``alg`` its algorithm (default: the key's).
``header``         members over ``{"typ": "dpop+jwt", "alg": <alg>, "jwk": <key's JWK>}``.
``claims``         members over ``{"jti": <fresh>, "htm": <method>, "htu": <http://host/path,
                   no query>, "iat": <now>, "ath": <hash of the token>}``.
``header_extra``   JSON text added as the last members (duplicates, deep nesting, ``1e400``);
``claims_extra``   the same for the claims.
``sign``           as for tokens (``{key, alg, as}`` or ``none``; default: ``key`` with
                   ``alg``), or ``{hex: …}``: exactly these signature bytes.
``payload_token``  a token recipe whose compact form is the proof's payload (nested JWS).
``raw``, ``length``, ``mutate``  as for tokens; ``count``: N proofs joined by commas;
``token: true``    the access token itself as the proof.

Placeholders in strings: ``@now``, ``@now+N``, ``@now-N`` (integers; ``@now-0.5`` a
float), ``@iss``, ``@hs_iss``, ``@inline_iss``, ``@dpop_iss``, ``@zerosN`` / ``@kidN`` (N
zeros / N ``k``), ``@listsN`` / ``@objsN`` (JSON nested N levels deep: ``[[…]]`` /
``{"a":{"a":…1}}``); whole values ``@attacker_jwk`` and ``@attacker_x5c``
(never-published attacker key material), ``@jwk:NAME`` / ``@private_jwk:NAME`` (a key's
public / private JWK) and ``@jkt:NAME`` (its RFC 7638 thumbprint, for ``cnf.jkt``).
"""

from __future__ import annotations

import base64
import copy
import functools
import hashlib
import hmac
import json
import re
import uuid
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml
from cryptography.hazmat.primitives import serialization
from joserfc import jwe
from joserfc.errors import SecurityWarning
from joserfc.jwk import ECKey, Key, OctKey, OKPKey, RSAKey, import_key
from joserfc.jws import JWSRegistry

HERE = Path(__file__).parent
KEYS: dict[str, Any] = json.loads((HERE / "keys.json").read_text())

ISS = "https://issuer.example"  # provider "main": default algorithms, JWKS over HTTP
HS_ISS = "https://hs.example"  # provider "hs": same keys inline, algorithms [RS256, HS256]
INLINE_ISS = "https://inline.example"  # provider "inline": inline oct + RSA, [HS256, RS256]
DPOP_ISS = "https://dpop.example"  # provider "dpop": the main JWKS, `dpop: {}` (RFC 9449)
DPOP_ALGS = "ES256 EdDSA RS256 PS256"  # its dpop.algorithms (the default), as `algs` says
AUD = "api"
REALM = "extauthz"
HOST = "api.example.com"  # the Host of every request unless a case sets `request.host`
INTERNAL_HOST = "internal.example.com"  # rule "internal" binds /internal to this host

# kid -> JWK `alg` published in the JWKS (None: no `alg` member).
PUBLISHED: dict[str, str | None] = {
    "rsa": "RS256",
    "rsa384": "RS384",
    "ec": "ES256",
    "ec384": None,
    "ed": "EdDSA",
    "x25519": None,  # an ECDH key: the server must skip it, never verify EdDSA with it
}
_HASH = {"256": hashlib.sha256, "384": hashlib.sha384, "512": hashlib.sha512}
_PLACEHOLDER = re.compile(
    r"@(now(?:[+-]\d+(?:\.\d+)?)?|iss|hs_iss|inline_iss|dpop_iss|zeros\d+|kid\d+|lists\d+|objs\d+)\b"
)


@functools.cache
def key(name: str) -> Key:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SecurityWarning)  # dpop_rsa1024 is small on purpose
        return import_key(KEYS[name])


def public_jwk(name: str) -> dict[str, Any]:
    data = dict(key(name).as_dict(private=False))
    data["kid"] = name
    if name != "x25519":  # published without `use`: only its curve tells it apart
        data["use"] = "sig"
    alg = PUBLISHED.get(name)
    if alg is not None:
        data["alg"] = alg
    return data


def jwks_document() -> dict[str, Any]:
    """What the corpus JWKS server publishes (public members only)."""
    return {"keys": [public_jwk(kid) for kid in PUBLISHED]}


def inline_jwks() -> dict[str, Any]:
    """Provider "inline": a shared secret (kid hmac) next to the RSA public key (kid rsa)."""
    secret = dict(KEYS["hmac"], kid="hmac", alg="HS256", use="sig")
    return {"keys": [secret, public_jwk("rsa")]}


def config(jwks_url: str) -> dict[str, Any]:
    sources = [
        {"header": "authorization", "prefix": "Bearer "},
        {"cookie": "access_token"},
        {"query": "access_token"},
    ]
    common = {
        "audiences": [AUD],
        "token_sources": sources,
        "claims_to_headers": {"x-user-id": "sub"},
    }
    return {
        "server": {"listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0", "realm": REALM},
        "providers": {
            "main": {"issuer": ISS, "jwks_uri": jwks_url, **common},
            # HMAC needs a key source that may hold secrets (inline or file): the same
            # public keys, inline. An RSA key still must never verify HS256.
            "hs": {
                "issuer": HS_ISS,
                "jwks": jwks_document(),
                "algorithms": ["RS256", "HS256"],
                **common,
            },
            "inline": {
                "issuer": INLINE_ISS,
                "jwks": inline_jwks(),
                "algorithms": ["HS256", "RS256"],
                **common,
            },
            # DPoP-bound tokens (cnf.jkt) with proofs, or plain Bearer tokens.
            "dpop": {"issuer": DPOP_ISS, "jwks_uri": jwks_url, "dpop": {}, **common},
        },
        "rules": [
            {"name": "public", "match": {"path_prefix": "/public"}, "allow_anonymous": True},
            {"name": "admin", "match": {"path_prefix": "/admin"}, "scopes": ["admin"]},
            {
                "name": "internal",
                "match": {"path_prefix": "/internal", "hosts": [INTERNAL_HOST]},
                "scopes": ["internal"],
            },
            {"name": "default", "match": {"path_prefix": "/"}},
        ],
    }


def load_cases() -> list[dict[str, Any]]:
    cases = yaml.safe_load((HERE / "cases.yaml").read_text())
    assert isinstance(cases, list)
    return cases


# -- encoding helpers ----------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _subst(value: Any, now: int) -> Any:
    """Resolve placeholders (recursively); a whole-string ``@now+N`` becomes an int."""
    names = {"iss": ISS, "hs_iss": HS_ISS, "inline_iss": INLINE_ISS, "dpop_iss": DPOP_ISS}

    def one(m: re.Match[str]) -> str:
        word = m.group(1)
        if word in names:
            return names[word]
        if word.startswith(("zeros", "kid")):  # @zeros400: 400 zeros; @kid4000: a long kid
            count = int(word.lstrip("zeroskid"))
            return ("0" if word.startswith("zeros") else "k") * count
        if word.startswith("lists"):
            depth = int(word.removeprefix("lists"))
            return "[" * depth + "]" * depth
        if word.startswith("objs"):
            depth = int(word.removeprefix("objs"))
            return '{"a":' * depth + "1" + "}" * depth
        return str(now + _number(word[3:] or "0"))

    if isinstance(value, str) and value.startswith(("@jwk:", "@private_jwk:", "@jkt:")):
        kind, _, name = value[1:].partition(":")
        if kind == "jkt":
            return str(key(name).thumbprint())
        return dict(key(name).as_dict(private=kind == "private_jwk"))
    if value == "@attacker_jwk":
        return public_jwk("attacker_rsa") | {"kid": "attacker"}
    if value == "@attacker_x5c":
        return [KEYS["attacker_x5c"]]
    if isinstance(value, str):
        m = _PLACEHOLDER.fullmatch(value)
        if m and m.group(1).startswith("now"):
            return _number(one(m))
        return _PLACEHOLDER.sub(one, value)
    if isinstance(value, list):
        return [_subst(v, now) for v in value]
    if isinstance(value, dict):
        return {k: _subst(v, now) for k, v in value.items()}
    return value


def _number(text: str) -> int | float:
    return float(text) if "." in text else int(text)


def _merge(base: dict[str, Any], over: dict[str, Any] | None) -> dict[str, Any]:
    out = dict(base)
    for k, v in (over or {}).items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def hmac_secret(name: str, encoding: str) -> bytes:
    """A public key rendered as the bytes a confused verifier would use as an HMAC key."""
    if encoding.startswith("secret:"):
        return encoding.removeprefix("secret:").encode()
    k = key(name)
    if isinstance(k, OctKey):
        raise ValueError(f"{name} is a symmetric key: it has no public encoding")
    pub = k.public_key
    if encoding == "public_pem":
        return bytes(k.as_pem(private=False))
    if encoding == "public_pem_pkcs1":
        return bytes(pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1))
    if encoding == "public_der":
        return bytes(k.as_der(private=False))
    if encoding == "public_jwk_json":
        return json.dumps(public_jwk(name)).encode()
    if encoding == "public_jwk_json_sorted":
        return _json({m: v for m, v in sorted(k.as_dict(private=False).items())})
    if encoding == "public_raw":
        return bytes(pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
    raise ValueError(encoding)


def _signature(sign: Any, signing_input: bytes) -> bytes:
    if sign is None or sign == "none":
        return b""
    alg: str = sign["alg"]
    encoding = sign.get("as", "private")
    if alg.startswith("HS"):
        if encoding == "private":
            secret = OctKey.import_key(KEYS[sign["key"]]).raw_value
        else:
            secret = hmac_secret(sign["key"], encoding)
        return hmac.new(secret, signing_input, _HASH[alg[2:]]).digest()
    assert encoding == "private", sign
    model = JWSRegistry.algorithms[alg]
    k = key(sign["key"])
    assert isinstance(k, RSAKey | ECKey | OKPKey)
    return bytes(model.sign(signing_input, k))


def _default_kid(sign: Any) -> str | None:
    """The signing key's kid, when it is a published key used as itself."""
    if not isinstance(sign, dict) or sign.get("as", "private") != "private":
        return None
    if isinstance(sign, dict) and sign.get("key") in PUBLISHED:
        return str(sign["key"])
    if isinstance(sign, dict) and sign.get("key") == "hmac":
        return "hmac"
    return None


def _payload(recipe: dict[str, Any], now: int, extra: dict[str, Any]) -> bytes:
    if "payload_b64" in recipe:
        return base64.b64decode(recipe["payload_b64"])
    if "payload" in recipe:
        return str(_subst(recipe["payload"], now)).encode()
    if "payload_token" in recipe:
        return token(recipe["payload_token"], now).encode()
    base = {"iss": ISS, "aud": AUD, "sub": "user-1", "iat": now, "exp": now + 300}
    claims = _merge(base, _subst(recipe.get("claims"), now))
    text = json.dumps({**claims, **extra}, separators=(",", ":"))
    return text.encode(recipe.get("payload_encoding", "utf-8"))


def _compact(recipe: dict[str, Any], now: int, extra: dict[str, Any]) -> str:
    sign = recipe.get("sign", {"key": "rsa", "alg": "RS256"})
    if "header_b64" in recipe:
        header = base64.b64decode(recipe["header_b64"])
    elif "header_json" in recipe:
        header = str(_subst(recipe["header_json"], now)).encode()
    else:
        alg = sign["alg"] if isinstance(sign, dict) else "none"
        base: dict[str, Any] = {"alg": alg, "typ": "JWT"}
        kid = _default_kid(sign)
        if kid is not None:
            base["kid"] = kid
        header = _json(_merge(base, _subst(recipe.get("header"), now)))
    signing_input = f"{b64(header)}.{b64(_payload(recipe, now, extra))}"
    sig = _signature(sign, signing_input.encode())
    return f"{signing_input}.{b64(sig)}"


def _sized(recipe: dict[str, Any], now: int, length: int) -> str:
    """Pad a `pad` claim (and a header-less one, `xp`) so the token is exactly `length`."""
    for head_pad in range(4):
        r = copy.deepcopy(recipe)
        if head_pad:
            r["header"] = {**(r.get("header") or {}), "xp": "x" * head_pad}
        base = len(_compact(r, now, {"pad": ""}))
        n = max(0, (length - base) * 3 // 4 - 3)
        while True:
            t = _compact(r, now, {"pad": "x" * n})
            if len(t) == length:
                return t
            if len(t) > length:
                break
            n += 1
    raise ValueError(f"cannot build a token of exactly {length} characters")


def _mutate(tok: str, ops: list[dict[str, Any]]) -> str:
    for op in ops:
        ((name, arg),) = op.items()
        parts = tok.split(".")
        if name == "truncate_signature":  # keep the first N bytes of the signature
            parts[2] = b64(unb64(parts[2])[: int(arg)])
        elif name == "empty_signature":
            parts[2] = ""
        elif name == "drop_signature":  # two segments: "h.p"
            parts = parts[:2]
        elif name == "flip_signature_bit":
            sig = bytearray(unb64(parts[2]))
            sig[-1] ^= 1
            parts[2] = b64(bytes(sig))
        elif name == "swap_signature":  # another token's signature (a recipe)
            parts[2] = token(arg, 0).split(".")[2]
        elif name == "pad_segment":  # {segment: i, text: "=="}
            parts[arg["segment"]] += arg["text"]
        elif name == "insert":  # {segment: i, at: k, text: " "}
            seg = parts[arg["segment"]]
            at = arg["at"] if arg["at"] >= 0 else len(seg) + arg["at"]
            parts[arg["segment"]] = seg[:at] + arg["text"] + seg[at:]
        elif name == "noncanonical_tail":  # same bytes, non-zero unused trailing bits
            parts[2] = parts[2][:-1] + chr(ord(parts[2][-1]) + 1)
        elif name == "standard_b64_signature":  # '+' and '/' instead of '-' and '_'
            parts[2] = base64.b64encode(unb64(parts[2])).decode().rstrip("=")
        elif name == "append":
            parts[-1] += arg
        elif name == "prepend":
            parts[0] = arg + parts[0]
        elif name == "extra_segments":  # append N empty segments
            parts += [""] * int(arg)
        else:
            raise ValueError(f"unknown mutation {name}")
        tok = ".".join(parts)
    return tok


def token(recipe: dict[str, Any] | str, now: int) -> str:
    if isinstance(recipe, str):
        return recipe
    if "raw" in recipe:
        tok = str(recipe["raw"]) * int(recipe.get("repeat", 1))
    elif "jwe" in recipe:
        spec = recipe["jwe"]
        inner = {k: v for k, v in recipe.items() if k not in ("jwe", "mutate")}
        # the plaintext is a signed JWS when the recipe says more than "encrypt claims"
        plaintext = token(inner, now).encode() if inner else _payload({}, now, {})
        tok = jwe.encrypt_compact(
            {"alg": spec["alg"], "enc": spec["enc"], "cty": "JWT", "kid": spec["key"]},
            plaintext,
            import_key(public_jwk(spec["key"]) | {"use": "enc", "alg": spec["alg"]}),
            algorithms=[spec["alg"], spec["enc"]],
        )
    elif "length" in recipe:
        tok = _sized(recipe, now, int(recipe["length"]))
    else:
        tok = _compact(recipe, now, {})
    return _mutate(tok, recipe.get("mutate", []))


# -- DPoP proofs ---------------------------------------------------------------------------

#: The proof algorithm of each client key type (and EC curve).
_PROOF_ALG = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512", "Ed25519": "EdDSA"}


def _key_alg(name: str) -> str:
    data = KEYS[name]
    if data["kty"] == "RSA":
        return "PS256"
    return _PROOF_ALG[data["crv"]]


def _with_extra(obj: dict[str, Any], extra: str | None, now: int) -> bytes:
    text = _json(obj)
    if not extra:
        return text
    more = str(_subst(extra, now)).encode()
    return text[:-1] + (b"," if len(text) > 2 else b"") + more + b"}"


def _proof_compact(recipe: dict[str, Any], now: int, ath: str, method: str, url: str,
                   pad: str = "") -> str:  # fmt: skip
    name = recipe.get("key", "dpop_ec")
    alg = recipe.get("alg") or _key_alg(name)
    base = {"typ": "dpop+jwt", "alg": alg, "jwk": dict(key(name).as_dict(private=False))}
    header = _merge(base, _subst(recipe.get("header"), now))
    head = _with_extra(header, recipe.get("header_extra"), now)
    if "payload_token" in recipe:
        payload = token(recipe["payload_token"], now).encode()
    else:
        claims = {"jti": uuid.uuid4().hex, "htm": method, "htu": url, "iat": now, "ath": ath}
        claims = _merge(claims, _subst(recipe.get("claims"), now))
        if pad:
            claims["pad"] = pad
        payload = _with_extra(claims, recipe.get("claims_extra"), now)
    signing_input = f"{b64(head)}.{b64(payload)}"
    sign = recipe.get("sign", {"key": name, "alg": alg})
    if isinstance(sign, dict) and "hex" in sign:
        signature = bytes.fromhex(sign["hex"])
    else:
        signature = _signature(sign, signing_input.encode())
    return f"{signing_input}.{b64(signature)}"


def proof(recipe: dict[str, Any], now: int, tok: str, method: str, url: str) -> str:
    """A DPoP proof for ``method url`` bound to the access token ``tok`` (see above)."""
    if "raw" in recipe:
        return _mutate(str(_subst(recipe["raw"], now)), recipe.get("mutate", []))
    if recipe.get("token"):
        return tok
    ath = b64(hashlib.sha256(tok.encode("ascii")).digest())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SecurityWarning)  # the RSA-1024 key signs too
        if "length" in recipe:
            out = _proof_sized(recipe, now, ath, method, url, int(recipe["length"]))
        else:
            out = _proof_compact(recipe, now, ath, method, url)
    return _mutate(out, recipe.get("mutate", []))


def _proof_sized(recipe: dict[str, Any], now: int, ath: str, method: str, url: str,
                 length: int) -> str:  # fmt: skip
    """Pad a ``pad`` claim (and an ``xp`` header member) to exactly ``length``."""
    for head_pad in range(4):
        r = copy.deepcopy(recipe)
        if head_pad:
            r["header"] = {**(r.get("header") or {}), "xp": "x" * head_pad}
        base = len(_proof_compact(r, now, ath, method, url))
        n = max(0, (length - base) * 3 // 4 - 24)
        while True:
            out = _proof_compact(r, now, ath, method, url, pad="x" * n)
            if len(out) == length:
                return out
            if len(out) > length:
                break
            n += 1
    raise ValueError(f"cannot build a proof of exactly {length} characters")


# -- requests ------------------------------------------------------------------------------


def request(case: dict[str, Any], now: int) -> tuple[str, str, dict[str, str]]:
    """(method, path, headers) for a case; headers use lower-case names."""
    spec = case.get("request") or {}
    path = spec.get("path", "/api/orders")
    headers: dict[str, str] = {}
    placed: list[tuple[str, str]] = []
    main = ""
    if "token" in case:
        main = token(case["token"], now)
        for where in spec.get("via", ["authorization"]):
            placed.append((where, main))
    host = spec.get("host", HOST)
    if "dpop" in spec:  # htu: the URL the client asked for, without the query
        recipe = spec["dpop"]
        url = f"http://{host}{path.partition('?')[0]}"
        method = spec.get("method", "GET")
        proofs = [proof(recipe, now, main, method, url) for _ in range(recipe.get("count", 1))]
        headers["dpop"] = ",".join(proofs)
    if "second" in spec:
        other = token(spec["second"]["token"], now)
        placed.append((spec["second"].get("via", "cookie"), other))
    query: list[str] = []
    cookies: list[str] = []
    authorization: list[str] = []
    for where, tok in placed:
        if where == "authorization":
            # Repeated Authorization headers reach extauthz joined by "," (Envoy joins
            # them so): build that joined value.
            default = "DPoP" if "dpop" in spec else "Bearer"
            authorization.append(f"{spec.get('scheme', default)} {tok}")
        elif where == "cookie":
            cookies.append(f"access_token={tok}")
        elif where == "query":
            query.append(f"access_token={quote(tok, safe='')}")
        else:
            raise ValueError(where)
    if authorization:
        headers["authorization"] = ",".join(authorization)
    if cookies:
        headers["cookie"] = "; ".join(cookies)
    if query:
        path += ("&" if "?" in path else "?") + "&".join(query)
    for name, value in (spec.get("headers") or {}).items():
        headers[name.lower()] = str(_subst(value, now))
    headers["host"] = host
    return spec.get("method", "GET"), path, headers
