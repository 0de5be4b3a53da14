"""The committed generated code in extauthz/_proto must match protos/ exactly."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "extauthz" / "_proto"
SCRIPT = ROOT / "scripts" / "gen_protos.py"


# The generator writes its own version into the code it emits (a gRPC stamp, a protobuf
# comment and a runtime check). Those follow whichever grpcio-tools is installed; the
# drift this test guards is the schema, so they are compared separately below.
_STAMPS = (
    re.compile(rb"^GRPC_GENERATED_VERSION = '[^']*'$", re.M),
    re.compile(rb"^# Protobuf Python Version: .*$", re.M),
    re.compile(rb"(ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,)"
               rb"\s*\d+,\s*\d+,\s*\d+,"),
)  # fmt: skip


def _unstamped(data: bytes) -> bytes:
    for pattern in _STAMPS:
        data = pattern.sub(lambda m: m.group(1) if m.lastindex else b"<stamp>", data)
    return data


def _tree(base: Path) -> dict[str, bytes]:
    return {
        p.relative_to(base).as_posix(): _unstamped(p.read_bytes())
        for p in sorted(base.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split("."))


def _floor(package: str) -> tuple[int, ...]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        m = re.fullmatch(rf"{re.escape(package)}>=([\d.]+)", dep)
        if m:
            return _version(m.group(1))
    raise AssertionError(f"{package} has no '>=' floor in pyproject.toml dependencies")


def test_dependency_floors_cover_the_generated_code() -> None:
    """A user who installs the lowest versions pyproject allows can import the code
    (the generated modules refuse older grpcio/protobuf runtimes at import time)."""
    grpc_needs: set[tuple[int, ...]] = set()
    protobuf_needs: set[tuple[int, ...]] = set()
    for path in COMMITTED.rglob("*.py"):
        text = path.read_text()
        if m := re.search(r"^GRPC_GENERATED_VERSION = '([\d.]+)'", text, re.M):
            grpc_needs.add(_version(m.group(1)))
        if m := re.search(r"^# Protobuf Python Version: ([\d.]+)", text, re.M):
            protobuf_needs.add(_version(m.group(1)))
    assert protobuf_needs, "no generated protobuf module found"
    assert _floor("protobuf") >= max(protobuf_needs)
    if grpc_needs:
        assert _floor("grpcio") >= max(grpc_needs)


def test_the_joserfc_floor_is_the_one_security_md_names() -> None:
    """SECURITY.md lists the joserfc advisories behind the floor: pyproject may not
    allow an older joserfc, nor SECURITY.md name another floor."""
    stated = re.search(r"requires joserfc ([\d.]+) or later", (ROOT / "SECURITY.md").read_text())
    assert stated, "SECURITY.md names no joserfc floor"
    assert _floor("joserfc") == _version(stated.group(1)) >= (1, 7, 4)
    assert _version(importlib.metadata.version("joserfc")) >= _floor("joserfc")


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
