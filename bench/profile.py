"""``python -m bench.profile``: where the server's CPU goes under h2load, by category.

    python -m bench.profile                  # all four cases, 2 runs of 3 x 10 s each
    python -m bench.profile --cases cache_hit --repeat 1 --duration 5
    python -m bench.profile --from-json <workdir>/profile.json --cases floor,cache_hit,rs256

Needs h2load, py-spy (``pip install py-spy``: a tool, not a dependency) and, for the
third window, perf; ptrace and perf events on the server (root, or the equivalent).
``python -m bench`` runs the same cases when py-spy is there (``--profile``) and puts
the tables in docs/benchmarks.md (section "Where the time goes").

Each case starts the server the way ``python -m bench`` does (pinned to core 0, h2load
and the samplers on core 1), proves it answers, warms it up, then drives it with the
same h2load command three times:

1. *clean*: nothing attached. Server CPU (utime + stime of every thread, from
   ``/proc/<pid>/task/*/stat``), context switches (``voluntary_ctxt_switches`` +
   ``nonvoluntary_ctxt_switches`` of every thread) and threads, per request. Every
   µs the tables print is scaled to this window.
2. *py-spy*: ``py-spy record --native --threads --format raw`` attached to the server.
   Each sampled stack is put in one category (:func:`categorise`); stacks waiting in
   ``epoll_wait`` or on a lock are left out (py-spy samples blocked threads too). Each
   thread role's clean CPU (main thread; other Python threads; grpc's C threads, which
   py-spy does not see) is split by that role's sample shares. py-spy stops the
   Python threads for every sample, not grpc's C threads, so the roles' CPU while it
   is attached is not the clean one: only the shares are taken from this window.
3. *perf*: ``perf record -e cpu-clock`` on the whole process: the shares by thread
   role and shared object (the kernel included, which py-spy cannot see).

``floor`` and ``floor_sync`` are the bench's do-nothing servers (grpc.aio, and grpcio's
synchronous server, extauthz's serving model); ``cache_hit`` and ``rs256`` its extauthz
contenders.
"""
# ruff: noqa: RUF001  (typographic dashes and the multiplication sign are intended)

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import drivers
from .common import (
    CLK_TCK,
    BenchError,
    Keys,
    check_request,
    grpc_body,
    stop,
    taskset,
)
from .contenders import (
    BY_NAME,
    LOAD_CORES,
    start_server,
)
from .contenders import verify_server as verify_contender

CASES = ("floor", "floor_sync", "cache_hit", "rs256")
WARMUP = 2.0  # seconds of h2load before the windows
RATE = 1000  # py-spy samples per second
SAMPLER_DELAY = 0.5  # seconds into an h2load window before py-spy or perf attaches

#: Categories, in table order. The ``grpc``/``asyncio``/``threads`` ones are the
#: frameworks: a library frame (protobuf, OpenSSL) below them is the request's parse or
#: the signature check; below our code it belongs to our code's category.
THREADS_UNSEEN = "grpc C threads (event_engine, not seen by py-spy)"
CATEGORIES = (
    THREADS_UNSEEN,
    "grpc cygrpc .so (Cython + C core)",
    "grpc Python (grpc/*.py)",
    "asyncio event loop",
    "thread pool (threading, concurrent.futures)",
    "protobuf parse (CheckRequest.FromString)",
    "servicer + authorizer glue",
    "header map (to_auth_request)",
    "rule selection",
    "token extraction",
    "digest + token cache",
    "JWS parse (parse_token)",
    "signature verify",
    "claims checks",
    "allow decision (_allow)",
    "CheckResponse build + serialise",
    "metadata Struct",
    "metrics (prometheus_client)",
    "logging",
    "GC",
    "other",
)
FRAMEWORK = frozenset(
    {
        "grpc cygrpc .so (Cython + C core)",
        "grpc Python (grpc/*.py)",
        "asyncio event loop",
        "thread pool (threading, concurrent.futures)",
        "other",
    }
)

