"""Claims rendered as identity headers for the upstream, never altered on the way."""

from __future__ import annotations

import json
import re
from typing import Any

from ..errors import UnsafeHeaderValue

_CTRL = re.compile(r"[\x00-\x1f\x7f]")


def _joinable(value: list[Any]) -> bool:
    """A list that joined by spaces can be split back into the same list."""
    return all(
        (isinstance(v, str) and v and " " not in v)
        or (isinstance(v, int | float) and not isinstance(v, bool))
        for v in value
    )


def header_value(value: Any) -> str:
    """Render a claim for an identity header, or raise UnsafeHeaderValue.

    Strings and numbers as they are; a list of space-free strings and numbers joined
    by single spaces (like ``scope``); anything else as compact JSON (control characters
    escaped). Never lossy: a value with a control character, or with leading or trailing
    whitespace (which HTTP trims), is refused rather than stripped, so two different
    string identities can never reach the upstream as one header value.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = value
    elif isinstance(value, int | float):
        text = json.dumps(value)
    elif isinstance(value, list) and _joinable(value):
        text = " ".join(v if isinstance(v, str) else json.dumps(v) for v in value)
    else:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=True)
    if _CTRL.search(text) or text != text.strip(" \t"):
        raise UnsafeHeaderValue()
    return text
