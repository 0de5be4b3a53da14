"""The documentation's promises.

- Every relative link in the repository's Markdown files points at a file or directory
  of the repository (and an ``#anchor`` into a Markdown file at one of its headings);
  a link that leaves the repository fails.
- ``docs/configuration.md`` documents exactly the keys of the configuration schema
  (walked from ``extauthz.config.Config``), each with its type, its default (checked
  against the schema), whether a reload applies it (checked against the server's
  restart-only keys and ``Provider.KEY_SETTINGS``) and a YAML example whose keys exist.
- No committed text file carries an absolute path of somebody's checkout.

The repository's files are what ``git ls-files --cached --others --exclude-standard``
lists: committed files plus new ones not yet committed, never ignored ones (``.venv``).
"""

from __future__ import annotations

import posixpath
import re
import subprocess
import types
from collections.abc import Iterator, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin
from urllib.parse import unquote

import pytest
import yaml
from pydantic import BaseModel, TypeAdapter
from pydantic.fields import FieldInfo

from extauthz.config import RESTART_ONLY as _RESTART_ONLY
from extauthz.config import Config, Provider, from_mapping

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = "docs/configuration.md"

# ------------------------------------------------------------------ repository files


@cache
def repo_files() -> frozenset[str]:
    """Paths (POSIX, relative to ROOT) of the files that are or would be committed."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the repository's file list is unknown")
    names = {n for n in out.decode().split("\0") if n}
    return frozenset(n for n in names if (ROOT / n).is_file() and not n.startswith(".venv/"))


@cache
def repo_dirs() -> frozenset[str]:
    dirs = {""}
    for name in repo_files():
        parent = posixpath.dirname(name)
        while parent and parent not in dirs:
            dirs.add(parent)
            parent = posixpath.dirname(parent)
    return frozenset(dirs)


def markdown_files() -> list[str]:
    return sorted(n for n in repo_files() if n.endswith(".md"))


# ------------------------------------------------------------------ Markdown parsing

_FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*([^`\s]*)(.*)$")
_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")


def _lines_outside_code(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of every line that is not inside a fenced code block."""
    fence: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        m = _FENCE.match(line)
        if fence is None:
            if m:
                fence = m.group(1)
                continue
            yield number, line
        elif m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence) and not m.group(2):
            fence = None


def code_blocks(text: str) -> Iterator[tuple[int, str, str]]:
    """(line number, info string, body) of every fenced code block."""
    fence: str | None = None
    info = ""
    start = 0
    body: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        m = _FENCE.match(line)
        if fence is None:
            if m:
                fence, info, start, body = m.group(1), (m.group(2) + m.group(3)).strip(), number, []
        elif m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence) and not m.group(2):
            yield start, info, "\n".join(body) + "\n"
            fence = None
        else:
            body.append(line)


