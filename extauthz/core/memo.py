"""A bounded map of the hottest answers, shared by request threads.

gRPC requests are decided on grpcio's pool threads while the HTTP door and key
rotation run on the event loop, so every writer takes the lock: evicting the oldest
entry is several steps, and two writers interleaving them could raise or, in a map
from token to answer, pair one token with another's answer. Lookups take no lock: a
single ``dict.get`` is atomic, and every stored value is immutable.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Memo(Generic[K, V]):
    """At most ``size`` entries; writing into a full memo drops its oldest entry."""

    __slots__ = ("_items", "_lock", "get", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: dict[K, V] = {}
        self._lock = threading.Lock()
        self.get: Callable[[K], V | None] = self._items.get

    def __len__(self) -> int:
        return len(self._items)

    def put(self, key: K, value: V) -> None:
        with self._lock:
            items = self._items
            if key not in items and len(items) >= self.size:
                del items[next(iter(items))]  # oldest first (dicts keep order)
            items[key] = value

    def drop(self, key: K) -> None:
        with self._lock:
            self._items.pop(key, None)

    def drop_where(self, gone: Callable[[V], bool]) -> None:
        """Drop every entry whose value ``gone`` picks."""
        with self._lock:
            for key in [k for k, v in self._items.items() if gone(v)]:
                del self._items[key]