_OURS: tuple[tuple[str, str, str], ...] = (
    # (file regex, function regex, category): extauthz's own frames.
    (r"extauthz/frontdoor/grpc\.py", r"to_auth_request|_headers", "header map (to_auth_request)"),
    (r"extauthz/frontdoor/grpc\.py", r"_fill|_put|_number", "metadata Struct"),
    (r"extauthz/frontdoor/grpc\.py", r"encode|_encode|_hvo|_denied|http_status",
     "CheckResponse build + serialise"),
    (r"extauthz/frontdoor/grpc\.py", r".*", "servicer + authorizer glue"),
    (r"extauthz/authorizer\.py", r"record", "metrics (prometheus_client)"),
    (r"extauthz/authorizer\.py", r".*", "servicer + authorizer glue"),
    (r"extauthz/metrics\.py", r".*", "metrics (prometheus_client)"),
    (r"extauthz/logs\.py", r".*", "logging"),
    (r"extauthz/core/policy\.py", r"select|matches", "rule selection"),
    (r"extauthz/core/policy\.py", r"_check_rule|scopes_of", "claims checks"),
    (r"extauthz/core/policy\.py", r"_allow", "allow decision (_allow)"),
    (r"extauthz/core/policy\.py", r".*", "servicer + authorizer glue"),
    (r"extauthz/core/paths\.py", r".*", "rule selection"),
    (r"extauthz/core/tokens\.py", r".*", "token extraction"),
    (r"extauthz/core/(cache|verifier)\.py", r"_verify$", "signature verify"),
    (r"extauthz/core/(cache|verifier)\.py", r".*", "digest + token cache"),
    (r"extauthz/core/verify\.py", r"parse_token|strict_json|_no_duplicates|_check_tree",
     "JWS parse (parse_token)"),
    (r"extauthz/core/verify\.py", r"check_claims|_numeric|check_window|typ_matches",
     "claims checks"),
    (r"extauthz/core/verify\.py", r"claims_of", "digest + token cache"),
    (r"extauthz/core/verify\.py", r".*", "signature verify"),
    (r"extauthz/core/(binding|headers|decision)\.py", r".*", "allow decision (_allow)"),
    (r"extauthz/keys/", r".*", "signature verify"),
    (r"extauthz/core/request\.py", r".*", "header map (to_auth_request)"),
)  # fmt: skip
_STRONG: tuple[tuple[str, str], ...] = (
    # Libraries whose frames name their category wherever they are called from.
    (r"\(prometheus_client/", "metrics (prometheus_client)"),
    (r"\((structlog|logging)/", "logging"),
    (r"gcmodule\.c|^gc_collect|^collect_generations|^gc_collect_main", "GC"),
)
_WEAK: tuple[tuple[str, str], ...] = (
    # Libraries whose category is the caller's, unless the caller is a framework.
    (r"\(google/protobuf/|_message\.abi3|upb|libprotobuf",
     "protobuf parse (CheckRequest.FromString)"),
    (r"\((cryptography|joserfc)/|libcrypto|_rust\.abi3|/rust/", "signature verify"),
)  # fmt: skip
_FRAMEWORKS: tuple[tuple[str, str], ...] = (
    (r"\(grpc/[^()]*\.py:", "grpc Python (grpc/*.py)"),
    (r"cygrpc|\(grpc/_cython/|\(libgrpc|grpc_core::|grpc_event_engine::",
     "grpc cygrpc .so (Cython + C core)"),
    (r"\(asyncio/|\(selectors\.py|\(_asynciomodule\.c|_asyncio\.cpython", "asyncio event loop"),
    (r"\((threading|concurrent/futures/[a-z_]+|extauthz/server/pool)\.py",
     "thread pool (threading, concurrent.futures)"),
)  # fmt: skip
#: A stack whose innermost named frame is one of these is a thread waiting (py-spy
#: samples blocked threads too): not CPU, left out of its thread's shares.
_WAITS = re.compile(
    r"^(epoll_wait|epoll_pwait|poll|ppoll|select|pselect6?|nanosleep|clock_nanosleep|"
    r"pthread_cond_wait|pthread_cond_timedwait|pthread_cond_clockwait|sem_wait|sem_timedwait|"
    r"sem_clockwait|PyThread_acquire_lock_timed|take_gil|do_futex_wait|pthread_mutex_lock|"
    r"__lll_lock_wait|__futex_abstimed_wait_common|futex_wait|accept4?) \("
)


