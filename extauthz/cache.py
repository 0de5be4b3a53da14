"""Verified-token cache: a hit skips signature verification only.

Bounded (oldest entries evicted first), O(1). Everything except the signature is
re-checked on every hit by the caller (``verify.check_claims`` against ``now``, then the
rule's scopes and claims), an entry is never used after its ``exp`` plus skew, and an
entry whose key has left the provider's JWKS is ignored on lookup and purged at the
swap, so a revoked key stops working for cached tokens too.
Keys are a 128-bit BLAKE2b digest of the token, so the cache never holds tokens.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection

from . import metrics
from .verify import Verified

_HIT = metrics.TOKEN_CACHE.labels("hit")
_MISS = metrics.TOKEN_CACHE.labels("miss")


def digest(token: str) -> bytes:
    return hashlib.blake2b(token.encode(), digest_size=16).digest()


class TokenCache:
    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: dict[bytes, Verified] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> Verified | None:
        hit = self._entries.get(key)
        (_HIT if hit is not None else _MISS).inc()
        return hit

    def drop(self, key: bytes) -> None:
        self._entries.pop(key, None)

    def put(self, key: bytes, verified: Verified) -> None:
        entries = self._entries
        if len(entries) >= self.size:
            # dicts keep insertion order: drop the oldest entry (FIFO bound, O(1)).
            del entries[next(iter(entries))]
        entries[key] = verified

    def purge(self, provider: str, keep: Collection[str]) -> int:
        """Drop entries of ``provider`` verified by a key not in ``keep``."""
        gone = [
            k
            for k, v in self._entries.items()
            if v.provider == provider and v.thumbprint not in keep
        ]
        for k in gone:
            del self._entries[k]
        return len(gone)
