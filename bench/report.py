"""Markdown report and a hand-written SVG bar chart (no plotting dependency)."""
# ruff: noqa: RUF001  (typographic dashes and the multiplication sign are intended)

from __future__ import annotations

import os
import platform
import re
import statistics
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from html import escape
from importlib import metadata
from pathlib import Path

from . import dpop, dpop_report, drivers, profile, profile_report
from .common import NPROC
from .contenders import (
    ALL_CORES,
    BY_NAME,
    CONTENDERS,
    ENVOY_CORES,
    LOAD_CORES,
    SKIP_ABOVE,
    SUT_CORES,
    Contender,
)
from .results import PARTS, Outcome, Run
from .rss import RssResult

__all__ = ["HEADINGS", "PARTS", "TITLES", "Outcome", "Run", "markdown", "svg_chart"]

P99_ADDED_TARGET_MS = 2.0
RSS_TARGET_MB = 100.0
#: The title of each contender group's section.
TITLES = {
    "grpc": "Throughput: gRPC Check direct",
    "envoy": "Throughput: HTTP through Envoy",
    "http": "HTTP door vs gRPC door through Envoy",
    "latency": "Latency at a fixed rate through Envoy",
}
#: Every section's heading (what a merge finds it by), in document order: the measured
#: parts (:data:`PARTS`), then the sections about the run as a whole.
HEADINGS = {
    "grpc": f"## {TITLES['grpc']} (h2load)",
    "envoy": f"## {TITLES['envoy']} (wrk)",
    "http": f"## {TITLES['http']} (wrk)",
    "profile": f"## {profile_report.TITLE}",
    "dpop": f"## {dpop_report.TITLE}",
    "tracing": "## Tracing cost",
    "latency": f"## {TITLES['latency']} (h2load --h1 --rps, open loop)",
    "memory": "## Memory",
    "machine": "## Machine",
    "commands": "## Commands",
    "limits": "## What limits each number",
}
assert tuple(HEADINGS)[: len(PARTS)] == PARTS


def _fmt(v: float | None, spec: str = ",.0f") -> str:
    return "–" if v is None else format(v, spec)


def _cell(o: Outcome) -> str:
    if o.status == "na":
        return "n/a (workers not available)"
    if o.status == "error":
        return "error"
    if o.status == "skipped":
        return "not run"
    return _fmt(o.rps)


def _ratio(o: Outcome, outcomes: dict[str, Outcome]) -> float | None:
    """The ratio to the contender's ``baseline`` (the ratio column)."""
    return ratio_to(o, BY_NAME[o.name].baseline, outcomes)


def ratio_to(o: Outcome, base_name: str | None, outcomes: dict[str, Outcome]) -> float | None:
    base = outcomes.get(base_name) if base_name else None
    if o.rps is None or base is None or not base.rps:
        return None
    if len(o.runs) == len(base.runs):
        # Paired by repeat: contenders alternate within a repeat, so a run is divided by
        # its own repeat's baseline, which cancels slow drift of the machine's speed.
        return statistics.median(r.rps / b.rps for r, b in zip(o.runs, base.runs, strict=True))
    return o.rps / base.rps


def _verdict(ok: bool | None) -> str:
    return "–" if ok is None else ("met" if ok else "**missed**")


@dataclass(frozen=True)
class Verdict:
    """One target of a contender: a minimum rps ratio to a baseline, or a maximum of
    server CPU per request."""

    baseline: str | None  # None: the CPU target
    limit: float
    value: float | None  # measured (None: not measured in this run)

    @property
    def ok(self) -> bool | None:
        if self.value is None:
            return None
        return self.value <= self.limit if self.baseline is None else self.value >= self.limit

    def _measured(self, times: str) -> str:
        if self.value is None:
            return "not measured"
        if self.baseline is None:
            return _fmt(self.value)
        return f"{self.value:.2f}{times}"

    def markdown(self, implied_baseline: str | None = None) -> str:
        """Short when the baseline is the table's (``implied_baseline``), else naming the
        baseline and the measured figure."""
        if implied_baseline is not None and self.baseline == implied_baseline:
            return f"≥ {self.limit:g}× {_verdict(self.ok)}"
        what = (f"server CPU ≤ {self.limit:g} µs/req" if self.baseline is None
                else f"≥ {self.limit:g}× `{self.baseline}`")  # fmt: skip
        verdict = "" if self.ok is None else " " + _verdict(self.ok)
        return f"{what}: {self._measured('×')}{verdict}"

    def plain(self, implied_baseline: str | None = None) -> str:
        met = "" if self.ok is None else (" met" if self.ok else " MISSED")
        if implied_baseline is not None and self.baseline == implied_baseline:
            return f"target >= {self.limit:g}x:{met}"
        what = (f"server CPU <= {self.limit:g} us/req" if self.baseline is None
                else f">= {self.limit:g}x {self.baseline}")  # fmt: skip
        return f"{what}: {self._measured('x')}{met}"