def headings(text: str) -> Iterator[tuple[int, int, str]]:
    """(line number, level, raw text) of every ATX heading outside code blocks."""
    for number, line in _lines_outside_code(text):
        m = _HEADING.match(line)
        if m:
            yield number, len(m.group(1)), m.group(2)


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its rendered text, lower-cased, punctuation
    other than ``-`` and ``_`` dropped, each space a ``-`` (github-slugger)."""
    heading = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links: their text
    parts: list[str] = []
    pos = 0
    for m in re.finditer(r"(`+)(.+?)\1", heading):  # code spans: their content, verbatim
        parts += [re.sub(r"<[^>]+>", "", heading[pos : m.start()]), m.group(2)]
        pos = m.end()
    parts.append(re.sub(r"<[^>]+>", "", heading[pos:]))  # inline HTML outside code: dropped
    return re.sub(r"[^\w\- ]", "", "".join(parts).strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    out: set[str] = set()
    for _, _, title in headings(text):
        slug = github_slug(title)
        candidate, n = slug, 0
        while candidate in out:  # GitHub numbers repeated headings: x, x-1, x-2
            n += 1
            candidate = f"{slug}-{n}"
        out.add(candidate)
    out.update(re.findall(r"<a\s[^>]*\b(?:name|id)=[\"']([^\"']+)[\"']", text))
    return out


_CODE_SPAN = re.compile(r"(`+)(?:.|\n)*?\1")
_INLINE_LINK = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]"  # [text], one level of nested brackets
    r"\(\s*(<[^>\n]*>|[^\s()]*(?:\([^\s()]*\)[^\s()]*)*)"  # (target
    r"(?:\s+(?:\"[^\"]*\"|'[^']*'|\([^)]*\)))?\s*\)"  # optional "title")
)
_REFERENCE_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>\n]*>|\S+)", re.M)
_HTML_LINK = re.compile(r"<(?:a|img)\b[^>]*?\b(?:href|src)=[\"']([^\"']+)[\"']", re.I)


def links(text: str) -> Iterator[tuple[int, str]]:
    """(line number, target) of every link, image and HTML href/src outside code."""
    kept = dict(_lines_outside_code(text))
    lines = [kept.get(i, "") for i in range(1, len(text.splitlines()) + 1)]
    # Code spans keep their line breaks so that line numbers stay right.
    prose = _CODE_SPAN.sub(lambda m: "code" + "\n" * m.group(0).count("\n"), "\n".join(lines))
    found: list[tuple[int, str]] = []
    for pattern in (_INLINE_LINK, _REFERENCE_DEF, _HTML_LINK):
        for m in pattern.finditer(prose):
            target = m.group(1).strip()
            if target.startswith("<") and target.endswith(">"):
                target = target[1:-1]
            found.append((prose.count("\n", 0, m.start()) + 1, target))
    yield from sorted(found)


# ------------------------------------------------------------------ link checking


def link_problem(source: str, target: str, read: Mapping[str, str] | None = None) -> str | None:
    """Why ``target``, linked from the Markdown file ``source``, is broken; None if not.

    ``read`` maps repository paths to their text (the files are read when it is None).
    """
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):
        return "a file: link is a machine path" if target.lower().startswith("file:") else None
    if target.startswith("//"):
        return None  # scheme-relative URL: not a repository path
    if not target:
        return "empty link"
    path_part, _, anchor = target.partition("#")
    path_part = unquote(path_part.partition("?")[0])
    if not path_part:
        resolved = source
    else:
        base = "" if path_part.startswith("/") else posixpath.dirname(source)
        resolved = posixpath.normpath(posixpath.join(base, path_part.lstrip("/")))
        if resolved == ".":
            resolved = ""
        if resolved == ".." or resolved.startswith("../"):
            return "leaves the repository"
        if resolved not in repo_files() and resolved not in repo_dirs():
            return f"{resolved or '.'} is not a file of the repository"
    if anchor and resolved.endswith(".md"):
        if read is not None and resolved in read:
            text = read[resolved]
        elif resolved in repo_files():
            text = (ROOT / resolved).read_text(encoding="utf-8")
        else:
            return None  # a directory named *.md: nothing to check
        if unquote(anchor).lower() not in anchors(text):
            return f"no heading with anchor #{anchor} in {resolved}"
    return None


def test_github_slugs() -> None:
    assert github_slug("What `check-config` catches") == "what-check-config-catches"
    assert github_slug("TLS and mTLS with cert-manager") == "tls-and-mtls-with-cert-manager"
    assert github_slug("Runbook: all (or most) requests get 401") == (
        "runbook-all-or-most-requests-get-401"
    )
    assert github_slug("`providers.<name>.clock_skew`") == "providersnameclock_skew"
    assert github_slug("`rules[].match.path_prefix`") == "rulesmatchpath_prefix"
    assert anchors("# A\n## A\n```\n# not a heading\n```\n") == {"a", "a-1"}


def test_link_checker_catches_broken_links() -> None:
    doc = "docs/x.md"
    text = {"docs/x.md": "# Title\n"}
    assert link_problem(doc, "../../shared/design.md") == "leaves the repository"
    assert link_problem("README.md", "../shared/design.md") == "leaves the repository"
    assert link_problem(doc, "../README.md") is None
    assert link_problem(doc, "../deploy/k8s/") is None
    assert link_problem(doc, "missing.md") is not None
    assert link_problem(doc, "#title", text) is None
    assert link_problem(doc, "#nope", text) == "no heading with anchor #nope in docs/x.md"
    assert link_problem(doc, "https://example.com/x") is None
    sample = 'a [x](y.md) `[no](link)` [z](<a b.md> "t")\n```\n[no](code)\n```\n[r]: ref.md\n'
    assert list(links(sample)) == [(1, "a b.md"), (1, "y.md"), (5, "ref.md")]


def test_relative_links_resolve() -> None:
    problems = []
    for name in markdown_files():
        text = (ROOT / name).read_text(encoding="utf-8")
        for line, target in links(text):
            why = link_problem(name, target)
            if why is not None:
                problems.append(f"{name}:{line}: ({target}) {why}")
    assert not problems, "broken links:\n" + "\n".join(problems)


# ------------------------------------------------------------------ the schema


def _nested(annotation: Any, key: str) -> dict[str, FieldInfo]:
    """Keys below a field of this type: nested models, tuples/lists and mappings of them."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _nested(get_args(annotation)[0], key)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return schema_fields(annotation, key + ".")
    out: dict[str, FieldInfo] = {}
    if origin in (Union, types.UnionType):
        for arg in get_args(annotation):
            out.update(_nested(arg, key))
    elif isinstance(origin, type) and issubclass(origin, Mapping):
        args = get_args(annotation)
        if args:
            out.update(_nested(args[-1], key + ".<name>"))
    elif isinstance(origin, type) and issubclass(origin, (Sequence, set, frozenset)):
        for arg in get_args(annotation):
            if arg is not Ellipsis:
                out.update(_nested(arg, key + "[]"))
    return out


