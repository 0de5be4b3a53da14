"""``python -m bench.merge``: put the groups of a partial run into an existing report.

    python -m bench --only http --out /tmp/bench-http.md   # ends: results: <workdir>/results.json
    python -m bench.merge <workdir>/results.json            # into docs/benchmarks.md (and .svg)

A full ``python -m bench`` takes long. A partial run measures some groups side by side;
the merge then, in the report:

- replaces the sections of the groups the partial run measured (or inserts them in
  document order), each opening with a note that names the run, its date and how its
  machine table differs from the document's;
- replaces those contenders' entries in the Commands block;
- refreshes the generator's fixed text (the core split, the Commands notes, "What
  limits each number"), which no measurement feeds;
- redraws the chart from the document's own tables (their per-run rps) and the new runs.

Everything else (the other tables, the Machine table, the top line) stays from the run
that wrote it; the top says that sections with a *Merged* note come from later runs.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import report
from .contenders import BY_NAME, CONTENDERS, RunResult
from .report import TITLES, Outcome

MERGED_MARK = "*Merged"
INTRO_NOTE = (
    "Sections that open with a *Merged* note come from a later partial run "
    "(`python -m bench.merge`), named in that note; the rest is from the run above.\n"
)
LIMITS_HEADING = "## What limits each number"


@dataclass
class Results:
    """A run's ``results.json`` (written by ``python -m bench`` into its workdir)."""

    argv: str
    duration: float
    repeat: int
    smoke: bool
    when: str
    info: dict[str, str]
    outcomes: dict[str, Outcome] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> Results:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        if "when" not in data or "info" not in data:
            raise SystemExit(f"{path}: no run date or machine info (written by an older bench)")
        outcomes = {}
        for name, o in data["outcomes"].items():
            if name not in BY_NAME:
                raise SystemExit(f"{path}: unknown contender {name!r}")
            runs = [RunResult(**r) for r in o["runs"]]
            outcomes[name] = Outcome(name, o["status"], o["message"], runs)
        return cls(data["argv"], float(data["duration"]), int(data["repeat"]),
                   bool(data["smoke"]), data["when"], dict(data["info"]), outcomes)  # fmt: skip

    @property
    def groups(self) -> list[str]:
        present = {BY_NAME[n].group for n in self.outcomes}
        return [g for g in TITLES if g in present]


# ----------------------------------------------------------------------- markdown blocks


def split_sections(text: str) -> list[str]:
    """The preamble, then one block per ``## `` heading (headings in code fences are
    not headings); joining the blocks gives ``text`` back."""
    blocks: list[list[str]] = [[]]
    fenced = False
    for line in text.splitlines(keepends=True):
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and line.startswith("## "):
            blocks.append([])
        blocks[-1].append(line)
    return ["".join(b) for b in blocks]


def _key(block: str) -> str | None:
    """The group a section belongs to, or its heading for the other sections."""
    first = block.split("\n", 1)[0]
    if not first.startswith("## "):
        return None
    for group, title in TITLES.items():
        if first.startswith(f"## {title}"):
            return group
    return first


def _table(block: str) -> dict[str, str]:
    """``| key | value |`` rows of a two-column table."""
    rows = {}
    for line in block.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 2 and cells[0] and not cells[0].startswith("-"):
            rows[cells[0]] = cells[1]
    return rows


def note(res: Results, doc_info: dict[str, str]) -> str:
    differs = [f"{k} {v} (table: {doc_info[k]})" for k, v in res.info.items()
               if k in doc_info and doc_info[k] != v]  # fmt: skip
    added = [f"{k} {v}" for k, v in res.info.items() if k not in doc_info]
    machine = "the Machine table below applies"
    if differs:
        machine = "the Machine table below applies except " + ", ".join(differs)
    if added:
        machine += "; also " + ", ".join(added)
    smoke = " — **smoke run: correctness only, figures meaningless**" if res.smoke else ""
    return (f"{MERGED_MARK} from a separate run:* `{report.portable(res.argv)}` on "
            f"{res.when}{smoke}; each figure is the median of {res.repeat} run(s) of "
            f"{res.duration:g} s, ratios only between contenders of that run; "
            f"{machine}.\n")  # fmt: skip


def _section(group: str, res: Results, doc_info: dict[str, str]) -> str:
    lines = report.SECTIONS[group](res.outcomes)
    lines.insert(1, note(res, doc_info))
    return "\n".join(lines) + "\n"


_ENTRY = re.compile(r"^# (\S+)")


