"""The report's "Where the time goes" section: ``bench.profile``'s tables, how they were
taken, and what they say, every figure from the run (none is written by hand here)."""
# ruff: noqa: RUF001  (typographic dashes and the multiplication sign are intended)

from __future__ import annotations

import statistics
from collections.abc import Callable

from . import drivers, profile
from .contenders import LOAD_CORES, SUT_CORES
from .profile import CATEGORIES, THREADS_UNSEEN, CaseRun, Profile
from .results import Run

TITLE = "Where the time goes (py-spy under load)"

#: extauthz's own code: the table's rows from the servicer glue to logging.
OWN = CATEGORIES[CATEGORIES.index("servicer + authorizer glue") : CATEGORIES.index("GC")]
#: grpc's machinery and the threads that serve a call (event loop or thread pool).
SERVING = (
    THREADS_UNSEEN,
    "grpc cygrpc .so (Cython + C core)",
    "grpc Python (grpc/*.py)",
    "asyncio event loop",
    "thread pool (threading, concurrent.futures)",
)
VERIFY = ("JWS parse (parse_token)", "signature verify", "claims checks")
LABELS = {
    "cache_hit": "On a token-cache hit (`cache_hit`)",
    "rs256": "With the cache off (`rs256`)",
}

HOW = """```sh
.venv/bin/pip install py-spy     # a tool, not a dependency; perf: Debian linux-perf
.venv/bin/python -m bench --only profile              # prints its <workdir>
.venv/bin/python -m bench.merge <workdir>/results.json  # this section, into this page
.venv/bin/python -m bench.profile --from-json <workdir>/profile.json  # its tables again
```
"""


def section(heading: str, run: Run) -> list[str]:
    p = run.profile
    if p is None:
        why = run.profile_error or run.profile_skipped or "it was not asked for"
        return [
            f"{heading}\n",
            f"*Not measured in this run:* {why}. This section splits the server's CPU under "
            "h2load by where it goes (grpc's threads, the event loop or thread pool, each "
            "step of extauthz's decision), sampled with py-spy, a tool the benchmark does "
            "not depend on. With py-spy installed (and ptrace allowed: root, or the "
            "equivalent), `python -m bench` measures it as part of the whole page; on its "
            "own, then merged into this page:\n",
            HOW,
        ]
    runs = {c: [r for r in p.runs if r.case == c] for c in p.cases}
    return [
        f"{heading}\n",
        method(p, run.info),
        profile.table(p.runs, [c for c in p.cases if runs[c]]),
        noise(p, runs),
        what_it_says(p, runs),
        "To measure this section alone:\n",
        HOW,
    ]