def schema_fields(model: type[BaseModel] = Config, prefix: str = "") -> dict[str, FieldInfo]:
    """Every key of the schema, named like the reference's headings, with its field:
    ``server.tls.cert_file``, ``providers.<name>.token_sources[].header``,
    ``rules[].match.hosts`` (container keys such as ``server.tls`` included)."""
    out: dict[str, FieldInfo] = {}
    for name, field in model.model_fields.items():
        key = prefix + name
        out[key] = field
        out.update(_nested(field.annotation, key))
    return out


def test_schema_walk() -> None:
    keys = set(schema_fields())
    for key in (
        "server",
        "server.tls",
        "server.tls.cert_file",
        "providers",
        "providers.<name>.issuer",
        "providers.<name>.token_sources[].header",
        "rules[].match.hosts",
        "default_action",
    ):
        assert key in keys
    assert not any(
        k.startswith(("providers.<name>.claims_to_headers.", "rules[].claims.")) for k in keys
    )


# ------------------------------------------------------------------ the reference


@cache
def reference_text() -> str:
    return (ROOT / REFERENCE).read_text(encoding="utf-8")


@cache
def reference_sections() -> dict[str, tuple[int, str]]:
    """Documented key -> (heading line, text up to the next heading).

    A key is documented by a heading whose whole text is one code span:
    ``### `providers.<name>.clock_skew` ``.
    """
    text = reference_text()
    lines = text.splitlines()
    heads = list(headings(text))
    out: dict[str, tuple[int, str]] = {}
    for i, (number, _, title) in enumerate(heads):
        m = re.fullmatch(r"`([^`]+)`", title)
        if not m:
            continue
        end = heads[i + 1][0] - 1 if i + 1 < len(heads) else len(lines)
        assert m.group(1) not in out, f"{REFERENCE}:{number}: {m.group(1)} documented twice"
        out[m.group(1)] = (number, "\n".join(lines[number:end]))
    return out


def test_reference_documents_exactly_the_schema() -> None:
    schema = set(schema_fields())
    documented = set(reference_sections())
    missing = sorted(schema - documented)
    extra = sorted(documented - schema)
    assert not missing and not extra, (
        f"{REFERENCE} and the schema (extauthz.config.Config) disagree:\n"
        f"  in the schema but not documented: {', '.join(missing) or '-'}\n"
        f"  documented but not in the schema: {', '.join(extra) or '-'}"
    )


def _facts(key: str) -> dict[str, str]:
    """The ``**Type:** … · **Default:** … · **Reload:** …`` line of a key's section."""
    number, body = reference_sections()[key]
    for line in body.splitlines():
        if line.startswith("**Type:**"):
            parts = [p.strip() for p in re.split(r"\s+·\s+", line)]
            facts = {}
            for part in parts:
                m = re.fullmatch(r"\*\*(\w+):\*\*\s*(.+)", part)
                assert m, f"{REFERENCE}:{number}: cannot read {part!r} for {key}"
                facts[m.group(1).lower()] = m.group(2)
            return facts
    raise AssertionError(f"{REFERENCE}:{number}: {key} has no '**Type:** … ' line")


def test_every_key_has_type_default_reload_and_example() -> None:
    problems = []
    for key, (number, body) in reference_sections().items():
        facts = _facts(key)
        absent = {"type", "default", "reload"} - set(facts)
        if absent:
            problems.append(f"{REFERENCE}:{number}: {key}: no {', '.join(sorted(absent))}")
        if not any(info == "yaml" for _, info, _ in code_blocks(body)):
            problems.append(f"{REFERENCE}:{number}: {key}: no ```yaml example")
    assert not problems, "\n".join(problems)


def _restart_only(key: str) -> bool:
    return any(key == f"server.{k}" or key.startswith(f"server.{k}.") for k in _RESTART_ONLY)


