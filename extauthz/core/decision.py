"""What was decided about one request: allow, with upstream changes, or a deny kind.

A ``Decision`` is wire-free: each front door maps ``deny`` (a :class:`DenyKind`) to
its own status code and headers, and renders ``set_headers``/``remove_headers``/
``remove_query``/``metadata`` in its protocol.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import Denied, DenyKind, UnknownKey


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str  # bounded: a metrics label and a log field
    rule: str = ""
    provider: str = ""
    deny: DenyKind | None = None  # set exactly when not allowed
    description: str = ""  # coarse and token-free; shown to the client on a deny
    scope: str = ""  # the scopes an insufficient_scope deny asks for
    # RFC 9728: where the refused client finds the protected resource's metadata.
    resource_metadata: str = ""
    # RFC 9449 §7.1: the challenges of a 401/403: Bearer, DPoP (with these `algs`), or
    # both; `dpop` says the request used the DPoP scheme (the error goes on that one).
    bearer: bool = True
    dpop_algs: tuple[str, ...] = ()
    dpop: bool = False
    # An allow that still needs its DPoP proof's jti claimed: (replay key, seconds).
    replay: tuple[str, float] | None = None
    set_headers: tuple[tuple[str, str], ...] = ()
    remove_headers: tuple[str, ...] = ()
    remove_query: tuple[str, ...] = ()  # query parameters removed before proxying
    metadata: Mapping[str, Any] | None = field(default=None, repr=False)
    # Equal keys mean equal allows (same token, rule and source under one policy): a
    # front door may reuse its encoding. None when the answer depends on more.
    reuse_key: Hashable | None = field(default=None, repr=False, compare=False)
    # For logs only (never a token or the claim set):
    kid: str | None = None
    iss: str | None = None
    sub: str | None = None


@dataclass(frozen=True, slots=True)
class NeedKeys:
    """The token names a ``kid`` its provider's key set lacks: a refetch may find it.

    ``decide`` returns this instead of a decision; the caller may refetch once and
    decide again, or answer :func:`unknown_key`.
    """

    provider: str
    rule: str
    kid: str | None
    iss: str | None
    dpop: bool = False  # the request used the DPoP scheme


@dataclass(frozen=True, slots=True)
class NeedIntrospection:
    """An opaque token without a cached answer: the caller asks ``provider``'s endpoint
    (one call in flight per token) and decides again."""

    provider: str
    rule: str
    token: str = field(repr=False)
    dpop: bool = False


def refuse(exc: Denied, **fields: Any) -> Decision:
    """The decision for a refusal."""
    return Decision(
        allowed=False,
        reason=exc.reason,
        deny=exc.kind,
        description=exc.description,
        scope=getattr(exc, "scope", ""),
        **fields,
    )


def unknown_key(need: NeedKeys) -> Decision:
    """The refusal once a refetch could not produce the token's kid."""
    return refuse(
        UnknownKey(),
        rule=need.rule,
        provider=need.provider,
        kid=need.kid,
        iss=need.iss,
        dpop=need.dpop,
    )
