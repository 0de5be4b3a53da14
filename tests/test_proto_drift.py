"""The committed generated code in extauthz/_proto must match protos/ exactly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "extauthz" / "_proto"
SCRIPT = ROOT / "scripts" / "gen_protos.py"


def _tree(base: Path) -> dict[str, bytes]:
    return {
        p.relative_to(base).as_posix(): p.read_bytes()
        for p in sorted(base.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    out = tmp_path / "_proto"
    subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], check=True, cwd=ROOT)
    fresh, committed = _tree(out), _tree(COMMITTED)
    only_fresh = sorted(set(fresh) - set(committed))
    only_committed = sorted(set(committed) - set(fresh))
    changed = sorted(k for k in set(fresh) & set(committed) if fresh[k] != committed[k])
    problems = []
    if only_fresh:
        problems.append(f"missing from extauthz/_proto: {only_fresh}")
    if only_committed:
        problems.append(f"stale in extauthz/_proto: {only_committed}")
    if changed:
        problems.append(f"differing: {changed}")
    assert not problems, (
        "extauthz/_proto is out of date with protos/ ("
        + "; ".join(problems)
        + "). Run `python scripts/gen_protos.py` and commit the result."
    )
