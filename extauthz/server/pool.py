"""The threads that run gRPC calls: just what grpcio's synchronous server uses of an
executor (``submit``, the returned future's ``add_done_callback``, ``shutdown``).

``concurrent.futures.ThreadPoolExecutor`` does per task what this server never needs:
two locks on ``submit``, a ``Condition`` per future taken three times, a Python-level
idle semaphore acquired and released around every task. That is microseconds on every
Check, on the one core the GIL gives all of them. Here a task is a tuple on a
``SimpleQueue``; all threads start at once (a fixed pool: no thread is ever created
while serving).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent import futures
from queue import SimpleQueue
from typing import Any, ParamSpec, TypeVar

from .. import logs

P = ParamSpec("P")
T = TypeVar("T")
_log = logs.get("extauthz.pool")


class _Task(futures.Future[Any]):
    """What ``submit`` returns: done once its call has returned. grpcio adds one done
    callback (its count of active calls), possibly after the call has finished: then it
    runs at once, as with any future. Nothing here waits on a task, so it has no
    ``Condition``; :meth:`result`, :meth:`exception` and :meth:`running` are not
    offered."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._finished = False
        self._callbacks: list[Callable[[futures.Future[Any]], object]] = []

    def add_done_callback(self, fn: Callable[[futures.Future[Any]], object]) -> None:
        with self._lock:
            if not self._finished:
                self._callbacks.append(fn)
                return
        fn(self)

    def finish(self) -> None:
        with self._lock:
            self._finished = True
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback(self)
            except Exception:
                _log.exception("pool_callback_failed")

    def done(self) -> bool:
        return self._finished

    def cancel(self) -> bool:
        return False  # a queued call is always run: grpcio itself cancels calls

    def cancelled(self) -> bool:
        return False

    def result(self, timeout: float | None = None) -> Any:
        raise NotImplementedError("a pool task has no result to wait for")

    def exception(self, timeout: float | None = None) -> BaseException | None:
        raise NotImplementedError("a pool task has no result to wait for")

    def running(self) -> bool:
        raise NotImplementedError("a pool task does not say when it starts")


class Pool(futures.ThreadPoolExecutor):
    """``threads`` threads named ``{name}_{i}``, started with the pool."""

    def __init__(self, threads: int, name: str) -> None:
        # The parent's state is not used: only its type, which grpc.server expects.
        self._tasks: SimpleQueue[tuple[_Task, Callable[..., Any], tuple[Any, ...]] | None]
        self._tasks = SimpleQueue()
        self._closed = False
        self._workers = [
            threading.Thread(target=self._work, name=f"{name}_{i}", daemon=True)
            for i in range(threads)
        ]
        for thread in self._workers:
            thread.start()

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> futures.Future[T]:
        if kwargs:  # grpcio passes positional arguments only
            raise TypeError("Pool.submit takes positional arguments only")
        if self._closed:
            raise RuntimeError("cannot schedule new calls after shutdown")
        task = _Task()
        self._tasks.put((task, fn, args))
        return task

    def _work(self) -> None:
        get = self._tasks.get
        while (item := get()) is not None:
            task, fn, args = item
            try:
                fn(*args)
            except Exception:  # grpcio's own call wrapper catches a handler's errors
                _log.exception("pool_task_failed")
            task.finish()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Each thread ends after the calls queued before this one (``cancel_futures``
        is not supported: a queued call is always run)."""
        self._closed = True
        for _ in self._workers:
            self._tasks.put(None)
        if wait:
            for thread in self._workers:
                thread.join()
