"""``python -m bench.merge``: put the parts of a partial run into an existing report.

    python -m bench --only http                    # ends: results: <workdir>/results.json
    python -m bench.merge <workdir>/results.json   # into docs/benchmarks.md (and .svg)

A full ``python -m bench`` writes the whole report, and takes long. A partial run
(``--only``) measures some parts (contender groups, ``rss``, ``dpop``, ``profile``) side by
side; the merge then, in the report:

- replaces the sections of the parts the partial run measured (or inserts them in
  document order), each opening with a note that names the run, its date and how its
  machine table differs from the document's; a part it was asked for but could not
  measure (the profile without py-spy) leaves the report's section as it is;
- replaces those parts' entries in the Commands block;
- refreshes the generator's fixed text (the core split, the Commands notes, "What
  limits each number"), which no measurement feeds;
- redraws the chart from the document's own tables (their per-run rps) and the new runs.

Every other section stays as it was, one the generator does not know included: a merge
drops nothing. The top says that sections with a *Merged* note come from later runs.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from . import report
from .contenders import BY_NAME, RunResult
from .report import HEADINGS, Outcome
from .results import GROUPS, PARTS, Run

MERGED_MARK = "*Merged"
INTRO_NOTE = (
    "Sections that open with a *Merged* note come from a later partial run "
    "(`python -m bench.merge`), named in that note; the rest is from the run above.\n"
)


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
    """The part or section a block is (a key of ``HEADINGS``), else its heading."""
    first = block.split("\n", 1)[0]
    if not first.startswith("## "):
        return None
    return next((k for k, heading in HEADINGS.items() if first.startswith(heading)), first)


def _table(block: str) -> dict[str, str]:
    """``| key | value |`` rows of a two-column table."""
    rows = {}
    for line in block.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 2 and cells[0] and not cells[0].startswith("-"):
            rows[cells[0]] = cells[1]
    return rows


def note(res: Run, doc_info: dict[str, str], part: str = "grpc") -> str:
    differs = [f"{k} {v} (table: {doc_info[k]})" for k, v in res.info.items()
               if k in doc_info and doc_info[k] != v]  # fmt: skip
    added = [f"{k} {v}" for k, v in res.info.items() if k not in doc_info]
    machine = "the Machine table below applies"
    if differs:
        machine = "the Machine table below applies except " + ", ".join(differs)
    if added:
        machine += "; also " + ", ".join(added)
    smoke = " — **smoke run: correctness only, figures meaningless**" if res.smoke else ""
    figures = ""
    if part in GROUPS:
        figures = (f"; each figure is the median of {res.repeat} run(s) of {res.duration:g} s, "
                   "ratios only between contenders of that run")  # fmt: skip
    return (f"{MERGED_MARK} from a separate run:* `{report.portable(res.argv)}` on "
            f"{res.when}{smoke}{figures}; {machine}.\n")  # fmt: skip


def _section(part: str, res: Run, doc_info: dict[str, str]) -> str:
    lines = report.section(part, res)
    lines.insert(1, note(res, doc_info, part))
    return "\n".join(lines) + "\n"


_ENTRY = re.compile(r"^# (\S+)")


def _commands(block: str, res: Run) -> str:
    """The Commands section: fresh notes, the old entries but the re-run parts'."""
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
    entries.update(report.command_entries(res))
    return "\n".join(report.commands_section(entries)) + "\n"


def merge(doc: str, res: Run) -> str:
    blocks = split_sections(doc)
    machine = next((b for b in blocks if _key(b) == "machine"), "")
    doc_info = _table(machine)
    order = list(HEADINGS)
    for part in [p for p in PARTS if res.measured(p)]:
        new = _section(part, res, doc_info)
        keys = [_key(b) for b in blocks]
        if part in keys:
            blocks[keys.index(part)] = new
            continue
        later = order[order.index(part) + 1 :]
        at = next((i for i, k in enumerate(keys) if k in later), len(blocks))
        blocks.insert(at, new)
    for i, block in enumerate(blocks):
        key = _key(block)
        if key == "commands":
            blocks[i] = _commands(block, res)
        elif key == "limits":
            blocks[i] = report.LIMITS
        elif key == "machine":
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


def chart(doc: str, res: Run) -> str:
    measured = {g for g in GROUPS if res.measured(g)}
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
    res = Run.load(args.results)
    doc = args.into.read_text(encoding="utf-8")
    merged = merge(doc, res)
    args.into.write_text(merged, encoding="utf-8")
    svg = args.into.with_suffix(".svg")
    svg.write_text(chart(merged, res), encoding="utf-8")
    parts = [p for p in PARTS if res.measured(p)]
    what = ", ".join(parts) or "no section (the run measured nothing); fixed text refreshed"
    print(f"merged {what} from {args.results} into {args.into} and {svg}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
