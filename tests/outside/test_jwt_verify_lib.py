"""google/jwt_verify_lib's test vectors run through extauthz's decision code.

The data is ``jwt_verify_lib.json`` (verbatim string literals of that library's tests);
``cases.yaml`` pairs every token with the key material its C++ test uses, records what
jwt_verify_lib expects and what extauthz must answer under its own rules, once for the
literal token and once more for each re-signed variant (fresh ``exp``, the corpus's own
private key). See README.md.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
import yaml
from joserfc import jwk
from joserfc.errors import JoseError
from joserfc.jws import JWSRegistry

from extauthz import config
from extauthz.core.policy import Policy
from extauthz.core.request import AuthRequest
from extauthz.errors import JwksError
from extauthz.keys import jwks
from tests.support.answers import settled


@dataclass(frozen=True)
class Outcome:
    jwks_error: str | None  # why jwks.parse refused the whole document, else None
    usable_keys: int
    allowed: bool | None = None  # None when no token was decided
    reason: str | None = None


def extauthz(
    document: str,
    provider: Mapping[str, Any] | None = None,
    token: str | None = None,
    now: float = 0.0,
) -> Outcome:
    """Every call into extauthz is here (only this function changes if its API does).

    The key set is what ``jwks.parse`` makes of ``document`` (None when it refuses the
    document: the provider then has no usable keys). With a provider and a token, one
    ``Policy.decide`` on ``Authorization: Bearer <token>``; an unknown ``kid``
    (``NeedKeys``) is answered as after a refetch that did not find it.
    """
    try:
        keyset: jwks.KeySet | None = jwks.parse_keyset(document)
        error = None
    except JwksError as exc:
        keyset, error = None, str(exc)
    usable = len(keyset.keys) if keyset is not None else 0
    if provider is None or token is None:
        return Outcome(error, usable)
    try:
        inline = json.loads(document)
    except ValueError:
        inline = None
    # An inline `jwks:` is a mapping; text that is not JSON could only come from a
    # jwks_file. decide() never reads the key source: the key set is passed in.
    source = {"jwks": inline} if isinstance(inline, dict) else {"jwks_file": "not-json.jwks"}
    provider = {**provider, "issuer": as_url(provider["issuer"])}
    policy = Policy(config.from_mapping({"providers": {"outside": {**provider, **source}}}))
    request = AuthRequest(headers={"authorization": "Bearer " + token})
    decision = settled(policy.decide(request, lambda _name: keyset, now))
    return Outcome(error, usable, decision.allowed, decision.reason)


def as_url(issuer: str) -> str:
    """extauthz accepts only absolute URLs as issuers (``providers.<name>.issuer``); a
    case whose issuer is not one (``test_issuer``, a service account's e-mail address)
    is run against the URL an operator would have to configure instead. Its literal
    token still names the old issuer (refused as wrong_issuer); re-signed variants carry
    the URL (see ``token_of``), so they test what the case is about."""
    parts = urlsplit(issuer)
    if parts.scheme and parts.netloc:
        return issuer
    return "https://" + quote(issuer, safe="") + ".issuer.invalid"


# -- corpus and cases ---------------------------------------------------------------------

HERE = Path(__file__).parent
CORPUS: dict[str, Any] = json.loads((HERE / "jwt_verify_lib.json").read_text(encoding="utf-8"))
SPEC: dict[str, Any] = yaml.safe_load((HERE / "cases.yaml").read_text(encoding="utf-8"))
CASES: list[dict[str, Any]] = SPEC["cases"]
DOCUMENTS: list[dict[str, Any]] = SPEC["key_documents"]
VARIANTS = [(case, variant) for case in CASES for variant in case["variants"]]
STATUS = re.compile(r"^(Ok|Jwt[A-Za-z0-9]+|Jwks[A-Za-z0-9]+)$")  # jwt_verify_lib's Status
NOW = re.compile(r"^@now([+-]\d+)?$")


def b64d(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class UnreadablePem(Exception):
    """joserfc cannot read the PEM text as a public key."""


def pem_key(text: str) -> Any:
    """A PEM key read by joserfc as RSA, EC or OKP. Never without a key type: joserfc
    would take text it cannot parse as the raw bytes of an HMAC secret."""
    for kty in ("RSA", "EC", "OKP"):
        try:
            return jwk.import_key(text, kty)
        except (JoseError, ValueError, TypeError):
            continue
    raise UnreadablePem("not an RSA, EC or OKP key")


def pem_jwk(text: str) -> dict[str, Any]:
    """A PEM public key as a JWK (extauthz has no PEM source; joserfc converts)."""
    return dict(pem_key(text).as_dict(private=False))


def _drop_trailing_commas(text: str) -> str:
    return re.sub(r",(\s*[\]}])", r"\1", text)


def key_document(spec: Mapping[str, Any]) -> str:
    """The key material of a case as JWKS text, with the C++ test's edits applied."""
    if "jwks" in spec:
        text: str = CORPUS["jwks"][spec["jwks"]]["text"]
    else:
        text = json.dumps({"keys": [pem_jwk(CORPUS["pem"][spec["pem"]]["text"])]})
    if spec.get("repair") == "drop_trailing_commas":
        text = _drop_trailing_commas(text)
    edits = spec.get("edits", [])
    if edits:
        document = json.loads(text)
        for edit in edits:
            for key in document["keys"]:
                if all(key.get(k) == v for k, v in edit.get("where", {}).items()):
                    key.pop(edit.get("drop", ""), None)
                    key.update(edit.get("set", {}))
        text = json.dumps(document)
    return text


def signing_key(ref: str) -> Any:
    """``private_key:<name>``, ``secret:<jwks name>#<kid>`` (an oct JWK's k) or
    ``generated:Ed25519`` (a throw-away key nobody published)."""
    kind, _, name = ref.partition(":")
    if kind == "private_key":
        return pem_key(CORPUS["private_keys"][name]["pem"])
    if kind == "secret":
        doc, _, kid = name.partition("#")
        keys = json.loads(_drop_trailing_commas(CORPUS["jwks"][doc]["text"]))["keys"]
        return jwk.import_key(next(k for k in keys if k.get("kid") == kid))
    if kind == "generated" and name == "Ed25519":
        return jwk.OKPKey.generate_key("Ed25519")
    raise ValueError(f"unknown key reference {ref!r}")


def _value(value: Any, original: Any, now: int) -> Any:
    if isinstance(value, str) and (m := NOW.match(value)):
        return now + int(m.group(1) or 0)
    return original if value == "@keep" else value


def _override(members: dict[str, Any], changes: Mapping[str, Any], now: int) -> dict[str, Any]:
    out = dict(members)
    for name, value in changes.items():
        new = _value(value, members.get(name), now)
        if new is None:
            out.pop(name, None)
        else:
            out[name] = new
    return out


def token_of(case: Mapping[str, Any], variant: Mapping[str, Any], now: int) -> str:
    """The corpus token, or the same header and claims re-signed (fresh exp, iat now)."""
    literal: str = CORPUS["tokens"][case["token"]]["value"]
    if "sign" not in variant:
        return literal
    head, payload, _ = literal.split(".")
    header = _override(json.loads(b64d(head)), variant.get("header", {}), now)
    fresh = {"exp": "@now+300", "iat": "@now", **variant.get("claims", {})}
    claims = _override(json.loads(b64d(payload)), fresh, now)
    if claims.get("iss") == case["provider"]["issuer"]:
        claims["iss"] = as_url(claims["iss"])
    signing_input = ".".join(
        b64e(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
    )
    model = JWSRegistry.algorithms[header["alg"]]
    signature = bytearray(model.sign(signing_input.encode(), signing_key(variant["sign"])))
    tamper = variant.get("tamper")
    if tamper == "flip_signature_bit":
        signature[len(signature) // 2] ^= 0x01
    elif tamper == "truncate_signature":
        del signature[-1]
    elif tamper is not None:
        raise ValueError(f"unknown tamper {tamper!r}")
    return signing_input + "." + b64e(bytes(signature))


def expected(expect: Mapping[str, Any], now: float) -> Mapping[str, Any]:
    """A literal token valid until ``until`` (exp + clock skew) is refused after it."""
    if "until" in expect and now >= expect["until"]:
        return {**expect, **expect["then"]}
    return expect


def _params() -> list[Any]:
    params = []
    for case, variant in VARIANTS:
        bug = variant["expect"].get("bug")
        marks = [pytest.mark.xfail(strict=True, reason=bug)] if bug else []
        params.append(
            pytest.param(case, variant, id=f"{case['id']}:{variant['name']}", marks=marks)
        )
    return params


# -- the corpus, case by case -------------------------------------------------------------


@pytest.mark.parametrize(("case", "variant"), _params())
def test_case(case: dict[str, Any], variant: dict[str, Any]) -> None:
    now = int(time.time())
    token = token_of(case, variant, now)
    got = extauthz(key_document(variant.get("keys", case["keys"])), case["provider"], token, now)
    want = expected(variant["expect"], now)
    assert (got.allowed, got.reason) == (want["allowed"], want["reason"]), want["why"]
    assert (got.jwks_error is not None) == want.get("jwks_refused", False), got.jwks_error


@pytest.mark.filterwarnings("ignore:DSA is deprecated")  # PemDsaUnimplimented
@pytest.mark.parametrize("doc", DOCUMENTS, ids=[d["id"] for d in DOCUMENTS])
def test_key_document(doc: dict[str, Any]) -> None:
    """jwks_test.cc's documents: what jwks.parse keeps of each (extauthz skips bad keys
    one by one; jwt_verify_lib fails the whole document on the first bad key)."""
    want = doc["expect"]
    try:
        text = key_document(doc["keys"])
    except UnreadablePem as exc:
        assert want.get("unreadable_pem"), f"joserfc cannot read the PEM: {exc}"
        return
    assert not want.get("unreadable_pem"), "the PEM was readable"
    got = extauthz(text)
    assert got.usable_keys == want["usable"], (want["why"], got.jwks_error)
    assert (got.jwks_error is not None) == (want["usable"] == 0)


# -- the cases file itself ----------------------------------------------------------------


def _references(cases: list[dict[str, Any]], field: str) -> set[str]:
    refs = set()
    for item in [*cases, *(v for c in cases for v in c.get("variants", []))]:
        spec = item.get("keys")
        if isinstance(spec, dict) and field in spec:
            refs.add(spec[field])
    return refs


def test_every_corpus_token_has_a_case() -> None:
    missing = set(CORPUS["tokens"]) - {c["token"] for c in CASES}
    assert not missing, f"corpus tokens without a case: {sorted(missing)}"


def test_every_key_document_and_private_key_is_used() -> None:
    everything = [*CASES, *DOCUMENTS]
    assert not set(CORPUS["jwks"]) - _references(everything, "jwks")
    assert not set(CORPUS["pem"]) - _references(everything, "pem")
    signers = {v["sign"] for _, v in VARIANTS if "sign" in v}
    used = {s.partition(":")[2] for s in signers if s.startswith("private_key:")}
    assert not set(CORPUS["private_keys"]) - used


def test_cases_are_well_formed() -> None:
    ids = [c["id"] for c in CASES] + [d["id"] for d in DOCUMENTS]
    assert len(ids) == len(set(ids)), "duplicate ids"
    everything = [*CASES, *DOCUMENTS]
    assert _references(everything, "jwks") <= set(CORPUS["jwks"])
    assert _references(everything, "pem") <= set(CORPUS["pem"])
    for case in CASES:
        assert set(case) <= {"id", "token", "keys", "provider", "jwt_verify_lib", "variants"}
        assert case["token"] in CORPUS["tokens"], case["id"]
        lib = case["jwt_verify_lib"]
        assert lib["test"].startswith("test/") and ".cc " in lib["test"], case["id"]
        if lib["status"] is None:
            assert lib.get("note"), f"{case['id']}: a case without a status needs a note"
        else:
            assert STATUS.match(lib["status"]), case["id"]
        names = [v["name"] for v in case["variants"]]
        assert names[0] == "literal" and "sign" not in case["variants"][0], case["id"]
        assert len(names) == len(set(names)), case["id"]
        for variant in case["variants"]:
            expect = variant["expect"]
            assert isinstance(expect["allowed"], bool) and expect["reason"], case["id"]
            assert expect["allowed"] == (expect["reason"] == "ok"), case["id"]
            assert expect.get("why"), case["id"]
    for doc in DOCUMENTS:
        assert STATUS.match(doc["jwt_verify_lib"]["status"]), doc["id"]
        assert doc["expect"].get("why"), doc["id"]
