"""What a refused client is told, the same through every front door: the RFC 6750
``WWW-Authenticate`` challenge (with RFC 9728 ``resource_metadata`` when the provider
names one) and the JSON body. Each front door decides, in its own table, which
status and which OAuth error a deny kind gets; this module only renders them."""

from __future__ import annotations

import json

from ..errors import DenyKind


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _challenge(
    scheme: str,
    realm: str,
    error: str | None,
    description: str,
    scope: str,
    resource_metadata: str,
    algs: str = "",
) -> str:
    parts = [f'{scheme} realm="{_quote(realm)}"']
    if error is not None:
        parts.append(f'error="{error}"')
        if description:
            parts.append(f'error_description="{_quote(description)}"')
        if scope:
            parts.append(f'scope="{_quote(scope)}"')
    if algs:
        parts.append(f'algs="{algs}"')
    if resource_metadata:
        parts.append(f'resource_metadata="{_quote(resource_metadata)}"')
    return ", ".join(parts)


def www_authenticate(
    realm: str,
    error: str | None,
    description: str,
    scope: str,
    resource_metadata: str = "",
    *,
    bearer: bool = True,
    dpop_algs: tuple[str, ...] = (),
    error_on_dpop: bool = False,
) -> str:
    """The challenge(s) of a 401/403, in one header value.

    RFC 6750 §3: no error attributes when the request carried no credentials. RFC 9449
    §7.1: a ``DPoP`` challenge (with ``algs``) when the resource accepts DPoP; when it
    accepts both schemes both challenges go out, the error on the scheme the request
    used. RFC 9728 §5.1: ``resource_metadata`` on every challenge when there is some.
    """
    challenges = []
    dpop_error = bool(dpop_algs) and (error_on_dpop or not bearer)
    if bearer or not dpop_algs:
        challenges.append(
            _challenge(
                "Bearer",
                realm,
                None if dpop_error else error,
                description,
                scope,
                resource_metadata,
            )
        )
    if dpop_algs:
        challenges.append(
            _challenge(
                "DPoP",
                realm,
                error if dpop_error else None,
                description,
                scope,
                resource_metadata,
                " ".join(dpop_algs),
            )
        )
    return ", ".join(challenges)


def refusal(
    realm: str,
    kind: DenyKind,
    oauth_error: str | None,
    challenged: bool,
    description: str,
    scope: str,
    reason: str,
    resource_metadata: str,
    bearer: bool = True,
    dpop_algs: tuple[str, ...] = (),
    dpop: bool = False,
) -> tuple[list[tuple[str, str]], str]:
    """A refusal's headers — its content type, then the challenge, or ``retry-after``
    when no challenge applies (a 503) — and its JSON body. ``oauth_error`` and
    ``challenged`` come from the front door's own table."""
    headers = [("content-type", "application/json")]
    if challenged:
        value = www_authenticate(
            realm, oauth_error, description, scope, resource_metadata,
            bearer=bearer, dpop_algs=dpop_algs,
            error_on_dpop=dpop or kind is DenyKind.INVALID_DPOP_PROOF,
        )  # fmt: skip
        headers.append(("www-authenticate", value))
    else:
        headers.append(("retry-after", "1"))
    return headers, body(oauth_error or reason, description)


def body(error: str, description: str) -> str:
    """``{"error": "...", "error_description": "..."}``: coarse, never the token."""
    out = {"error": error}
    if description:
        out["error_description"] = description
    return json.dumps(out)
