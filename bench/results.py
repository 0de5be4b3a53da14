"""What one ``python -m bench`` run measured, as the report and ``results.json`` hold it.

A run writes its :class:`Run` to ``<workdir>/results.json``; ``python -m bench.merge``
reads it back to put a partial run's sections into an existing report.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import dpop, profile
from .contenders import BY_NAME, RunResult
from .rss import RssResult

#: The parts of the report that measure something, in document order: the contender
#: groups, then what ``bench.profile``, ``bench.dpop`` and the RSS run measure.
#: ``tracing`` is a slot for a section another measurement fills (see ``Run.extra``).
PARTS = ("grpc", "envoy", "http", "profile", "dpop", "tracing", "latency", "memory")
GROUPS = ("grpc", "envoy", "http", "latency")


@dataclass
class Outcome:
    name: str
    status: str = "ok"  # ok | na | error | skipped
    message: str = ""
    runs: list[RunResult] = field(default_factory=list)

    @property
    def rps(self) -> float | None:
        return statistics.median(r.rps for r in self.runs) if self.runs else None

    def latency(self, pct: str, level: str = "") -> float | None:
        """Median over the runs of a percentile (ms), at one rate ``level`` if given."""
        key = f"{level}|{pct}" if level else pct
        vals = [r.latency_ms[key] for r in self.runs if key in r.latency_ms]
        return statistics.median(vals) if vals else None

    def rate(self, key: str) -> float | None:
        """Median over the runs of a latency run's rate (see ``RunResult.rates``)."""
        vals = [r.rates[key] for r in self.runs if key in r.rates]
        return statistics.median(vals) if vals else None

    def cpu_us(self, prefix: str = "") -> float | None:
        vals = [v for r in self.runs if (v := r.cpu_us_per_request(prefix)) is not None]
        return statistics.median(vals) if vals else None

    def per_worker_cpu(self) -> str:
        """Median CPU seconds per worker over the runs, e.g. ``5.1 s + 4.9 s``."""
        if not self.runs:
            return ""
        cols: list[list[float]] = []
        for r in self.runs:
            for i, v in enumerate(sorted(r.cpu.values(), reverse=True)):
                if i >= len(cols):
                    cols.append([])
                cols[i].append(v)
        return " + ".join(f"{statistics.median(c):.1f} s" for c in cols)


@dataclass
class Run:
    """One invocation: how it was asked for, the machine, and every part it measured.

    ``parts`` are the parts it was asked to measure (all of :data:`PARTS` without
    ``--only``); a part asked for but not measured still gets its section, which says
    why and how to measure it (the profile without py-spy, a DPoP run that failed)."""

    argv: str
    duration: float
    repeat: int
    smoke: bool
    when: str
    info: dict[str, str]
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    parts: list[str] = field(default_factory=lambda: list(PARTS))
    seconds: float = 0.0  # the run's wall time
    rss: RssResult | None = None
    rss_error: str | None = None
    dpop: dpop.Result | None = None
    dpop_error: str | None = None
    dpop_command: str = ""
    profile: profile.Profile | None = None
    profile_skipped: str | None = None  # why it did not run (no py-spy, --no-profile, ...)
    profile_error: str | None = None
    #: Sections another measurement produced, by part key (e.g. ``tracing``): their
    #: lines, heading first. The report puts them in their slot of :data:`PARTS`.
    extra: dict[str, list[str]] = field(default_factory=dict)

    def measured(self, part: str) -> bool:
        """Whether this run has figures for ``part`` (what a merge may replace)."""
        if part in GROUPS:
            return any(BY_NAME[n].group == part for n in self.outcomes)
        if part == "memory":
            return self.rss is not None or self.rss_error is not None
        if part == "dpop":
            return self.dpop is not None
        if part == "profile":
            return self.profile is not None
        return part in self.extra

    def failed(self) -> list[str]:
        """What was asked for and could not be measured (the exit status says so)."""
        out = [o.name for o in self.outcomes.values() if o.status == "error"]
        out += [name for name, err in (("rss", self.rss_error), ("dpop", self.dpop_error),
                                       ("profile", self.profile_error)) if err]  # fmt: skip
        return out

    # ------------------------------------------------------------------- results.json

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def dump(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Run:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        if "when" not in data or "info" not in data:
            raise SystemExit(f"{path}: no run date or machine info (written by an older bench)")
        outcomes = {}
        for name, o in data["outcomes"].items():
            if name not in BY_NAME:
                raise SystemExit(f"{path}: unknown contender {name!r}")
            runs = [RunResult(**r) for r in o["runs"]]
            outcomes[name] = Outcome(name, o["status"], o["message"], runs)
        rss = data.get("rss")
        run = cls(
            data["argv"], float(data["duration"]), int(data["repeat"]), bool(data["smoke"]),
            data["when"], {str(k): str(v) for k, v in data["info"].items()}, outcomes,
            seconds=float(data.get("seconds", 0.0)),
            rss=RssResult(**rss) if isinstance(rss, dict) else None,
            rss_error=rss if isinstance(rss, str) else data.get("rss_error"),
            dpop=dpop.Result.from_json(data["dpop"]) if data.get("dpop") else None,
            dpop_error=data.get("dpop_error"),
            dpop_command=str(data.get("dpop_command", "")),
            profile=profile.Profile.from_json(data["profile"]) if data.get("profile") else None,
            profile_skipped=data.get("profile_skipped"),
            profile_error=data.get("profile_error"),
            extra={str(k): [str(x) for x in v] for k, v in data.get("extra", {}).items()},
        )  # fmt: skip
        # Written before the run recorded its parts: what it measured.
        run.parts = list(data.get("parts") or [p for p in PARTS if run.measured(p)])
        return run