def is_wait(frames: list[str]) -> bool:
    named = [f for f in frames if not f.startswith("0x")]
    return bool(named) and _WAITS.match(named[-1]) is not None


_FRAME = re.compile(r"^(?P<name>.*) \((?P<where>[^()]*)\)$")


def _compile_ours() -> list[tuple[re.Pattern[str], re.Pattern[str], str]]:
    return [(re.compile(f), re.compile(n), c) for f, n, c in _OURS]


_OURS_RE = _compile_ours()
_STRONG_RE = [(re.compile(p), c) for p, c in _STRONG]
_WEAK_RE = [(re.compile(p), c) for p, c in _WEAK]
_FRAMEWORKS_RE = [(re.compile(p), c) for p, c in _FRAMEWORKS]


def _ours(frame: str) -> str | None:
    m = _FRAME.match(frame)
    if m is None:
        return None
    name, where = m.group("name"), m.group("where")
    for file_re, name_re, category in _OURS_RE:
        if file_re.search(where) and name_re.fullmatch(name.rsplit(".", 1)[-1]):
            return category
    return None


def categorise(frames: list[str]) -> str:
    """One stack (root first, py-spy's ``name (file:line)`` frames) -> its category:
    the deepest frame that names one. Our code and the strong libraries always refine;
    protobuf and OpenSSL frames only below a framework (below our code they are its)."""
    category: str | None = None
    for frame in frames:
        own = _ours(frame)
        if own is not None:
            category = own
            continue
        found = next((c for r, c in _STRONG_RE if r.search(frame)), None)
        if found is not None:
            category = found
            continue
        found = next((c for r, c in _WEAK_RE if r.search(frame)), None)
        if found is not None:
            if category is None or category in FRAMEWORK:
                category = found
            continue
        found = next((c for r, c in _FRAMEWORKS_RE if r.search(frame)), None)
        if found is not None and (category is None or category in FRAMEWORK):
            category = found
    return category or "other"


WAIT = "(waiting)"
_RAW_LINE = re.compile(r"^thread \((?P<tid>\d+)\): (?P<stack>.*) (?P<count>\d+)$")


def read_raw(path: Path) -> dict[int, Counter[str]]:
    """py-spy ``--format raw --threads`` output -> samples by thread id and category
    (waiting stacks under the category ``WAIT``)."""
    out: dict[int, Counter[str]] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        m = _RAW_LINE.match(line)
        if m is None:
            continue
        frames = m.group("stack").split(";")[1:]  # the first is the thread's name
        category = WAIT if is_wait(frames) else categorise(frames)
        out.setdefault(int(m.group("tid")), Counter())[category] += int(m.group("count"))
    return out


# ----------------------------------------------------------------------- /proc per thread


@dataclass
class Task:
    comm: str
    cpu: float  # seconds
    switches: int  # voluntary + nonvoluntary context switches


def tasks(pid: int) -> dict[int, Task]:
    out: dict[int, Task] = {}
    for entry in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (entry / "stat").read_text()
            status = (entry / "status").read_text()
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue  # the thread ended
        fields = stat.rsplit(")", 1)[1].split()
        switches = sum(
            int(line.split()[1])
            for line in status.splitlines()
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"))
        )
        out[int(entry.name)] = Task(comm, (int(fields[11]) + int(fields[12])) / CLK_TCK, switches)
    return out


@dataclass
class Window:
    requests: int
    rps: float
    threads: int
    cpu: dict[int, tuple[str, float]] = field(default_factory=dict)  # tid -> (comm, s)
    switches: int = 0

    @property
    def cpu_total(self) -> float:
        return sum(s for _, s in self.cpu.values())

    def us_per_request(self) -> float:
        return self.cpu_total / self.requests * 1e6

    def switches_per_request(self) -> float:
        return self.switches / self.requests

    def role(self, tid: int) -> str:
        """``main`` (the process's first thread), ``python`` (other Python threads:
        grpc.aio's poller, the sync server's pool) or ``C`` (grpc's own threads)."""
        if tid == min(self.cpu):
            return "main"
        return "python" if self.cpu[tid][0].startswith("python") else "C"


