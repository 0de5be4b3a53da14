"""What the shipped alert rules and Grafana dashboard ask of extauthz's metrics: their
PromQL expressions, the selectors in them (parsed with promql-parser), and the metric
names extauthz exports."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import promql_parser
import yaml
from prometheus_client import CollectorRegistry

from extauthz import errors, metrics

ROOT = Path(__file__).resolve().parent.parent.parent
RULES = ROOT / "deploy" / "prometheus" / "extauthz-rules.yaml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "extauthz-rules.test.yaml"
PROMETHEUS_RULE = ROOT / "deploy" / "prometheus" / "prometheusrule.yaml"
SERVICE_MONITOR = ROOT / "deploy" / "prometheus" / "servicemonitor.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "extauthz.json"

#: Grafana's built-in interval variables, as a dashboard would get them at a 1 s scrape.
GRAFANA_INTERVALS = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h"}
#: Labels Prometheus adds to every scraped series (extauthz does not export them).
TARGET_LABELS = frozenset({"instance", "job"})


def rule_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(RULES.read_text())["groups"]
    return groups


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in rule_groups() for rule in group["rules"] if "alert" in rule]


def dashboard() -> dict[str, Any]:
    board: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return board


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows included (rows themselves are not)."""
    for panel in board["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def dashboard_exprs(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title and refId, expr) of every query of every panel."""
    return [
        (f"{panel['title']} {target['refId']}", target["expr"])
        for panel in panels(board)
        for target in panel.get("targets", [])
    ]


_VARIABLE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")


def substitute(expr: str, variables: dict[str, str]) -> str:
    """``expr`` with ``$name``, ``${name}`` and ``${name:format}`` replaced as Grafana
    would; an unknown variable raises KeyError."""
    return _VARIABLE.sub(lambda m: variables[m.group(1) or m.group(2)], expr)


def grafana_variables(board: dict[str, Any]) -> dict[str, str]:
    """A value for every variable: each query variable's "All" (a regex), the intervals."""
    values = dict(GRAFANA_INTERVALS)
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            values[var["name"]] = var["allValue"]
    return values


@dataclass(frozen=True)
class Selector:
    """One series selector of an expression: the metric name and its label matchers."""

    name: str
    matchers: tuple[tuple[str, str, str], ...]  # (label, op: = != =~ !~, value)


# promql-parser's MatchOp members compare equal but do not hash: matched by name.
_OPS = {"MatchOp.Equal": "=", "MatchOp.NotEqual": "!=", "MatchOp.Re": "=~", "MatchOp.NotRe": "!~"}


def selectors(expr: str) -> list[Selector]:
    """Every series selector in ``expr`` (a PromQL syntax error raises ValueError)."""
    found: list[Selector] = []

    def visit(node: promql_parser.Expr) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"a selector without a metric name in {expr!r}"
            matchers = tuple(
                (m.name, _OPS[str(m.op)], m.value)
                for m in node.matchers.matchers
                if m.name != "__name__"
            )
            found.append(Selector(node.name, matchers))
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def groupings(expr: str) -> list[tuple[frozenset[str], frozenset[str]]]:
    """(labels, metric names below) of every ``by (…)`` aggregation in ``expr``: each
    label must be one that some metric below it carries."""
    found: list[tuple[frozenset[str], frozenset[str]]] = []

    def visit(node: promql_parser.Expr) -> bool:
        modifier = node.modifier if isinstance(node, promql_parser.AggregateExpr) else None
        if modifier is not None and str(modifier.type) == "AggModifierType.By":
            assert isinstance(node, promql_parser.AggregateExpr)
            below = frozenset(s.name for s in selectors(node.expr.prettify()))
            found.append((frozenset(modifier.labels), below))
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def exported_names(registry: CollectorRegistry) -> dict[str, str]:
    """Every sample name ``registry`` can export, mapped to its family's name: a
    counter's ``_total``, a histogram's ``_bucket``, ``_sum`` and ``_count``."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    return {
        family.name + suffix: family.name
        for family in registry.collect()
        for suffix in suffixes[family.type]
    }


def names(exprs: Iterable[str]) -> set[str]:
    return {s.name for expr in exprs for s in selectors(expr)}


def _reasons() -> frozenset[str]:
    """Every value extauthz_check_total's ``reason`` label takes."""
    found: set[str] = set()
    classes: list[type[errors.Denied]] = [errors.Denied]
    while classes:
        cls = classes.pop()
        found.add(cls.reason)
        classes.extend(cls.__subclasses__())
    # The allow reasons (core/policy.py) and the two deny reasons passed as arguments
    # rather than fixed by a class (policy.py: claim_mismatch; the HTTP door: bad_request).
    return frozenset(found | {"ok", "anonymous", "default_allow", "claim_mismatch", "bad_request"})


#: Label values an expression may name, for the labels whose values are a closed set.
KNOWN_VALUES = {
    "reason": _reasons(),
    "decision": frozenset({"allow", "deny"}),
    "front_door": frozenset({"grpc", "http"}),
}


def selector_problems(expr: str) -> list[str]:
    """What is wrong with the metric names and label values ``expr`` names, against the
    metrics extauthz registers (a Grafana variable in a value is not checked)."""
    exported = exported_names(metrics.REGISTRY)
    problems = []
    for selector in selectors(expr):
        if selector.name not in exported:
            problems.append(f"{selector.name} is not a metric extauthz exports")
        for label, op, value in selector.matchers:
            known = KNOWN_VALUES.get(label)
            if known is None or "$" in value:
                continue
            wanted = set(value.split("|")) if op in ("=~", "!~") else {value}
            if wanted - known:
                problems.append(f"{selector.name}: {label} never takes {sorted(wanted - known)}")
    return problems
