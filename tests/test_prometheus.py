"""The alert rules in deploy/prometheus/: promtool accepts them, their unit tests make
every alert fire and stay quiet, their expressions name only metrics and label values
extauthz exports, every alert tells an operator what it means and where its runbook is,
and the prometheus-operator resources (PrometheusRule, ServiceMonitor) carry the same
rules and point at the admin port. tests/test_prometheus_live.py loads them into a real
Prometheus scraping a real extauthz."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from extauthz import errors
from tests.support import monitoring
from tests.support.prometheus import promtool
from tests.test_docs import anchors

ROOT = monitoring.ROOT
OPERATIONS = ROOT / "docs" / "operations.md"
K8S = ROOT / "deploy" / "k8s"
SEVERITIES = {"warning", "critical"}


def _alert_names() -> list[str]:
    return [rule["alert"] for rule in monitoring.alert_rules()]


# -- promtool --------------------------------------------------------------------------


def test_promtool_accepts_the_rule_file() -> None:
    result = promtool("check", "rules", str(monitoring.RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_alert_names())} rules found" in result.stdout


def test_the_rule_unit_tests_pass() -> None:
    result = promtool("test", "rules", str(monitoring.RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_rule_unit_tests_can_fail(tmp_path: Path) -> None:
    # Guards the test above: a firing case that no longer fires must fail promtool.
    rules = yaml.safe_load(monitoring.RULES.read_text())
    (stale,) = [r for r in rules["groups"][0]["rules"] if r.get("alert") == "ExtauthzKeysStale"]
    stale["expr"] = stale["expr"].replace("3 * 300", "3 * 3000")
    (tmp_path / "extauthz-rules.yaml").write_text(yaml.safe_dump(rules))
    (tmp_path / "t.yaml").write_text(monitoring.RULE_TESTS.read_text())
    result = promtool("test", "rules", str(tmp_path / "t.yaml"))
    assert result.returncode != 0
    assert "ExtauthzKeysStale" in result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    tests = yaml.safe_load(monitoring.RULE_TESTS.read_text())
    assert tests["rule_files"] == [monitoring.RULES.name]
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in tests["tests"]:
        for check in case["alert_rule_test"]:
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    names = set(_alert_names())
    assert names - firing == set(), "alerts that no unit test makes fire"
    assert names - quiet == set(), "alerts that no unit test shows quiet"
    assert (firing | quiet) - names == set(), "unit tests of alerts that do not exist"


# -- what each alert says ----------------------------------------------------------------


@pytest.mark.parametrize("name", _alert_names())
def test_every_alert_has_a_severity_and_words_for_an_operator(name: str) -> None:
    (rule,) = [r for r in monitoring.alert_rules() if r["alert"] == name]
    assert rule["labels"]["severity"] in SEVERITIES
    notes = rule["annotations"]
    assert set(notes) == {"summary", "description", "runbook"}
    assert 10 < len(notes["summary"]) <= 100, "a summary is one short line"
    assert len(notes["description"]) > len(notes["summary"])
    path, _, anchor = notes["runbook"].partition("#")
    assert path == "docs/operations.md"
    assert anchor in anchors(OPERATIONS.read_text()), f"no runbook #{anchor} in {path}"


def test_alert_names_are_unique() -> None:
    names = _alert_names()
    assert len(names) == len(set(names))
    assert all(n.startswith("Extauthz") for n in names)


def test_the_operations_doc_lists_the_alerts_and_holds_no_copy_of_them() -> None:
    text = OPERATIONS.read_text()
    for name in _alert_names():
        assert f"| [`{name}`](#{name.lower()}) |" in text, f"{name} is not in the alert table"
    assert "expr:" not in text, "the rules live in deploy/prometheus/, not in the docs"
    for path in ("extauthz-rules.yaml", "prometheusrule.yaml", "servicemonitor.yaml"):
        assert f"../deploy/prometheus/{path}" in text, path
    assert "../deploy/grafana/extauthz.json" in text


# -- the expressions ask only for what extauthz exports -------------------------------------


@pytest.mark.parametrize("name", _alert_names())
def test_rule_expressions_name_exported_metrics_and_labels(name: str) -> None:
    (rule,) = [r for r in monitoring.alert_rules() if r["alert"] == name]
    assert monitoring.selector_problems(rule["expr"]) == []


def test_the_selector_check_catches_a_wrong_name_and_reason() -> None:
    assert monitoring.selector_problems('rate(extauthz_checks_total{reason="expired"}[5m])') == [
        "extauthz_checks_total is not a metric extauthz exports"
    ]
    assert monitoring.selector_problems(
        'extauthz_check_total{reason=~"expired|key_unavailable"}'
    ) == ["extauthz_check_total: reason never takes ['key_unavailable']"]


def test_every_reason_a_denial_can_carry_is_in_the_operations_doc() -> None:
    # Every concrete refusal in extauthz.errors gives its reason to the metrics and logs.
    text = OPERATIONS.read_text()
    reasons = {
        cls.reason
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.Denied) and cls.__subclasses__() == []
    }
    assert "binding_mismatch" in reasons and "replay_store_unavailable" in reasons
    assert sorted(r for r in reasons if f"`{r}`" not in text) == []


def test_known_reasons_are_the_documented_ones() -> None:
    # The reason list in docs/operations.md names reasons this check accepts.
    text = OPERATIONS.read_text()
    for reason in ("ok", "default_allow", "keys_unavailable", "internal_error", "bad_request"):
        assert reason in monitoring.KNOWN_VALUES["reason"] and f"`{reason}`" in text


# -- prometheus-operator resources ----------------------------------------------------------


def _document(path: Path) -> dict[str, Any]:
    (doc,) = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert isinstance(doc, dict)
    return doc


def _k8s(kind: str, name: str) -> dict[str, Any]:
    found = [
        d
        for p in sorted(K8S.glob("*.yaml"))
        for d in yaml.safe_load_all(p.read_text())
        if d and d["kind"] == kind and d["metadata"]["name"] == name
    ]
    assert len(found) == 1, (kind, name)
    doc: dict[str, Any] = found[0]
    return doc


def test_the_prometheusrule_holds_exactly_the_rule_file() -> None:
    rule = _document(monitoring.PROMETHEUS_RULE)
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["kind"] == "PrometheusRule"
    assert rule["metadata"]["name"]
    assert rule["metadata"]["namespace"] == _k8s("Deployment", "extauthz")["metadata"]["namespace"]
    assert set(rule["spec"]) == {"groups"}
    assert rule["spec"]["groups"] == monitoring.rule_groups()


def test_the_prometheusrule_is_generated_from_the_rule_file() -> None:
    script = ROOT / "scripts" / "gen_prometheusrule.py"
    result = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


#: The ServiceMonitor fields used here, from the prometheus-operator's CRD (v1).
_MONITOR_SPEC = {"selector", "namespaceSelector", "endpoints", "jobLabel", "targetLabels"}
_MONITOR_ENDPOINT = {
    "port", "targetPort", "path", "scheme", "interval", "scrapeTimeout", "honorLabels",
    "relabelings", "metricRelabelings", "tlsConfig", "params",
}  # fmt: skip


def _monitor_problems(doc: dict[str, Any]) -> list[str]:
    """Where ``doc`` departs from the ServiceMonitor CRD's shape (required fields, known
    keys, types): the CRD is not in kubernetes-validate's schemas."""
    problems = []
    if doc.get("apiVersion") != "monitoring.coreos.com/v1" or doc.get("kind") != "ServiceMonitor":
        problems.append("not a monitoring.coreos.com/v1 ServiceMonitor")
    meta = doc.get("metadata", {})
    if not meta.get("name") or not meta.get("namespace"):
        problems.append("metadata needs name and namespace")
    spec = doc.get("spec", {})
    problems += [f"spec.{k}: unknown field" for k in set(spec) - _MONITOR_SPEC]
    match = spec.get("selector", {}).get("matchLabels")
    if not isinstance(match, dict) or not match:
        problems.append("spec.selector.matchLabels is required here")
    endpoints = spec.get("endpoints")
    if not isinstance(endpoints, list) or not endpoints:
        problems.append("spec.endpoints: at least one")
    for i, endpoint in enumerate(endpoints or []):
        problems += [
            f"endpoints[{i}].{k}: unknown field" for k in set(endpoint) - _MONITOR_ENDPOINT
        ]
        if not isinstance(endpoint.get("port"), str):
            problems.append(f"endpoints[{i}].port: a Service port name")
    return problems