def method(p: Profile, info: dict[str, str]) -> str:
    tools = f"py-spy {info.get('py-spy', '?')}"
    if p.perf:
        tools += f" and perf {info.get('perf', '?')}"
    windows = 3 if p.perf else 2
    sampled = max(1, round(p.duration - 1))
    steps = [
        "*clean*, nothing attached: user + system CPU of every thread "
        "(`/proc/<pid>/task/*/stat`), context switches (`voluntary_ctxt_switches` + "
        "`nonvoluntary_ctxt_switches` of every thread) and threads. Every total and every "
        "µs below is scaled to these windows.",
        f"`py-spy record --native --threads --rate {p.rate} --format raw -d {sampled} -p "
        f"<pid>`, started {profile.SAMPLER_DELAY:g} s into the window: each sampled stack goes "
        "to the category of its deepest frame that names one (extauthz's functions by "
        "module and name; `prometheus_client`, `structlog`/`logging`, the garbage "
        'collector; protobuf and OpenSSL frames count as "protobuf parse" or "signature '
        'verify" when grpc, asyncio or the thread pool calls them, otherwise as the '
        "extauthz function that called them); stacks waiting in `epoll_wait` or on a lock "
        "are left out. Each thread role's clean CPU (the main thread; the other Python "
        "threads: grpc.aio's completion-queue poller, or the synchronous server's pool "
        "threads; grpc's C threads, which py-spy does not see) is split by that role's "
        "sample shares.",
    ]
    if p.perf:
        steps.append(
            f"`perf record -e cpu-clock -F 999 -p <pid> -- sleep {sampled}`: the on-CPU "
            "shares by thread role and shared object, the kernel included, times the clean "
            "CPU."
        )
    listed = "\n".join(f"{i}. {text}" for i, text in enumerate(steps, 1))
    no_perf = "" if p.perf else " perf was not found, so there is no perf window.\n"
    return (
        f"Cases {', '.join(f'`{c}`' for c in p.cases)}, with {tools}. The servers start as "
        f"in the gRPC direct rows (`extauthz serve` or `bench/floor.py` under `taskset -c "
        f"{SUT_CORES}`, the same config) and are driven by the same h2load command "
        f"({drivers.H2LOAD_CLIENTS} connections × {drivers.H2LOAD_STREAMS} streams, one "
        f"thread, core {LOAD_CORES}); py-spy and perf also run on core {LOAD_CORES}. Each "
        f"case: one server, {p.warmup:g} s of warm-up, then {windows} h2load windows of "
        f"{p.duration:g} s:\n\n{listed}\n\n{p.repeat} run(s) per case, in alternating order, "
        "each a new server; figures are the median with [min–max] over the runs."
        f"{no_perf}\n"
    )


def _median(runs: list[CaseRun], get: Callable[[CaseRun], float]) -> float:
    return statistics.median(get(r) for r in runs)


def _share(runs: list[CaseRun], categories: tuple[str, ...]) -> float:
    """Median over the runs of the µs/req of ``categories`` together."""
    return _median(runs, lambda r: sum(r.categories_us().get(c, 0.0) for c in categories))


def _pct(part: float, whole: float) -> str:
    return f"{part / whole * 100:.0f} %" if whole else "–"


def _span(fractions: list[float]) -> str:
    lo, hi = round(min(fractions) * 100), round(max(fractions) * 100)
    return f"{lo} %" if lo == hi else f"{lo}–{hi} %"


def noise(p: Profile, runs: dict[str, list[CaseRun]]) -> str:
    spreads = []
    for case, rs in runs.items():
        us = [r.clean.us_per_request() for r in rs]
        if len(us) >= 2 and min(us) > 0:
            spreads.append((max(us) / min(us) - 1, case, min(us), max(us)))
    if spreads:
        spread, case, lo, hi = max(spreads)
        text = (f"**The noise.** Between the runs of a case the clean CPU per request "
                f"differed by up to {spread * 100:.0f} % (`{case}`: {lo:.0f} and {hi:.0f} "
                "µs): read smaller differences between cases as noise.")  # fmt: skip
    else:
        text = ("**The noise.** One run per case, so nothing here shows the noise between "
                "runs; a larger `--repeat` does.")  # fmt: skip
    spied = [r.spied.rps / r.clean.rps for r in p.runs if r.clean.rps]
    perfed = [r.perfed.rps / r.clean.rps for r in p.runs if r.perfed and r.clean.rps]
    if spied:
        text += (f" py-spy stops the Python threads for every sample: at {p.rate} Hz the "
                 f"server answered {_span(spied)} of its clean rps while attached")  # fmt: skip
        if perfed:
            text += f" (with perf, which does not stop it, {_span(perfed)})"
        text += (", so the category shares come from a slowed server; "
                 "`python -m bench.profile --rate 100` shows whether they depend on the "
                 "rate.")  # fmt: skip
    text += " py-spy sees no kernel: a system call's CPU counts under the frame that made it"
    text += "; the perf table has the kernel's part.\n" if p.perf else ".\n"
    return text


