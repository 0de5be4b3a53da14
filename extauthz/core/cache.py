"""Verified-token cache: a hit skips signature verification only.

An entry records only what the signature check established — which provider and key
verified the token and its validity window — keyed by a 128-bit BLAKE2b digest of the
token, so the cache never holds a token or a claim set (about 130 bytes an entry).
On a hit the claims are read again from the request's own token (its digest matched,
so it is byte for byte the verified one), the window is checked against ``now``, and
the rule runs as usual. An entry whose key has left the provider's JWKS is ignored on
lookup and purged at the swap, so a revoked key stops working for cached tokens too.

Bounded: writing into a full cache overwrites its oldest entry (O(1)). Shared by
gRPC pool threads and the event loop: every access takes the lock, since a slot is
several fields and a reader must never see one token's key with another's facts.
"""

from __future__ import annotations

import hashlib
import threading
from array import array
from collections.abc import Collection
from typing import NamedTuple

from .. import metrics

_HIT = metrics.TOKEN_CACHE.labels("hit")
_MISS = metrics.TOKEN_CACHE.labels("miss")


def digest(token: str) -> bytes:
    return hashlib.blake2b(token.encode(), digest_size=16).digest()


class Entry(NamedTuple):
    provider: str
    thumbprint: str
    kid: str | None
    not_after: float
    not_before: float


class TokenCache:
    """A ring of ``size`` slots: digest -> slot index, with the per-slot facts in flat
    arrays (two doubles and one shared key reference a slot) — about 130 bytes an
    entry, so 100k cached tokens cost some 13 MB. Writing into a full ring overwrites
    the oldest slot."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._slot: dict[bytes, int] = {}
        self._keys: list[bytes | None] = [None] * size
        self._refs: list[tuple[str, str, str | None] | None] = [None] * size
        self._after = array("d", bytes(8 * size))
        self._before = array("d", bytes(8 * size))
        self._next = 0
        self._interned: dict[tuple[str, str, str | None], tuple[str, str, str | None]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._slot)

    def get(self, key: bytes) -> Entry | None:
        with self._lock:
            i = self._slot.get(key)
            if i is not None:
                ref = self._refs[i]
                assert ref is not None
                found = Entry(ref[0], ref[1], ref[2], self._after[i], self._before[i])
        if i is None:
            _MISS.inc()
            return None
        _HIT.inc()
        return found

    def drop(self, key: bytes) -> None:
        with self._lock:
            self._drop(key)

    def _drop(self, key: bytes) -> None:
        i = self._slot.pop(key, None)
        if i is not None:
            self._keys[i] = None
            self._refs[i] = None

    def put(self, key: bytes, entry: Entry) -> None:
        with self._lock:
            self._put(key, entry)

    def _put(self, key: bytes, entry: Entry) -> None:
        i = self._slot.get(key)
        if i is None:
            i = self._next
            self._next = (i + 1) % self.size
            old = self._keys[i]
            if old is not None:
                del self._slot[old]
            self._slot[key] = i
            self._keys[i] = key
        ref = (entry.provider, entry.thumbprint, entry.kid)
        self._refs[i] = self._interned.setdefault(ref, ref)  # one object per key, shared
        self._after[i] = entry.not_after
        self._before[i] = entry.not_before

    def purge(self, provider: str, keep: Collection[str]) -> int:
        """Drop entries of ``provider`` verified by a key not in ``keep``."""
        with self._lock:
            return self._purge(provider, keep)

    def _purge(self, provider: str, keep: Collection[str]) -> int:
        gone = []
        for key, i in self._slot.items():
            ref = self._refs[i]
            if ref is not None and ref[0] == provider and ref[1] not in keep:
                gone.append(key)
        for key in gone:
            self._drop(key)
        if gone:
            self._interned = {
                r: r for r in self._interned.values() if r[1] in keep or r[0] != provider
            }
        return len(gone)
