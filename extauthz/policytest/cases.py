"""The requests file of ``extauthz test-config``: a table of requests, each with the
answer it should get, validated up front like a configuration — every problem named
by its key path (``cases.2.expect.status``), unknown keys refused.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    JsonValue,
    PlainValidator,
    Tag,
    ValidationError,
)

from .. import config
from ..errors import ConfigError, RequestsFileError

#: The statuses a decision can have (``frontdoor.grpc.ANSWERS`` and 200).
Status = Literal[200, 400, 401, 403, 503]
#: The algorithms the dev issuer signs with (``extauthz.dev.issuer.ALGORITHMS``).
SigningAlg = Literal["EdDSA", "RS256", "ES256"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _frozen(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(value))


def _header_expectation(value: object) -> str | bool | None:
    if value is None or value is True or isinstance(value, str):
        return value
    raise ValueError(
        "expected the header's value (text), true (set to any value) or null (not set)"
    )


def _introspection_answer(value: Mapping[str, Any]) -> Mapping[str, Any]:
    if not isinstance(value.get("active"), bool):
        raise ValueError("an introspection answer needs active: true or false")
    return MappingProxyType(dict(value))


HeaderExpectation = Annotated[str | bool | None, PlainValidator(_header_expectation)]
JsonMap = Annotated[Mapping[str, JsonValue], AfterValidator(_frozen)]


class Minted(_Model):
    """A JWT the dev issuer signs for one provider, with that provider's issuer and
    first audience; ``claims`` are added last (null leaves a claim out)."""

    provider: str | None = Field(default=None, min_length=1)
    claims: JsonMap = Field(default_factory=lambda: MappingProxyType({}))
    alg: SigningAlg | None = None  # default: the first the provider accepts
    typ: str | None = Field(default=None, min_length=1)  # default: require_typ, else JWT
    lifetime: config.Duration | None = None  # default: 5m, at most max_lifetime
    expired: bool = False  # exp just past the provider's clock skew
    dpop: bool = False  # bound to a DPoP key, sent as Authorization: DPoP with a proof


def _token_kind(value: object) -> str | None:
    if isinstance(value, str):
        return "literal"
    return "minted" if isinstance(value, Mapping | Minted) else None


#: The tags of the token union, which pydantic puts in an error's location.
_TOKEN_TAGS = ("literal", "minted")

_NOT_A_TOKEN = "not_a_token"

TokenSpec = Annotated[
    Annotated[str, Tag("literal")] | Annotated[Minted, Tag("minted")],
    Discriminator(
        _token_kind,
        custom_error_type=_NOT_A_TOKEN,
        custom_error_message="expected a token (text) or what to mint (a mapping: provider, "
        "claims…)",
    ),
]


class Expect(_Model):
    status: Status | None = None
    reason: str | None = Field(default=None, min_length=1)
    rule: str | None = Field(default=None, min_length=1)
    headers: Mapping[config.HeaderName, HeaderExpectation] = Field(
        default_factory=lambda: MappingProxyType({})
    )

    def empty(self) -> bool:
        return (self.status, self.reason, self.rule) == (None, None, None) and not self.headers


class Case(_Model):
    name: str = Field(min_length=1)
    method: str = Field(default="GET", min_length=1)
    host: str = ""
    path: str = Field(min_length=1)  # with the query string, as Envoy sends it
    headers: Mapping[config.HeaderName, str] = Field(default_factory=lambda: MappingProxyType({}))
    context_extensions: Mapping[str, str] = Field(default_factory=lambda: MappingProxyType({}))
    token: TokenSpec | None = None
    # Where the token goes; the shape of a token_sources entry.
    token_in: config.TokenSource | None = None
    # The introspection endpoint's answer for an opaque (literal) token.
    introspection: Annotated[JsonMap, AfterValidator(_introspection_answer)] | None = None
    expect: Expect


class CaseFile(_Model):
    cases: tuple[Case, ...] = Field(min_length=1)


def _path(loc: tuple[int | str, ...]) -> str:
    parts = [
        str(part)
        for i, part in enumerate(loc)
        if not (i and loc[i - 1] == "token" and part in _TOKEN_TAGS)
    ]
    return ".".join(parts)


def from_mapping(data: object) -> CaseFile:
    """Validate a parsed requests file's keys and types (:func:`problems` checks across
    keys). Raises RequestsFileError with every problem."""
    if not isinstance(data, Mapping):
        raise RequestsFileError([("", "the requests file must be a YAML mapping with 'cases:'")])
    try:
        table = CaseFile.model_validate(data)
    except ValidationError as exc:
        found = {
            (_path(e["loc"]), e["msg"] if e["type"] == _NOT_A_TOKEN else config.error_message(e))
            for e in exc.errors()
        }
        raise RequestsFileError(in_order(found)) from None
    return table


def in_order(found: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Problems by key path, case numbers in numeric order (``cases.2`` before ``cases.10``)."""

    def key(problem: tuple[str, str]) -> list[tuple[int, str]]:
        return [(int(p), "") if p.isdigit() else (-1, p) for p in problem[0].split(".")]

    return sorted(found, key=key)


def problems(table: CaseFile) -> list[tuple[str, str]]:
    """(key path, message) for checks across keys of a valid file."""
    found: list[tuple[str, str]] = []
    seen: set[str] = set()
    for i, case in enumerate(table.cases):
        where = f"cases.{i}"
        if case.name in seen:
            found.append((f"{where}.name", f"duplicate case name {case.name!r}"))
        seen.add(case.name)
        if case.expect.empty():
            found.append(
                (f"{where}.expect", "give at least one of status, reason, rule, headers: "
                                    "a case that expects nothing cannot fail")
            )  # fmt: skip
        found += [(f"{where}.{key}", message) for key, message in _case_problems(case)]
    return found


def _case_problems(case: Case) -> list[tuple[str, str]]:
    """(key under the case, message) for checks across a case's keys."""
    found: list[tuple[str, str]] = []
    if case.token_in is not None and case.token is None:
        found.append(("token_in", "says where the token goes, but the case has no token"))
    if isinstance(case.token, Minted):
        if case.introspection is not None:
            found.append(
                ("introspection", "a minted token is a JWT, which is verified, never "
                                  "introspected: give a literal (opaque) token")
            )  # fmt: skip
        if case.token.dpop and case.token_in is not None:
            found.append(("token_in", "a DPoP token goes in Authorization: DPoP; leave it out"))
    return found


def load(path: str | os.PathLike[str]) -> CaseFile:
    """Read and validate a requests file. Raises RequestsFileError."""
    try:
        data = config.read_yaml(path)
    except ConfigError as exc:
        raise RequestsFileError(exc.problems) from None
    return from_mapping(data)
