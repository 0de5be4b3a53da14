"""RFC 7662 introspection answers: the cache that keeps them, and the rules they meet.

Pure: the call to the endpoint is :mod:`extauthz.introspection`'s. An answer is kept
by a digest of its token (never the token), until the sooner of its ``exp`` and
``cache_ttl`` from its arrival (an inactive one for ``negative_cache_ttl``), in a
bounded table: the longest a revoked token can still pass is ``cache_ttl``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import errors
from ..config import IntrospectionSettings, Provider
from .verify import Verified, check_claims


@dataclass(frozen=True, slots=True)
class Answer:
    """What the endpoint said: ``active``, and the answer's members as claims."""

    active: bool
    claims: Mapping[str, Any] = field(default_factory=dict, repr=False)


INACTIVE = Answer(False)


def kept_until(answer: Answer, settings: IntrospectionSettings, arrival: float) -> float:
    """When a cached answer stops being used: ``exp`` itself (no skew), at most
    ``cache_ttl`` after it arrived; ``negative_cache_ttl`` for an inactive one."""
    if not answer.active:
        return arrival + settings.negative_cache_ttl
    until = arrival + settings.cache_ttl
    exp = answer.claims.get("exp")
    if isinstance(exp, int | float) and not isinstance(exp, bool):
        try:
            exp = float(exp)
        except OverflowError:  # a 400-digit integer: the claim check refuses it anyway
            return until
        if math.isfinite(exp):
            until = min(until, exp)
    return until


class AnswerCache:
    """Answers by token digest, at most ``size``; the oldest entry goes first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[bytes, tuple[float, Answer]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes, now: float) -> Answer | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        until, answer = entry
        if now >= until:
            self._entries.pop(key, None)  # another thread may have gone first
            return None
        return answer

    def put(self, key: bytes, answer: Answer, until: float, now: float) -> None:
        if until <= now:
            return  # already past its time (an exp in the past): nothing to keep
        self._entries.pop(key, None)
        while len(self._entries) >= self.size:
            self._entries.popitem(last=False)
        self._entries[key] = (until, answer)


def verified(answer: Answer, name: str, provider: Provider, now: float) -> Verified:
    """An active answer held to the provider's rules, as a JWT's claims are (``iss``
    and ``exp`` only when present). Raises :class:`~extauthz.errors.Denied`."""
    if not answer.active:
        raise errors.InactiveToken().about(name, None, provider.issuer)
    try:
        not_after, not_before = check_claims(answer.claims, provider, now, introspected=True)
    except errors.Denied as exc:
        raise exc.about(name, None, provider.issuer) from None
    return Verified(name, answer.claims, None, "", not_after, not_before)