def _window(pid: int, run: Callable[[], drivers.LoadResult]) -> Window:
    before = tasks(pid)
    res = run()
    after = tasks(pid)
    cpu = {t: (a.comm, a.cpu - before[t].cpu if t in before else a.cpu) for t, a in after.items()}
    switches = sum(
        a.switches - (before[t].switches if t in before else 0) for t, a in after.items()
    )
    return Window(res.requests, res.rps, len(after), cpu, switches)


def _with_sampler(
    sampler: list[str], start_after: float, load: Callable[[], drivers.LoadResult]
) -> Callable[[], drivers.LoadResult]:
    """Run the load; ``start_after`` seconds in, run ``sampler`` to its end."""

    def run() -> drivers.LoadResult:
        box: list[drivers.LoadResult | BaseException] = []

        def target() -> None:
            try:
                box.append(load())
            except BaseException as exc:  # re-raised below, in the caller's thread
                box.append(exc)

        t = threading.Thread(target=target)
        t.start()
        time.sleep(start_after)
        proc = subprocess.run(sampler, capture_output=True, text=True, check=False)
        t.join()
        if proc.returncode != 0:
            raise BenchError(f"{sampler[0:3]} exited {proc.returncode}: {proc.stderr[-800:]}")
        result = box[0]
        if isinstance(result, BaseException):
            raise result
        return result

    return run


# ----------------------------------------------------------------------- perf by DSO

_PERF_LINE = re.compile(r"^\s*([\d.]+)%\s+(\d+):(\S+)\s+(.+?)\s*$")


def perf_dsos(data: Path, pid: int) -> dict[str, float]:
    """``perf report --sort pid,dso`` (pid: the thread): share (0-1) of the samples by thread role
    (main thread, other Python threads, grpc's C threads) and shared object."""
    out = subprocess.run(
        ["perf", "report", "-i", str(data), "--no-children", "--sort", "pid,dso", "--stdio",
         "-q"], capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    shares: dict[str, float] = {}
    for line in out.splitlines():
        m = _PERF_LINE.match(line)
        if m is None:
            continue
        tid, comm = int(m.group(2)), m.group(3)
        role = "main" if tid == pid else ("python" if comm.startswith("python") else "C")
        key = f"{role} / {_dso_group(m.group(4))}"
        shares[key] = shares.get(key, 0.0) + float(m.group(1)) / 100
    return shares


def _dso_group(dso: str) -> str:
    for pattern, name in (
        (r"kernel|vmlinux|\[k\]", "kernel"),
        (r"cygrpc", "grpc (cygrpc .so: C core + Cython)"),
        (r"libpython|^python", "libpython (interpreter)"),
        (r"_message|upb|protobuf", "protobuf (upb)"),
        (r"libcrypto|_rust|cryptography|libssl", "OpenSSL / cryptography"),
        (r"libc\.so|libc-|ld-linux|libm\.so|libpthread", "libc"),
        (r"_asyncio", "_asyncio"),
    ):
        if re.search(pattern, dso):
            return name
    return f"other ({dso})" if dso.startswith("[") else "other"


# ----------------------------------------------------------------------- one case


@dataclass
class CaseRun:
    case: str
    clean: Window
    spied: Window
    perfed: Window | None
    samples: dict[int, dict[str, int]]  # tid -> category -> samples
    dsos: dict[str, float] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)  # server, h2load, py-spy, perf

    def categories_us(self) -> dict[str, float]:
        """µs per request by category: each thread role's CPU in the clean run (main
        thread, other Python threads, grpc's C threads), split by the shares of that
        role's py-spy samples (waits left out). py-spy pauses the Python threads, not
        grpc's C threads, so the roles' CPU in the py-spy run is not the clean one."""
        samples: dict[str, Counter[str]] = {}
        for tid, counts in self.samples.items():
            if tid in self.clean.cpu:
                role = self.clean.role(tid)
                samples.setdefault(role, Counter()).update(
                    {c: n for c, n in counts.items() if c != WAIT}
                )
        us: dict[str, float] = {}
        for tid, (_comm, secs) in self.clean.cpu.items():
            role = self.clean.role(tid)
            per_req = secs / self.clean.requests * 1e6
            counts = samples.get(role, Counter())
            total = sum(counts.values())
            if not total:
                key = THREADS_UNSEEN if role == "C" else "other"
                us[key] = us.get(key, 0.0) + per_req
                continue
            for category, n in counts.items():
                us[category] = us.get(category, 0.0) + per_req * n / total
        return us