def what_it_says(p: Profile, runs: dict[str, list[CaseRun]]) -> str:
    said: list[str] = []
    hit = runs.get("cache_hit") or []
    for case in ("cache_hit", "rs256"):
        rs = runs.get(case) or []
        if not rs:
            continue
        total = _median(rs, lambda r: r.clean.us_per_request())
        own, serving = _share(rs, OWN), _share(rs, SERVING)
        if not said:  # the first sentence says what the two sums are
            said.append(f"{LABELS[case]} extauthz's own code (the rows from \"servicer + "
                        f"authorizer glue\" to \"logging\") took {own:.0f} of the "
                        f"{total:.0f} µs a request cost ({_pct(own, total)}); grpc and the "
                        "threads that serve a call (grpc's C threads, cygrpc, grpc's Python, "
                        f"the event loop or thread pool) took {serving:.0f} µs "
                        f"({_pct(serving, total)}).")  # fmt: skip
        else:
            said.append(f"{LABELS[case]} its own code took {own:.0f} of {total:.0f} µs "
                        f"({_pct(own, total)}), grpc and the serving threads {serving:.0f} µs "
                        f"({_pct(serving, total)}).")  # fmt: skip
    rs = runs.get("rs256") or []
    if rs:
        total = _median(rs, lambda r: r.clean.us_per_request())
        verify = _share(rs, VERIFY)
        text = (f"On `rs256` the verify path (JWS parse, signature verify, claims checks) "
                f"is {verify:.0f} µs ({_pct(verify, total)})")  # fmt: skip
        with_perf = [r for r in rs if r.dsos]
        if with_perf:
            ssl = _median(with_perf, lambda r: r.clean.us_per_request() * sum(
                v for k, v in r.dsos.items() if k.endswith("OpenSSL / cryptography")))  # fmt: skip
            text += f", of which OpenSSL and cryptography's own code {ssl:.0f} µs (perf)"
        said.append(text + ".")
    floors = [(c, runs.get(c) or []) for c in ("floor", "floor_sync")]
    if all(rs for _, rs in floors):
        parts = [f"`{c}` {_median(rs, lambda r: r.clean.us_per_request()):.0f} µs and "
                 f"{_median(rs, lambda r: r.clean.switches_per_request()):.1f} context "
                 "switches" for c, rs in floors]  # fmt: skip
        said.append(f"The do-nothing floors cost, per request, {parts[0]} (grpc.aio) against "
                    f"{parts[1]} (grpcio's synchronous server, extauthz's model).")  # fmt: skip
    sync = runs.get("floor_sync") or []
    if hit and sync:
        # The clean runs, which nothing slowed: what extauthz adds to its serving model.
        base = _median(sync, lambda r: r.clean.us_per_request())
        added = _median(hit, lambda r: r.clean.us_per_request()) - base
        text = (f"Cross-check without py-spy: `cache_hit` costs {added:.0f} µs more than "
                f"`floor_sync`, the same serving model doing nothing")  # fmt: skip
        rs = runs.get("rs256") or []
        if rs:
            text += f", `rs256` {_median(rs, lambda r: r.clean.us_per_request()) - base:.0f} µs"
        said.append(text + ". That difference bounds what extauthz's own code costs: where "
                    "the py-spy rows give it more, the sampled shares overstate it (py-spy "
                    "counts a thread that is ready to run but waits for the one core as if it "
                    "ran, and slows the server while attached).")  # fmt: skip
        lever = ("the serving model, not extauthz's code, is where most of a hit's CPU goes"
                 if base > added else "extauthz's own code is most of a hit's CPU")  # fmt: skip
        said.append(f"So {lever}.")
    elif hit:
        own, serving = _share(hit, OWN), _share(hit, SERVING)
        lever = ("the serving model, not extauthz's code, is where most of a hit's CPU goes"
                 if serving > own else "extauthz's own code is most of a hit's CPU")  # fmt: skip
        said.append(f"So {lever}.")
    if not said:
        return ""
    return "**What it says.** " + " ".join(said) + "\n"
