"""The pool that runs gRPC calls (extauthz.server.pool): alone, and under a real
grpcio server."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from extauthz.server.pool import Pool

DEADLINE = 30.0


@pytest.fixture
def pool() -> Iterator[Pool]:
    p = Pool(4, "test")
    try:
        yield p
    finally:
        p.shutdown()


def _until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def _count(into: list[int], n: int) -> Any:
    def callback(_: futures.Future[Any]) -> None:
        into.append(n)

    return callback


def test_each_call_runs_on_a_pool_thread_and_each_callback_runs_once(pool: Pool) -> None:
    # Callbacks are added after submit, as grpcio does: many calls finish first, and
    # their callbacks must still run (at once), exactly once each.
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    ran: list[tuple[int, str]] = []
    called: list[int] = []
    lock = threading.Lock()

    def call(n: int) -> None:
        with lock:
            ran.append((n, threading.current_thread().name))

    try:
        for n in range(2000):
            task = pool.submit(call, n)
            task.add_done_callback(_count(called, n))
        _until(lambda: len(called) == 2000, "every callback")
    finally:
        sys.setswitchinterval(before)
    assert sorted(n for n, _ in ran) == list(range(2000))
    assert sorted(called) == list(range(2000))
    assert {name for _, name in ran} <= {f"test_{i}" for i in range(4)}


def test_a_failing_call_or_callback_does_not_take_a_thread_down() -> None:
    pool = Pool(1, "one")  # one thread: if it died, nothing after would run
    try:

        def boom() -> None:
            raise ValueError("a handler bug")

        done = threading.Event()
        task = pool.submit(boom)
        task.add_done_callback(lambda _: done.set())
        task.add_done_callback(lambda _: 1 / 0)
        assert done.wait(DEADLINE)
        _until(task.done, "the failed call's task to be done")
        after = threading.Event()
        pool.submit(after.set)
        assert after.wait(DEADLINE)
    finally:
        pool.shutdown()


def test_shutdown_ends_every_thread_and_refuses_new_calls() -> None:
    pool = Pool(3, "gone")
    threads = [t for t in threading.enumerate() if t.name.startswith("gone_")]
    assert len(threads) == 3
    pool.shutdown(wait=True)
    assert not any(t.is_alive() for t in threads)
    with pytest.raises(RuntimeError):
        pool.submit(print)


def test_a_task_says_what_it_cannot_do(pool: Pool) -> None:
    with pytest.raises(TypeError):
        pool.submit(print, end="")
    task = pool.submit(time.sleep, 0)
    assert not task.cancel() and not task.cancelled()
    with pytest.raises(NotImplementedError):
        task.result()
    with pytest.raises(NotImplementedError):
        task.running()


def test_a_grpc_server_on_the_pool_runs_calls_side_by_side() -> None:
    # Four calls that each wait for all four to have arrived: they complete only if the
    # pool runs them at the same time, on its four threads.
    arrived = threading.Barrier(4, timeout=DEADLINE)

    def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
        arrived.wait()
        return request + threading.current_thread().name.encode()

    handler = grpc.unary_unary_rpc_method_handler(
        echo, request_deserializer=bytes, response_serializer=bytes
    )
    pool = Pool(4, "grpc")
    server = grpc.server(pool)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("t.Echo", {"Call": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/t.Echo/Call")
            with futures.ThreadPoolExecutor(4) as clients:
                answers = list(clients.map(lambda i: call(b"%d:" % i, timeout=DEADLINE), range(4)))
    finally:
        server.stop(None).wait()
        pool.shutdown()
    assert [a.split(b":")[0] for a in answers] == [b"0", b"1", b"2", b"3"]
    assert {a.split(b":")[1] for a in answers} == {b"grpc_0", b"grpc_1", b"grpc_2", b"grpc_3"}