def _window_of(d: Any) -> Window | None:
    if d is None:
        return None
    cpu = {int(t): (str(v[0]), float(v[1])) for t, v in d["cpu"].items()}
    return Window(int(d["requests"]), float(d["rps"]), int(d["threads"]), cpu, int(d["switches"]))


def load_run(d: Any) -> CaseRun:
    """A CaseRun back from ``profile.json``."""
    clean, spied = _window_of(d["clean"]), _window_of(d["spied"])
    assert clean is not None and spied is not None
    samples = {int(t): {str(c): int(n) for c, n in v.items()} for t, v in d["samples"].items()}
    return CaseRun(d["case"], clean, spied, _window_of(d["perfed"]), samples, dict(d["dsos"]),
                   [str(c) for c in d.get("commands", [])])  # fmt: skip


@dataclass
class Profile:
    """One session: every run of every case, and how they were taken."""

    cases: list[str]
    duration: float  # seconds per window
    repeat: int
    rate: int  # py-spy samples per second
    warmup: float
    perf: bool  # the third window ran
    runs: list[CaseRun] = field(default_factory=list)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Profile:
        return cls([str(c) for c in d["cases"]], float(d["duration"]), int(d["repeat"]),
                   int(d["rate"]), float(d["warmup"]), bool(d["perf"]),
                   [load_run(r) for r in d["runs"]])  # fmt: skip

    def commands(self, case: str) -> list[str]:
        """The commands of the case's last run."""
        return next((r.commands for r in reversed(self.runs) if r.case == case), [])


def run_case(case: str, keys: Keys, workdir: Path, tag: str, duration: float, rate: int,
             use_perf: bool, warmup: float = WARMUP) -> CaseRun:  # fmt: skip
    c = BY_NAME[case]
    server = start_server(c, keys, workdir, tag)
    verify_contender(c, server.port, keys)
    alg = c.alg
    try:
        pid = server.proc.pid
        body = workdir / f"{alg.lower()}.check.bin"
        body.write_bytes(grpc_body(check_request(keys.sample(alg))))

        cmd = drivers.h2load_command(server.port, body, duration, cores=LOAD_CORES)
        commands = [server.command, shlex.join(cmd)]

        def load(name: str) -> Callable[[], drivers.LoadResult]:
            return lambda: drivers.run_h2load(cmd, duration, workdir / f"{tag}.{name}.txt")

        if warmup > 0:
            warm = drivers.h2load_command(server.port, body, warmup, cores=LOAD_CORES)
            drivers.run_h2load(warm, warmup, workdir / f"{tag}.warmup.txt")
        clean = _window(pid, load("clean"))
        raw = workdir / f"{tag}.pyspy.raw"
        spy = [*taskset(LOAD_CORES), str(_tool("py-spy")), "record", "--native", "--threads",
               "--rate", str(rate), "--format", "raw", "-d", str(max(1, round(duration - 1))),
               "-p", str(pid), "-o", str(raw)]  # fmt: skip
        spied = _window(pid, _with_sampler(spy, SAMPLER_DELAY, load("pyspy")))
        commands.append(f"{shlex.join(spy)}  # {SAMPLER_DELAY:g} s into the h2load window")
        samples = {t: dict(c) for t, c in read_raw(raw).items()}
        perfed, dsos = None, {}
        if use_perf:
            data = workdir / f"{tag}.perf.data"
            rec = [*taskset(LOAD_CORES), "perf", "record", "-q", "-e", "cpu-clock", "-F", "999",
                   "-p", str(pid), "-o", str(data), "--", "sleep",
                   str(max(1, round(duration - 1)))]  # fmt: skip
            perfed = _window(pid, _with_sampler(rec, SAMPLER_DELAY, load("perf")))
            commands.append(f"{shlex.join(rec)}  # {SAMPLER_DELAY:g} s into the h2load window")
            dsos = perf_dsos(data, pid)
        return CaseRun(case, clean, spied, perfed, samples, dsos, commands)
    finally:
        stop(server.proc)