def _commands(block: str, res: Results) -> str:
    """The Commands section: fresh notes, the old entries but the re-run contenders'."""
    entries: dict[str, list[str]] = {}
    inside, current = False, ""
    for line in block.splitlines():
        if line.startswith("```"):
            if inside:
                break
            inside = line.strip() == "```sh"
            continue
        if inside:
            m = _ENTRY.match(line)
            if m:
                current = m.group(1)
                entries[current] = []
            if current:
                entries[current].append(line)
    for name in res.outcomes:
        lines = report.command_lines(name, res.outcomes)
        if lines:
            entries[name] = lines
    order = {c.name: i for i, c in enumerate(CONTENDERS)}
    names = sorted(entries, key=lambda n: order.get(n, len(order)))
    body = [line for n in names for line in entries[n]]
    fresh = "\n".join(report.commands_section({}, None)) + "\n"
    head, tail = fresh.split("```sh\n```\n", 1)
    return head + "```sh\n" + "".join(f"{line}\n" for line in body) + "```\n" + tail


def merge(doc: str, res: Results) -> str:
    blocks = split_sections(doc)
    machine = next((b for b in blocks if _key(b) == "## Machine"), "")
    doc_info = _table(machine)
    order = [*TITLES, "## Memory", "## Machine", "## Commands", LIMITS_HEADING]
    for group in res.groups:
        new = _section(group, res, doc_info)
        keys = [_key(b) for b in blocks]
        if group in keys:
            blocks[keys.index(group)] = new
            continue
        later = order[order.index(group) + 1 :]
        at = next((i for i, k in enumerate(keys) if k in later), len(blocks))
        blocks.insert(at, new)
    for i, block in enumerate(blocks):
        key = _key(block)
        if key == "## Commands":
            blocks[i] = _commands(block, res)
        elif key == LIMITS_HEADING:
            blocks[i] = report.LIMITS
        elif key == "## Machine":
            blocks[i] = re.sub(r"^\*\*Core split\.\*\* .*$",
                               lambda _: f"**Core split.** {report.core_split()}",
                               block, count=1, flags=re.M)  # fmt: skip
    if INTRO_NOTE not in blocks[0]:
        blocks[0] = _after_first_paragraph(blocks[0], INTRO_NOTE)
    return "".join(blocks)


def _after_first_paragraph(preamble: str, text: str) -> str:
    """Insert ``text`` as a paragraph after the preamble's first paragraph below the title."""
    parts = preamble.split("\n\n")
    at = 2 if len(parts) > 2 else len(parts)
    return "\n\n".join([*parts[:at], text.rstrip("\n"), *parts[at:]])


# ----------------------------------------------------------------------- the chart


def outcomes_from_tables(doc: str) -> dict[str, Outcome]:
    """The rps of every run in the document's throughput tables (for the chart)."""
    out: dict[str, Outcome] = {}
    for line in doc.splitlines():
        m = re.match(r"^\| `([^`]+)` \|", line)
        if not m or m.group(1) not in BY_NAME or BY_NAME[m.group(1)].group == "latency":
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        name, median, runs = m.group(1), cells[2], cells[-1]
        o = Outcome(name)
        if re.fullmatch(r"[\d,]+(\.\d+)?", median):
            o.runs = [RunResult(float(x.replace(",", "")), 0) for x in runs.split(", ")]
        else:
            o.status = {"n/a": "na", "not run": "skipped"}.get(median.split(" (")[0], "error")
            o.message = runs
        out[name] = o
    return out


def chart(doc: str, res: Results) -> str:
    measured = set(res.groups)
    old = outcomes_from_tables(doc)
    merged = {n: o for n, o in old.items() if BY_NAME[n].group not in measured}
    merged.update(res.outcomes)
    return report.svg_chart(merged)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.merge", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("results", type=Path, help="results.json of a (partial) run")
    p.add_argument("--into", type=Path, default=Path("docs/benchmarks.md"),
                   help="the report to merge into (default docs/benchmarks.md); its .svg "
                   "chart is redrawn")  # fmt: skip
    args = p.parse_args(argv)
    res = Results.load(args.results)
    doc = args.into.read_text(encoding="utf-8")
    merged = merge(doc, res)
    args.into.write_text(merged, encoding="utf-8")
    svg = args.into.with_suffix(".svg")
    svg.write_text(chart(merged, res), encoding="utf-8")
    print(f"merged {', '.join(res.groups)} from {args.results} into {args.into} and {svg}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
