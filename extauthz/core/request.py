"""What a front door extracts from a protocol's request (no protocol types here)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

#: The context_extensions key (Envoy, per route) that names the rule to apply.
CONTEXT_RULE_KEY = "extauthz_rule"


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """The attributes of the request being authorized (the original one, not the
    front door's own call)."""

    method: str = "GET"
    scheme: str = ""  # "http" or "https" when the front door knows it
    host: str = ""
    path: str = "/"  # including the query string (Envoy leaves http.query empty)
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names
    context_extensions: Mapping[str, str] = field(default_factory=dict)

    @property
    def request_id(self) -> str | None:
        return self.headers.get("x-request-id")