def test_the_servicemonitor_has_the_crd_shape() -> None:
    assert _monitor_problems(_document(monitoring.SERVICE_MONITOR)) == []


def test_the_shape_check_catches_a_misspelt_field() -> None:
    doc = copy.deepcopy(_document(monitoring.SERVICE_MONITOR))
    doc["spec"]["endpoints"][0]["prot"] = doc["spec"]["endpoints"][0].pop("port")
    assert _monitor_problems(doc) == [
        "endpoints[0].prot: unknown field",
        "endpoints[0].port: a Service port name",
    ]


def test_the_servicemonitor_scrapes_the_admin_port_of_the_extauthz_service() -> None:
    monitor = _document(monitoring.SERVICE_MONITOR)
    spec = monitor["spec"]
    services = [
        d
        for p in sorted(K8S.glob("*.yaml"))
        for d in yaml.safe_load_all(p.read_text())
        if d and d["kind"] == "Service"
    ]
    namespaces = spec.get("namespaceSelector", {}).get(
        "matchNames", [monitor["metadata"]["namespace"]]
    )
    selected = [
        s
        for s in services
        if s["metadata"]["namespace"] in namespaces
        and spec["selector"]["matchLabels"].items() <= s["metadata"].get("labels", {}).items()
    ]
    (endpoint,) = spec["endpoints"]
    scraped = [s for s in selected if endpoint["port"] in {p["name"] for p in s["spec"]["ports"]}]
    # One Service, else every pod would be scraped twice (the headless one has no admin port).
    assert [s["metadata"]["name"] for s in scraped] == ["extauthz"]
    (port,) = [p for p in scraped[0]["spec"]["ports"] if p["name"] == endpoint["port"]]
    assert port["targetPort"] == "admin"  # the container port /metrics is served on
    assert endpoint["path"] == "/metrics"
    assert not any(s["metadata"]["name"] == "extauthz-redis" for s in selected)
