"""What a refused client is told, the same through every front door: the RFC 6750
``WWW-Authenticate`` challenge (with RFC 9728 ``resource_metadata`` when the provider
names one) and the JSON body. Each front door decides, in its own table, which
status and which OAuth error a deny kind gets; this module only renders them."""

from __future__ import annotations

import json


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def www_authenticate(
    realm: str,
    error: str | None,
    description: str,
    scope: str,
    resource_metadata: str = "",
) -> str:
    """RFC 6750 §3: no error attributes when the request carried no credentials; RFC 9728
    §5.1: ``resource_metadata`` on every challenge of a provider that publishes one."""
    parts = [f'Bearer realm="{_quote(realm)}"']
    if error is not None:
        parts.append(f'error="{error}"')
        if description:
            parts.append(f'error_description="{_quote(description)}"')
        if scope:
            parts.append(f'scope="{_quote(scope)}"')
    if resource_metadata:
        parts.append(f'resource_metadata="{_quote(resource_metadata)}"')
    return ", ".join(parts)


def body(error: str, description: str) -> str:
    """``{"error": "...", "error_description": "..."}``: coarse, never the token."""
    out = {"error": error}
    if description:
        out["error_description"] = description
    return json.dumps(out)