def test_documented_reload_behaviour_matches_the_server() -> None:
    problems = []
    schema = schema_fields()
    for key in reference_sections():
        if key not in schema:
            continue  # reported by test_reference_documents_exactly_the_schema
        reload = _facts(key)["reload"].lower()
        has_restart_only_children = any(_restart_only(k) for k in schema if k.startswith(key + "."))
        if not _restart_only(key) and has_restart_only_children:
            continue  # a container such as `server`: each key says it
        want = "restart needed" if _restart_only(key) else "applies"
        if not reload.startswith(want):
            problems.append(f"{key}: should say {want!r}, the reference says {reload!r}")
        m = re.fullmatch(r"providers\.<name>\.(\w+)", key)
        new_source = m is not None and m.group(1) in Provider.KEY_SETTINGS
        if ("new key source" in reload) != new_source:
            problems.append(
                f"{key}: a change {'starts' if new_source else 'does not start'} a new key "
                f"source (Provider.KEY_SETTINGS), the reference says {reload!r}"
            )
    assert not problems, "\n".join(problems)


def test_documented_defaults_match_the_schema() -> None:
    problems = []
    annotated: Any = Annotated
    for key, field in schema_fields().items():
        if key not in reference_sections():
            continue  # reported by test_reference_documents_exactly_the_schema
        text = _facts(key).get("default", "")
        if field.is_required():
            if not text.startswith("required"):
                problems.append(f"{key}: required, the reference says default {text!r}")
            continue
        if text.startswith("required"):
            problems.append(f"{key}: optional, the reference says it is required")
            continue
        m = re.search(r"`([^`]*)`", text)
        if not m:
            problems.append(f"{key}: the default {text!r} has no `value`")
            continue
        tp: Any = (
            annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
        )
        try:
            value = TypeAdapter(tp).validate_python(yaml.safe_load(m.group(1)))
        except Exception as exc:
            problems.append(f"{key}: documented default {m.group(1)!r} is not valid: {exc}")
            continue
        default = field.get_default(call_default_factory=True)
        if value != default:
            problems.append(f"{key}: default is {default!r}, the reference says {m.group(1)!r}")
    assert not problems, "\n".join(problems)


def test_reference_example_config_is_valid() -> None:
    blocks = [body for _, info, body in code_blocks(reference_text()) if info == "yaml"]
    assert blocks, f"{REFERENCE} has no example"
    config = from_mapping(yaml.safe_load(blocks[0]))  # the complete example comes first
    assert config.providers


def _unknown_keys(value: Any, prefix: str, keys: set[str]) -> Iterator[str]:
    if not isinstance(value, Mapping):
        return
    for name in value:
        key = f"{prefix}.{name}" if prefix else str(name)
        if key not in keys:
            placeholder = f"{prefix}.<name>"
            if prefix and any(k.startswith(placeholder + ".") for k in keys):
                key = placeholder  # a mapping of models: the name is the user's
            else:
                yield key
                continue
        child = value[name]
        if isinstance(child, Mapping) and any(k.startswith(key + ".") for k in keys):
            yield from _unknown_keys(child, key, keys)
        elif isinstance(child, list) and any(k.startswith(key + "[].") for k in keys):
            for item in child:
                yield from _unknown_keys(item, key + "[]", keys)


def test_reference_examples_use_schema_keys() -> None:
    """Every ```yaml block of the reference is (part of) an extauthz config, written from
    the top level, and names only keys of the schema."""
    keys = set(schema_fields())
    problems = []
    for line, info, body in code_blocks(reference_text()):
        if info != "yaml":
            continue
        try:
            data = yaml.safe_load(body)
        except yaml.YAMLError as exc:
            problems.append(f"{REFERENCE}:{line}: invalid YAML: {exc}")
            continue
        if not isinstance(data, Mapping):
            problems.append(f"{REFERENCE}:{line}: not a mapping from the top level")
            continue
        problems += [f"{REFERENCE}:{line}: unknown key {k}" for k in _unknown_keys(data, "", keys)]
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------ machine paths

# Written so that this file does not match itself.
_MACHINE_PATH = re.compile(
    r"(?<![\w.~/-])/(?:wor[k]/|hom[e]/[^/\s]+/|User[s]/[^/\s]+/|tm[p]/[^/\s]+/extauthz)"
)


def test_no_absolute_machine_paths() -> None:
    problems = []
    for name in sorted(repo_files()):
        data = (ROOT / name).read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            m = _MACHINE_PATH.search(line)
            if m:
                problems.append(f"{name}:{number}: {line.strip()[:120]}")
    assert not problems, (
        "absolute paths of a checkout (write them relative to the repository):\n"
        + "\n".join(problems[:50])
        + (f"\n… and {len(problems) - 50} more" if len(problems) > 50 else "")
    )


def test_machine_path_pattern() -> None:
    for bad in (
        "wor" + "k/main/.venv/bin/python",
        "hom" + "e/alice/src/x",
        "tm" + "p/abc/extauthz",
    ):
        assert _MACHINE_PATH.search(f"run /{bad} now"), bad
    for good in ("/etc/extauthz/tls.crt", "/tmp/config.yaml", "https://h/work/x", ".venv/bin/x"):
        assert not _MACHINE_PATH.search(good), good
