"""State that gRPC pool threads and the event loop share, hammered from many threads.

The interpreter is told to switch threads as often as it can, so an unguarded
multi-step update (a ring slot, an eviction, a check-and-set) would interleave.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator

import pytest

from extauthz.core.cache import Entry, TokenCache, digest
from extauthz.core.memo import Memo
from extauthz.replay import MemoryReplayStore

THREADS = 8


@pytest.fixture(autouse=True)
def eager_switching() -> Iterator[None]:
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def together(work: Callable[[int], None]) -> None:
    """Run ``work(n)`` on THREADS threads released at once; re-raise the first failure."""
    start = threading.Barrier(THREADS)
    failures: list[BaseException] = []

    def run(n: int) -> None:
        start.wait()
        try:
            work(n)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures, failures[0]


def test_a_cached_token_never_reads_another_tokens_facts() -> None:
    # A small ring, overwritten constantly: each token's entry names it, so a reader
    # that paired one token's slot with another's facts would see a foreign name.
    cache = TokenCache(16)

    def work(n: int) -> None:
        for i in range(3000):
            name = f"t{n}-{i % 40}"
            key = digest(name)
            cache.put(key, Entry(name, name, None, float(i), 0.0))
            found = cache.get(key)
            if found is not None:
                assert found.provider == found.thumbprint == name
            if i % 97 == 0:
                cache.purge(name, ())

    together(work)
    assert len(cache) <= 16


def test_a_memo_stays_bounded_and_consistent_under_writers() -> None:
    memo: Memo[str, str] = Memo(8)

    def work(n: int) -> None:
        for i in range(3000):
            key = f"{n}-{i % 30}"
            memo.put(key, key)
            got = memo.get(key)
            assert got is None or got == key
            if i % 50 == 0:
                memo.drop_where(lambda v: v.startswith(f"{n}-"))

    together(work)
    assert len(memo) <= 8


def test_a_dpop_proof_is_claimed_once_when_many_threads_race_for_it() -> None:
    store = MemoryReplayStore()
    wins: list[str] = []

    def work(n: int) -> None:
        for i in range(500):
            if store.claim_now(f"jti-{i}", 60.0):
                wins.append(f"jti-{i}")

    together(work)
    assert sorted(wins) == sorted(f"jti-{i}" for i in range(500))