def find_tool(name: str) -> Path | None:
    """``name`` beside this interpreter (a virtualenv's py-spy), else on PATH."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    return None if found is None else Path(found)


def _tool(name: str) -> Path:
    found = find_tool(name)
    if found is None:
        raise SystemExit(f"{name} not found (pip install py-spy; apt-get install linux-perf)")
    return found


def tool_version(name: str) -> str:
    """``py-spy 0.4.3`` -> ``0.4.3``; ``perf version 6.1.187`` -> ``6.1.187``."""
    found = find_tool(name)
    if found is None:
        return "not installed"
    out = subprocess.run([str(found), "--version"], capture_output=True, text=True, check=False)
    words = (out.stdout or out.stderr).split()
    return words[-1] if words else "unknown"


def measure(cases: list[str], keys: Keys, workdir: Path, *, duration: float, repeat: int,
            rate: int, use_perf: bool, warmup: float = WARMUP) -> Profile:  # fmt: skip
    """Every case ``repeat`` times, alternating (reversed on odd repeats, as ``python -m
    bench`` orders its contenders), each run a new server."""
    prof = Profile(list(cases), duration, max(1, repeat), rate, warmup, use_perf)
    for rep in range(prof.repeat):
        for case in cases if rep % 2 == 0 else list(reversed(cases)):
            r = run_case(case, keys, workdir, f"profile.{case}.{rep}", duration, rate, use_perf,
                         warmup)  # fmt: skip
            prof.runs.append(r)
            print(f"  [{rep + 1}/{prof.repeat}] profile {case}: {r.clean.rps:,.0f} rps, "
                  f"{r.clean.us_per_request():.0f} µs/req, "
                  f"{r.clean.switches_per_request():.1f} switches/req, "
                  f"{r.clean.threads} threads", file=sys.stderr, flush=True)  # fmt: skip
    return prof


# ----------------------------------------------------------------------- report


def _med(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.median(values):.1f} [{min(values):.1f}–{max(values):.1f}]"


def table(runs: list[CaseRun], cases: list[str]) -> str:
    by_case = {c: [r for r in runs if r.case == c] for c in cases}
    us = {c: [r.categories_us() for r in rs] for c, rs in by_case.items()}
    L = ["| category | " + " | ".join(f"`{c}` µs/req" for c in cases) + " | "
         + " | ".join(f"`{c}` %" for c in cases) + " |",
         "|---|" + "---:|" * (2 * len(cases))]  # fmt: skip
    for cat in CATEGORIES:
        if not any(cat in u for rs in us.values() for u in rs):
            continue
        cells = [_med([u.get(cat, 0.0) for u in us[c]]) for c in cases]
        pct = []
        for c in cases:
            shares = [u.get(cat, 0.0) / max(1e-9, sum(u.values())) * 100 for u in us[c]]
            pct.append(f"{statistics.median(shares):.0f}" if shares else "–")
        L.append(f"| {cat} | " + " | ".join(cells) + " | " + " | ".join(pct) + " |")
    total = [_med([r.clean.us_per_request() for r in by_case[c]]) for c in cases]
    L.append("| **server CPU, clean run** | " + " | ".join(f"**{t}**" for t in total)
             + " | " + " | ".join("100" for _ in cases) + " |")  # fmt: skip
    L.append("")
    L.append("| per request (clean runs) | " + " | ".join(f"`{c}`" for c in cases) + " |")
    L.append("|---|" + "---:|" * len(cases))
    rows: list[tuple[str, Callable[[CaseRun], float]]] = [
        ("rps", lambda r: r.clean.rps),
        ("server CPU µs", lambda r: r.clean.us_per_request()),
        ("context switches", lambda r: r.clean.switches_per_request()),
        ("threads", lambda r: float(r.clean.threads)),
        ("rps with py-spy attached", lambda r: r.spied.rps),
        ("server CPU µs with py-spy attached", lambda r: r.spied.us_per_request()),
        ("rps with perf attached", lambda r: r.perfed.rps if r.perfed else 0.0),
    ]
    for label, get in rows:
        L.append(f"| {label} | " + " | ".join(_med([get(r) for r in by_case[c]]) for c in cases)
                 + " |")  # fmt: skip
    L.append("")
    L.append("| CPU by thread (clean runs, µs/req) | " + " | ".join(f"`{c}`" for c in cases)
             + " |")  # fmt: skip
    L.append("|---|" + "---:|" * len(cases))

    names = {"main": "main thread", "python": "other Python threads", "C": "grpc C threads"}
    for key, name in names.items():
        cells = []
        for c in cases:
            vals = [sum(s for t, (_, s) in r.clean.cpu.items() if r.clean.role(t) == key)
                    / r.clean.requests * 1e6 for r in by_case[c]]  # fmt: skip
            cells.append(_med(vals))
        L.append(f"| {name} | " + " | ".join(cells) + " |")
    if any(r.dsos for r in runs):
        L.append("")
        L.append("| perf cpu-clock by object (µs/req) | " + " | ".join(f"`{c}`" for c in cases)
                 + " |")  # fmt: skip
        L.append("|---|" + "---:|" * len(cases))
        dso_names = sorted({d for r in runs for d in r.dsos},
                           key=lambda d: -max(r.dsos.get(d, 0.0) for r in runs))  # fmt: skip
        for d in dso_names:
            if max(r.dsos.get(d, 0.0) * r.clean.us_per_request() for r in runs) < 1.0:
                continue
            cells = [_med([r.dsos.get(d, 0.0) * r.clean.us_per_request() for r in by_case[c]
                           if r.dsos]) for c in cases]  # fmt: skip
            L.append(f"| {d} | " + " | ".join(cells) + " |")
    return "\n".join(L) + "\n"


def main(argv: list[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--cases", default=",".join(CASES), help=f"of {', '.join(CASES)}")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per window")
    p.add_argument("--repeat", type=int, default=2, help="runs per case (alternating)")
    p.add_argument("--rate", type=int, default=RATE, help="py-spy samples per second")
    p.add_argument("--no-perf", action="store_true", help="skip the perf window")
    p.add_argument("--workdir", help="logs, py-spy and perf output (default: a temp dir)")
    p.add_argument("--from-json", type=Path, help="print the tables of a run's profile.json")
    args = p.parse_args(args_in)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    for c in cases:
        if c not in CASES:
            raise SystemExit(f"--cases: unknown case {c!r}; choose from {', '.join(CASES)}")
    if args.from_json is not None:
        saved = [load_run(r) for r in json.loads(args.from_json.read_text(encoding="utf-8"))]
        saved = [r for r in saved if r.case in cases]
        print(table(saved, [c for c in cases if any(r.case == c for r in saved)]))
        return 0
    use_perf = not args.no_perf and shutil.which("perf") is not None
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="extauthz-profile-"))
    workdir.mkdir(parents=True, exist_ok=True)
    _tool("py-spy")  # before anything starts
    prof = measure(cases, Keys.generate(), workdir, duration=args.duration, repeat=args.repeat,
                   rate=args.rate, use_perf=use_perf)  # fmt: skip
    (workdir / "profile.json").write_text(
        json.dumps([asdict(r) for r in prof.runs], indent=1) + "\n", encoding="utf-8"
    )
    print(table(prof.runs, cases))
    print(f"workdir: {workdir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