def verdicts(c: Contender, outcomes: dict[str, Outcome]) -> list[Verdict]:
    o = outcomes[c.name]
    out = [Verdict(t.baseline, t.min_ratio, ratio_to(o, t.baseline, outcomes)) for t in c.targets]
    if c.max_server_cpu_us is not None:
        out.append(Verdict(None, c.max_server_cpu_us, o.cpu_us("server")))
    return out


def _cmd(args: list[str]) -> str:
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=20, check=False)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "unknown"


def machine_info() -> dict[str, str]:
    cpu = "unknown"
    try:
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = m.group(1).strip() if m else cpu
    except OSError:
        pass
    from extauthz.dev.envoy import envoy_binary

    def ver(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    envoy = _cmd([str(envoy_binary()), "--version"])
    m = re.search(r"version: \S+/([\d.]+)/", envoy)
    return {
        "nproc": str(NPROC),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "grpcio": ver("grpcio"),
        "protobuf": ver("protobuf"),
        "joserfc": ver("joserfc"),
        "cryptography": ver("cryptography"),
        "prometheus_client": ver("prometheus_client"),
        "httptools": ver("httptools"),
        "aiohttp": ver("aiohttp"),
        "redis-py": ver("redis"),
        "extauthz": ver("extauthz"),
        "envoy": m.group(1) if m else envoy,
        "h2load": _cmd(["h2load", "--version"]),
        "wrk": _cmd(["wrk", "-v"]).split(" Copyright")[0],
        "redis-server": dpop.redis_server_version(),
        "py-spy": profile.tool_version("py-spy"),
        "perf": profile.tool_version("perf"),
        "commit": _commit(),
    }


def _commit() -> str:
    """The checkout's commit, with ``+ changes`` when its files differ from it."""
    head = _cmd(["git", "-C", str(_ROOT), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(
        ["git", "-C", str(_ROOT), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    ).stdout.strip()
    return f"{head} + changes" if dirty else head


def core_split() -> str:
    if SUT_CORES is None:
        return "1 core: no pinning (server, Envoy and load generator share it)."
    return (
        f"The authorization server (a floor or extauthz, 1 worker) alone on core {SUT_CORES} "
        f"(`taskset -c {SUT_CORES}`); the load generator (h2load / wrk) and the orchestrator "
        f"on core {LOAD_CORES}. Envoy (`--concurrency 1`, all threads pinned with "
        f"`taskset -a -p -c {ENVOY_CORES}`) shares core {ENVOY_CORES} with wrk, so behind "
        f"Envoy the server keeps core {SUT_CORES} to itself as in the direct runs; the Envoy "
        "rows without ext_authz leave that core idle. Two-worker runs (`*_2w`): workers and "
        f"h2load all on cores {ALL_CORES} (they cannot be separated on 2 cores), so their rps "
        "is *not* comparable 1:1 with the 1-worker rows; compare their CPU µs/request, "
        "reported per worker (median CPU seconds of each worker over the run)."
    )


_ROOT = Path(__file__).resolve().parent.parent
# A path to a file the bench writes into its work directory; group 1 is that directory.
_WORKDIR_FILE = re.compile(
    r"(\S+)/(?:[^/\s]+\.(?:extauthz\.yaml|check\.bin|h2load\.log|pyspy\.raw|perf\.data|json|pem)"
    r"|[^/\s]+\.envoy/)"
)


def portable(command: str) -> str:
    """A command as the report prints it, without paths of this machine: the bench's
    work directory becomes ``$WORKDIR``, the repository's own paths become relative to
    its root (the bench runs every command from there), a program found on ``PATH`` its
    bare name, the home directory ``~``, a token ``$TOKEN``."""
    for workdir in sorted(set(_WORKDIR_FILE.findall(command)), key=len, reverse=True):
        command = command.replace(workdir + "/", "$WORKDIR/")
    command = command.replace(f"{_ROOT}/", "")
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        if folder.startswith("/"):
            command = re.sub(rf"(?<![^\s'\"]){re.escape(folder.rstrip('/'))}/(?=[^/\s]+(\s|$))",
                             "", command)  # fmt: skip
    try:
        home = str(Path.home()).rstrip("/")
    except RuntimeError:  # no home directory to hide
        home = ""
    if home:
        command = command.replace(home + "/", "~/")
    # The sample tokens (signed by a key of this run only) are no business of the page.
    return _JWS.sub("$TOKEN", command)


#: A compact JWS: three base64url segments, the first a JSON object ("eyJ").
_JWS = re.compile(r"eyJ[\w-]*\.[\w-]+\.[\w-]*")


def markdown(run: Run, svg_name: str | None = None) -> str:
    """The whole report of ``run``: the sections of the parts it was asked for, then the
    machine, the commands and what limits each number."""
    L = ["# Benchmarks\n", intro(run)]
    if svg_name:
        L.append(f"![throughput chart]({svg_name})\n")
    for part in PARTS:
        if part in run.parts:
            L.extend(section(part, run))
    L.extend(machine_section(run.info))
    L.extend(commands_section(command_entries(run)))
    L.append(LIMITS)
    return "\n".join(L)


def intro(run: Run) -> str:
    """The opening paragraph: which command, when, at which commit, on what."""
    info = run.info
    took = f", in {run.seconds / 60:.0f} min" if run.seconds >= 60 else ""
    machine = (f"{info.get('cpu', 'an unknown CPU')} ({info.get('nproc', '?')} cores, Linux "
               f"{info.get('kernel', '?')}, Python {info.get('python', '?')}; every version "
               "under [Machine](#machine))")  # fmt: skip
    smoke = " — **smoke run: correctness only, figures meaningless**" if run.smoke else ""
    return (
        f"Generated by `{portable(run.argv)}` on {run.when}, at commit "
        f"{info.get('commit', 'unknown')}{took}, on {machine}{smoke}. Each figure is the "
        f"median of {run.repeat} run(s) of {run.duration:g} s; contenders alternate within "
        "each repeat (order reversed on odd repeats), every run starts fresh processes and "
        "first proves the contender answers correctly. A ratio is the median of per-repeat "
        "ratios (each run over its own repeat's baseline), which cancels slow drift of "
        "this VM's speed. Method: a Python gRPC server's throughput is bounded by grpcio's "
        "own per-call cost, so what counts are ratios measured side by side in one run: "
        "to do-nothing Check servers (`floor` on `grpc.aio`, `floor_sync` on grpcio's "
        "synchronous server, extauthz's serving model) when calling directly, to Envoy "
        "alone through Envoy, and for the two doors to do-nothing servers behind the same "
        "Envoy. h2load sends gRPC requests (a serialized CheckRequest behind the 5-byte "
        "gRPC frame header; `content-type: application/grpc`, `te: trailers`) straight to "
        "the server, wrk sends HTTP through Envoy (the latency rows: h2load at a constant "
        "rate). CPU µs/req is the user + system CPU time of the process and its children "
        "(`/proc/<pid>/stat`) over the run, divided by the requests answered. The "
        "profile and DPoP sections say how they measure.\n\n"
        "Regenerate this page and its chart, every section, with `python -m bench` (the "
        "profile needs py-spy: see its section). To measure one part again, run "
        "`python -m bench --only PART` (a group: " + ", ".join(f"`{g}`" for g in TITLES)
        + "; or `rss`, `dpop`, `profile`, or contender names), then "
        "`python -m bench.merge <workdir>/results.json` puts its sections into this page.\n"
    )  # fmt: skip


def section(part: str, run: Run) -> list[str]:
    """The lines of one part's section (empty when ``run`` has nothing for it)."""
    if part == "profile":
        return profile_report.section(HEADINGS[part], run)
    if part == "dpop":
        return dpop_report.section(HEADINGS[part], run)
    if part == "memory":
        return memory_section(run.rss, run.rss_error)
    if part in SECTIONS:
        return SECTIONS[part](run.outcomes)
    if part == "tracing" and part not in run.extra:
        return [f"{HEADINGS[part]}\n",
                "*Not measured in this run:* `python -m bench --only tracing`, then "
                "`python -m bench.merge <workdir>/results.json`, measures it into this page; "
                "`python -m bench.tracing_cost` alone prints the table.\n"]  # fmt: skip
    return list(run.extra.get(part, []))


def grpc_section(outcomes: dict[str, Outcome]) -> list[str]:
    if not any(c.group == "grpc" and c.name in outcomes for c in CONTENDERS):
        return []
    L = [f"{HEADINGS['grpc']}\n"]
    L.append("Two floors, each a do-nothing servicer answering a prebuilt OK: `floor` on "
             "`grpc.aio`, which the targets are set against, and `floor_sync` on grpcio's "
             "synchronous server on extauthz's own pool, with as many threads as its "
             "`server.grpc_threads`: the serving model extauthz runs on. The "
             "`× floor_sync` column is the share of that model's throughput that extauthz "
             "keeps once its own code runs.\n")  # fmt: skip
    L.append("| contender | what | median rps | × floor (grpc.aio) | × floor_sync | target | "
             "server CPU µs/req | runs (rps) |")  # fmt: skip
    L.append("|---|---|---:|---:|---:|---|---:|---|")
    for c in CONTENDERS:
        if c.group != "grpc" or c.name not in outcomes:
            continue
        o = outcomes[c.name]
        to_floor = ratio_to(o, "floor", outcomes) if c.name != "floor" else None
        to_sync = ratio_to(o, "floor_sync", outcomes) if c.name != "floor_sync" else None
        target = "; ".join(v.markdown(c.baseline) for v in verdicts(c, outcomes)) or "–"
        cpu = _fmt(o.cpu_us(), ",.0f")
        if c.workers > 1 and o.runs:
            cpu += f" ({o.per_worker_cpu()})"
        L.append(f"| `{c.name}` | {c.what} | {_cell(o)} | {_fmt(to_floor, '.2f')} | "
                 f"{_fmt(to_sync, '.2f')} | {target} | {cpu} | {_runs(o)} |")  # fmt: skip
    L.append("")
    return L


def envoy_section(outcomes: dict[str, Outcome]) -> list[str]:
    if not any(c.group == "envoy" and c.name in outcomes for c in CONTENDERS):
        return []
    L = [f"{HEADINGS['envoy']}\n"]
    L.append("| contender | what | median rps | × envoy_alone | Envoy CPU µs/req | "
             "extauthz CPU µs/req | runs (rps) |")  # fmt: skip
    L.append("|---|---|---:|---:|---:|---:|---|")
    for c in CONTENDERS:
        if c.group != "envoy" or c.name not in outcomes:
            continue
        o = outcomes[c.name]
        r = _ratio(o, outcomes)
        ext = _fmt(o.cpu_us("server")) if c.server else "–"
        L.append(f"| `{c.name}` | {c.what} | {_cell(o)} | {_fmt(r, '.2f')} | "
                 f"{_fmt(o.cpu_us('envoy'))} | {ext} | {_runs(o)} |")  # fmt: skip
    L.append("")
    return L


def http_section(outcomes: dict[str, Outcome]) -> list[str]:
    rows = [c for c in CONTENDERS if c.group == "http" and c.name in outcomes]
    if not rows:
        return []
    L = [f"{HEADINGS['http']}\n"]
    L.append("The same Envoy (one worker thread, `direct_response`), wrk and core split as "
             "the other Envoy rows; ext_authz asks the server on core 0 over gRPC (`grpc_service`, "
             "HTTP/2, one connection) or over HTTP/1.1 (`http_service`: `allowed_headers` "
             "`authorization`, `authorization_response.allowed_upstream_headers` `x-user-id`, "
             "timeout 1 s, `failure_mode_allow: false`; a pool of kept-alive connections, one "
             "request at a time on each). On the gRPC door extauthz runs the config of "
             "`envoy_extauthz_cache`; the HTTP door's runs add `server.http` (`request` "
             "mode) and `claims_to_headers: {x-user-id: sub}`, so that its answer carries "
             "the header the HTTP floors send. The floors allow every "
             "request without looking at it: `bench/floor.py` (grpc.aio), "
             "`bench/http_floor.py` (an asyncio Protocol on httptools, as the door is "
             "written, answering `200` with `x-user-id`; `--impl aiohttp`: the same from "
             "an aiohttp low-level server). Server CPU is the floor's or extauthz's "
             "process.\n")  # fmt: skip
    L.append("| contender | what | median rps | ratio | server CPU µs/req | Envoy CPU µs/req "
             "| targets | runs (rps) |")  # fmt: skip
    L.append("|---|---|---:|---|---:|---:|---|---|")
    for c in rows:
        o = outcomes[c.name]
        r = _ratio(o, outcomes)
        ratio = f"{r:.2f}× `{c.baseline}`" if r is not None else "–"
        targets = "; ".join(v.markdown() for v in verdicts(c, outcomes)) or "–"
        L.append(f"| `{c.name}` | {c.what} | {_cell(o)} | {ratio} | "
                 f"{_fmt(o.cpu_us('server'))} | {_fmt(o.cpu_us('envoy'))} | {targets} | "
                 f"{_runs(o)} |")  # fmt: skip
    L.append("")
    L.append(which_door(outcomes))
    return L


def which_door(outcomes: dict[str, Outcome]) -> str:
    """The "Which door" paragraph; its figures come from ``outcomes`` when measured."""
    figures = ""
    g, h = outcomes.get("envoy_grpc_cache"), outcomes.get("envoy_http_cache")
    if g is not None and h is not None:
        gs, hs = g.cpu_us("server"), h.cpu_us("server")
        ge, he = g.cpu_us("envoy"), h.cpu_us("envoy")
        r = ratio_to(h, g.name, outcomes)
        if gs and hs and ge and he and r:
            less = f"{gs / hs:.1f}× less" if hs < gs else f"{hs / gs:.1f}× more"
            figures = (f" Behind Envoy, on a token-cache hit here, extauthz spent {hs:,.0f} µs "
                       f"of CPU per request through the HTTP door against {gs:,.0f} µs "
                       f"through the gRPC door ({less}), Envoy {he:,.0f} against {ge:,.0f} "
                       f"µs, and the pair answered {r:.2f}× the requests per second")  # fmt: skip
            cheaper = hs < gs and he < ge
            figures += ": where CPU counts, it is the cheaper door." if cheaper else "."
    return ("**Which door.** Choose the HTTP door (`server.http`) for proxies that can only "
            "ask over HTTP (NGINX `auth_request`, Traefik `ForwardAuth`, Caddy "
            f"`forward_auth`).{figures} Choose the gRPC door when a route needs what "
            "`http_service` cannot carry: per-route `context_extensions` (no "
            "`extauthz_rule` per route: over HTTP extauthz picks the rule from the path, "
            "method and host), the request body (sent only with `with_request_body`; "
            "extauthz never reads it anyway), and dynamic metadata other than the strings "
            "`dynamic_metadata_from_headers` copies from the answer's headers (the gRPC "
            "door returns `provider`, `rule`, `iss`, `sub` and `claims`).\n")  # fmt: skip


ALONE, FLOOR = "latency_envoy_alone", "latency_envoy_floor"


def levels_of(outcomes: dict[str, Outcome]) -> list[str]:
    """The rate labels of the latency runs, in the order they ran (1,000 rps first)."""
    seen: dict[str, None] = {}
    for c in CONTENDERS:
        o = outcomes.get(c.name)
        if c.group == "latency" and o is not None:
            for r in o.runs:
                seen.update((k, None) for k in r.rates if k != "max" and "|" not in k)
    return list(seen)


def _added(o: Outcome, base: Outcome | None, level: str) -> str:
    if base is None:
        return "–"
    vals = []
    for pct in ("50", "90", "99"):
        v, b = o.latency(pct, level), base.latency(pct, level)
        vals.append(None if v is None or b is None else v - b)
    return " / ".join(_fmt(v, "+.2f") for v in vals)


def latency_section(outcomes: dict[str, Outcome]) -> list[str]:
    lat = [c for c in CONTENDERS if c.group == "latency" and c.name in outcomes]
    if not lat:
        return []
    L = [f"{HEADINGS['latency']}\n"]
    L.append(
        "The same Envoy, servers and cores as the Envoy rows. Each run first drives the "
        "contender as fast as it can (wrk, 32 connections, closed loop, half the run's "
        "duration; also its warm-up): *max rps*. Then h2load sends HTTP/1.1 requests at a "
        "constant rate R, on schedule whether or not the answers came back (open loop), "
        "for R × the run's duration requests: `h2load --h1 -c N -r ⌈N/10⌉ --rate-period "
        "1ms --rps round(R/N) -n <R × duration> --log-file <file>`, N = "
        f"⌈R / {drivers.RATE_PER_CLIENT}⌉ connections. h2load's rate timer ticks per "
        "connection, every 1/(R/N) ≥ 10 ms from the moment it connected; connections made "
        "together would send together (10 requests at once every 10 ms at 1,000 rps), so "
        "a tenth of them connect each millisecond and their requests interleave (at "
        "1,000 rps: one per millisecond, give or take h2load sharing its core with Envoy). "
        "A connection carries one request at a time, so a request waits for its own "
        "connection only when the answer before it took 10 ms or more. `--log-file` has "
        "every request's send time and its time from sending it to the end of its "
        "answer: *achieved rps* is the requests over the time from the first send to the "
        "last, p50/p90/p99/p99.9 "
        "are nearest-rank percentiles over all requests of a run, then the median over "
        "runs. The rates are the same for every contender: 1,000 rps, and 70 % of each "
        "extauthz contender's maximum, measured once before the repeats (its *max rps* "
        "below is the median of the repeats, so it can differ a little); a contender "
        "skips another's 70 % rate above 80 % of its own maximum, where it would measure "
        "its own queue. *Added* is the difference of the medians at the same rate: over Envoy "
        "alone (no ext_authz filter) and over Envoy + the do-nothing `grpc.aio` server "
        "(the Python gRPC floor). This replaces the closed-loop wrk `delay()` pacing "
        "used before, where a late answer also delayed the next request.\n"
    )  # fmt: skip
    L.append("| contender | rate | max rps | asked rps | achieved rps | p50 ms | p90 ms | "
             "p99 ms | p99.9 ms | added over Envoy alone p50 / p90 / p99 | added over "
             "Envoy + floor p50 / p90 / p99 | target (added p99 over Envoy alone) |")  # fmt: skip
    L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for c in lat:
        o = outcomes[c.name]
        if o.status != "ok":
            L.append(f"| `{c.name}` | {_cell(o)}: {o.message} | | | | | | | | | | |")
    alone, floor = outcomes.get(ALONE), outcomes.get(FLOOR)
    for level in levels_of(outcomes):
        for c in lat:
            o = outcomes[c.name]
            if o.status != "ok":
                continue
            asked = o.rate(f"{level}|target")
            achieved = o.rate(level)
            head = f"| `{c.name}` | {level} | {_fmt(o.rps)} |"
            if achieved is None:
                L.append(f"{head} – | not run: above {SKIP_ABOVE:.0%} of its maximum "
                         "| | | | | | | |")  # fmt: skip
                continue
            over_alone = _added(o, alone, level) if c.name != ALONE else "–"
            over_floor = _added(o, floor, level) if c.name not in (ALONE, FLOOR) else "–"
            target = "–"
            if c.name != ALONE and alone is not None:
                v, b = o.latency("99", level), alone.latency("99", level)
                a = None if v is None or b is None else v - b
                target = f"≤ {P99_ADDED_TARGET_MS:g} ms " + _verdict(
                    None if a is None else a <= P99_ADDED_TARGET_MS
                )
            L.append(f"{head} {_fmt(asked)} | {_fmt(achieved)} | "
                     + " | ".join(_fmt(o.latency(p, level), ".2f")
                                  for p in ("50", "90", "99", "99.9"))
                     + f" | {over_alone} | {over_floor} | {target} |")  # fmt: skip
    L.append("")
    return L


#: The sections of the contender groups, in document order (keys of TITLES).
SECTIONS: dict[str, Callable[[dict[str, Outcome]], list[str]]] = {
    "grpc": grpc_section,
    "envoy": envoy_section,
    "http": http_section,
    "latency": latency_section,
}


def memory_section(rss: RssResult | None, rss_error: str | None) -> list[str]:
    if rss is None and rss_error is None:
        return []
    L = [f"{HEADINGS['memory']}\n"]
    L.append("| contender | tokens | RSS at start MB | VmHWM MB | RSS at end MB | target |")
    L.append("|---|---:|---:|---:|---:|---|")
    if rss is not None:
        L.append(f"| `rss` | {rss.tokens:,} distinct EdDSA | {rss.rss_start_mb:.1f} | "
                 f"{rss.hwm_mb:.1f} | {rss.rss_end_mb:.1f} | ≤ {RSS_TARGET_MB:g} MB "
                 f"{_verdict(rss.hwm_mb <= RSS_TARGET_MB)} |")  # fmt: skip
        L.append(f"\nOne worker, default `token_cache_size` (100,000): every token is a "
                 f"miss that is verified and cached; {rss.tokens:,} Check calls in "
                 f"{rss.seconds:.1f} s from {4} gRPC channels × 16 in flight. VmHWM is "
                 "the peak resident set from `/proc/<pid>/status`.\n")  # fmt: skip
    else:
        L.append(f"| `rss` | error | | | | {rss_error} |\n")
    return L


def machine_section(info: dict[str, str]) -> list[str]:
    L = [f"{HEADINGS['machine']}\n"]
    L.append("| | |\n|---|---|")
    for key, val in info.items():
        L.append(f"| {key} | {val} |")
    L.append(f"\n**Core split.** {core_split()}\n")
    return L


def command_lines(name: str, outcomes: dict[str, Outcome]) -> list[str]:
    """``# name`` and the commands of the contender's last run (none if it never ran)."""
    done = outcomes.get(name)
    if done is None or not done.runs:
        return []
    return [f"# {name}", *(portable(cmd) for cmd in done.runs[-1].commands)]


def command_entries(run: Run) -> dict[str, list[str]]:
    """Each entry of the Commands block (``# name`` and its commands), by name."""
    out = {c.name: lines for c in CONTENDERS if (lines := command_lines(c.name, run.outcomes))}
    if run.rss is not None:
        out["rss"] = ["# rss (client: grpc.aio in the bench process)", portable(run.rss.command)]
    if run.dpop is not None and run.dpop_command:
        out["dpop"] = ["# dpop (in process: Authorizer.check, no load generator; starts its "
                       "own redis-server on the load generator's core)",
                       portable(run.dpop_command)]  # fmt: skip
    if run.profile is not None:
        for case in run.profile.cases:
            lines = run.profile.commands(case)
            if lines:
                out[f"profile.{case}"] = [f"# profile.{case}", *(portable(x) for x in lines)]
    return out


def entry_order(name: str) -> int:
    """Where an entry goes in the Commands block: contenders, rss, dpop, the profile."""
    names = [c.name for c in CONTENDERS] + ["rss", "dpop"]
    names += [f"profile.{case}" for case in profile.CASES]
    return names.index(name) if name in names else len(names)


def commands_section(entries: dict[str, list[str]]) -> list[str]:
    L = [f"{HEADINGS['commands']}\n"]
    L.append("Exact commands of the last run of each contender and part (ports are picked "
             "per run; "
             "paths are relative to the repository's root, `$WORKDIR` is the run's "
             "`--workdir`, a new temporary directory by default):\n")  # fmt: skip
    L.append("```sh")
    for name in sorted(entries, key=entry_order):
        L.extend(entries[name])
    L.append("```\n")
    L.append("extauthz config of the `rs256` runs (ports vary; the others differ only in "
             "`token_cache_size` (default 100000 = cache on) and `workers`; the HTTP door's "
             "add `http: {listen: ...}` and `claims_to_headers: {x-user-id: sub}`):\n")  # fmt: skip
    L.append("```yaml\n" + _sample_config() + "```\n")
    return L


def _runs(o: Outcome) -> str:
    return ", ".join(f"{x.rps:,.0f}" for x in o.runs) or o.message


def _sample_config() -> str:
    import yaml

    from .contenders import extauthz_config

    class _NoKeys:
        def jwks(self) -> dict[str, object]:
            return {}

    # Only Keys.jwks() is read; the sample shows a placeholder instead of real keys.
    cfg = extauthz_config(BY_NAME["rs256"], _NoKeys(), 9191, 9192)  # type: ignore[arg-type]
    cfg["providers"]["bench"]["jwks"] = "<inline JWKS: RS256 2048-bit, ES256 P-256, Ed25519>"
    return str(yaml.safe_dump(cfg, sort_keys=False))


LIMITS = """## What limits each number

- **floor**: grpcio's per-call cost in one Python process on `grpc.aio` (HTTP/2 framing
  in C-core, the hop into the asyncio loop, protobuf parse/serialise, the per-call
  task). The targets are set against it.
- **floor_sync**: the same do-nothing answer on grpcio's synchronous server, the model
  extauthz serves on: C-core's completion queue hands each call to a thread of
  extauthz's own pool (extauthz/server/pool.py), with no event loop in between. Every
  direct gRPC row of extauthz is bounded by it; the ratio to it is what extauthz's own
  code costs. The profile section splits both
  floors' CPU and extauthz's by where it goes.
- **cache_hit**: floor_sync + extauthz's own Python per request: CheckRequest →
  AuthRequest (Envoy's header map read in place, path normalisation), token extraction,
  BLAKE2b digest and cache lookup, claim re-checks, rule match, Prometheus counter and
  histogram, and the OK CheckResponse (reused from the per-token memo on a hit).
- **rs256 / es256 / eddsa** (token cache off): the above plus JWS parsing (joserfc's
  base64url, extauthz's strict JSON), one signature verification through
  `cryptography`/OpenSSL, and building the OK response (dynamic_metadata `Struct`
  written from the claims). RS256 verify is the cheapest (public exponent 65537); ES256
  and Ed25519 verify cost more per call.
- **`*_2w`**: two worker processes, but h2load shares their two cores, so rps is bounded
  by both together; per-worker CPU shows the split (SO_REUSEPORT hashes the 16 h2load
  connections over the workers, so the balance varies from run to run).
- **Through Envoy**: Envoy (one worker thread) and wrk share core 1, extauthz has core 0.
  Envoy alone and with jwt_authn is bounded by Envoy + wrk on that core. With ext_authz
  Envoy's own CPU per request rises several-fold (see the Envoy CPU column:
  the gRPC side call, the Check request build and the HTTP/2 codec; measured the same
  with the do-nothing floor as the authorization server, so it is Envoy's cost, not
  extauthz's), and the pair Envoy ↔ extauthz is a request/response ping-pong across
  cores with little batching, so extauthz's CPU per request is higher than under h2load.
- **HTTP door vs gRPC door**: the same Envoy, wrk and cores as above; only the side
  call differs. Over gRPC, Envoy builds a CheckRequest, frames it on one HTTP/2
  connection and parses a CheckResponse; the server pays grpcio's per-call cost (the
  `envoy_grpc_floor` row). Over HTTP, Envoy sends the request's head (the allowed
  headers, no body) on a kept-alive HTTP/1.1 connection and reads a bodiless answer;
  the server parses it with httptools (`envoy_http_floor`; aiohttp's request and
  response objects cost more, `envoy_http_floor_aiohttp`). What extauthz adds on top of
  each floor is its decision (shared by both doors) and each door's translation to and
  from it. Which core sets the pace: a row whose server CPU µs/req × rps is close to one
  second per second is bounded by the server on core 0 (the gRPC rows); the HTTP floors
  leave core 0 mostly idle and are bounded by Envoy + wrk on core 1, so their rps differ
  less than their CPU per request does.
- **Latency**: open loop at a constant rate, so a slow answer cannot slow the load
  down. At 1,000 rps (well under every contender's maximum) the added latency is the
  ext_authz round trip (Envoy → server → Envoy) plus scheduling; at 70 % of extauthz's
  maximum the server is busy 70 % of the time, so requests also queue behind each
  other in it. p99 and p99.9 are sensitive to scheduler noise on a 2-core VM (Python GC
  pauses, h2load and Envoy sharing a core).
- **RSS**: the interpreter + grpcio + cryptography + pydantic baseline, plus one cache
  entry (128-bit digest → verified claims and memoized decision) per distinct token.
"""


# ----------------------------------------------------------------------- SVG chart


def svg_chart(outcomes: dict[str, Outcome]) -> str:
    """Panels of horizontal bars (own scale each): direct gRPC, through Envoy, and the
    two doors through Envoy."""
    panels = []
    for group, title in (("grpc", "gRPC Check direct (h2load), median rps"),
                         ("envoy", "HTTP through Envoy (wrk), median rps"),
                         ("http", "HTTP door vs gRPC door through Envoy (wrk), median rps"),
                         ):  # fmt: skip
        rows = [(c, outcomes[c.name]) for c in CONTENDERS
                if c.group == group and c.name in outcomes]  # fmt: skip
        if rows:
            panels.append((title, rows))
    width, label_w, bar_w, row_h, top = 820, 210, 470, 26, 34
    y = 10
    parts: list[str] = []
    for title, rows in panels:
        parts.append(f'<text x="10" y="{y + 18}" class="t">{escape(title)}</text>')
        y += top
        vmax = max((o.rps or 0.0) for _, o in rows) or 1.0
        for c, o in rows:
            parts.append(f'<text x="{label_w - 8}" y="{y + 17}" class="l" '
                         f'text-anchor="end">{escape(c.name)}</text>')  # fmt: skip
            if o.rps is None:
                parts.append(f'<text x="{label_w + 4}" y="{y + 17}" class="v">'
                             f'{escape(_cell(o))}</text>')  # fmt: skip
            else:
                w = max(1.0, bar_w * o.rps / vmax)
                cls = "b0" if c.baseline is None else ("b2" if c.workers > 1 else "b1")
                ratio = _ratio(o, outcomes)
                txt = f"{o.rps:,.0f}" + (f"  ({ratio:.2f}× {c.baseline})" if ratio else "")
                parts.append(f'<rect x="{label_w}" y="{y + 4}" width="{w:.1f}" '
                             f'height="{row_h - 8}" class="{cls}"/>')  # fmt: skip
                parts.append(f'<text x="{label_w + w + 6:.1f}" y="{y + 17}" class="v">'
                             f"{escape(txt)}</text>")  # fmt: skip
            y += row_h
        y += 12
    height = y + 6
    style = (
        ".t{font:bold 14px sans-serif;fill:#222}.l{font:12px monospace;fill:#222}"
        ".v{font:12px sans-serif;fill:#333}.b0{fill:#9e9e9e}.b1{fill:#3b7dd8}.b2{fill:#7e57c2}"
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">\n<style>{style}</style>\n'
        f'<rect width="100%" height="100%" fill="#fff"/>\n' + "\n".join(parts) + "\n</svg>\n"
    )


def stdout_table(outcomes: dict[str, Outcome], rss: RssResult | None, rss_error: str | None) -> str:
    lines = [f"{'contender':<30} {'median rps':>12} {'ratio':>8}  target / latency"]
    for c in CONTENDERS:
        o = outcomes.get(c.name)
        if o is None or c.group == "http":
            continue
        r = _ratio(o, outcomes)
        measured = [v for v in verdicts(c, outcomes) if v.ok is not None]
        extra = "; ".join(v.plain(c.baseline) for v in measured)
        if c.group == "latency" and o.status == "ok":
            parts = []
            for level in levels_of(outcomes):
                if o.rate(level) is None:
                    continue
                ps = "/".join(_fmt(o.latency(p, level), ".2f") for p in ("50", "90", "99"))
                part = f"{level}: p50/p90/p99 {ps} ms"
                alone = outcomes.get(ALONE)
                v99 = o.latency("99", level)
                b99 = alone.latency("99", level) if alone and c.name != ALONE else None
                if b99 is not None and v99 is not None:
                    part += f" (added p99 {v99 - b99:+.2f})"
                parts.append(part)
            extra = "(max: closed loop) " + "; ".join(parts)
        if o.status == "error":
            extra = o.message
        lines.append(f"{c.name:<30} {_cell(o):>12} {_fmt(r, '.2f'):>8}  {extra}")
    if rss is not None:
        lines.append(f"{'rss':<30} {rss.hwm_mb:>9.1f} MB {'':>8}  VmHWM after {rss.tokens:,} "
                     f"tokens; target <= {RSS_TARGET_MB:g} MB: "
                     f"{'met' if rss.hwm_mb <= RSS_TARGET_MB else 'MISSED'}")  # fmt: skip
    elif rss_error is not None:
        lines.append(f"{'rss':<30} {'error':>12}  {rss_error}")
    http = [c for c in CONTENDERS if c.group == "http" and c.name in outcomes]
    if http:
        if len(lines) == 1:
            lines.clear()  # nothing but the HTTP doors: no empty table above them
        else:
            lines.append("")
        lines.append(TITLES["http"] + " (CPU: us per request)")
        lines.append(f"{'contender':<30} {'median rps':>12} {'ratio':>6} {'to':<18} "
                     f"{'server':>7} {'envoy':>7}  targets")  # fmt: skip
        for c in http:
            o = outcomes[c.name]
            r = _ratio(o, outcomes)
            extra = (
                o.message
                if o.status == "error"
                else "; ".join(v.plain() for v in verdicts(c, outcomes))
            )
            lines.append(f"{c.name:<30} {_cell(o):>12} {_fmt(r, '.2f'):>6} "
                         f"{(c.baseline or '') if r is not None else '':<18} "
                         f"{_fmt(o.cpu_us('server')):>7} {_fmt(o.cpu_us('envoy')):>7}  "
                         f"{extra}")  # fmt: skip
    return "\n".join(lines)
