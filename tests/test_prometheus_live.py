"""The shipped alert rules and dashboard against a real Prometheus scraping a real
extauthz (`extauthz serve`, with a real JWKS server and a real introspection endpoint):
every metric and label they name is one extauthz exports and Prometheus stores, every
rule evaluates without error, every dashboard query runs and shows data, and
ExtauthzJwksFetchFailing fires when the issuer goes down."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support import monitoring
from tests.support.http import http_request
from tests.support.introspection_server import IntrospectionServer
from tests.support.jwks_server import JwksServer
from tests.support.prometheus import PrometheusServer, QueryError
from tests.support.serve import ServeProcess
from tests.support.server import wait_for
from tests.support.signing import Signer, claims, jwks

ISS = "https://issuer.example"
CORP = "https://corp.example"
SIGNER = Signer("ES256")
STRANGER = Signer("ES256")  # its kid is not in the JWKS
#: For things that wait on Prometheus's scrapes and evaluations (every second) on a
#: machine that may be busy.
DEADLINE = 90.0
ALERT = "ExtauthzJwksFetchFailing"


@dataclass
class Rig:
    jwks: JwksServer
    introspection: IntrospectionServer
    extauthz: ServeProcess
    prometheus: PrometheusServer


def _config(jwks_url: str, endpoint: str, secret: Path) -> dict[str, Any]:
    return {
        "server": {
            "listen": "127.0.0.1:0",
            "admin_listen": "127.0.0.1:0",
            "http": {"listen": "127.0.0.1:0"},
        },
        "providers": {
            # Refreshed every second: an issuer outage shows in the metrics at once.
            "main": {
                "issuer": ISS,
                "audiences": ["api"],
                "jwks_uri": jwks_url,
                "refresh_interval": "1s",
                "min_refresh_interval": "1s",
            },
            "corp": {
                "issuer": CORP,
                "audiences": ["api"],
                "introspection": {
                    "endpoint": endpoint,
                    "client_id": "extauthz",
                    "client_secret_file": str(secret),
                },
            },
        },
    }


def _rules_without_for(path: Path) -> Path:
    """The rule file with every ``for:`` dropped: an alert fires at its first true
    evaluation, so that the test need not wait out production delays."""
    rules = yaml.safe_load(monitoring.RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("for", None)
    path.write_text(yaml.safe_dump(rules))
    return path


def _traffic(door: int, introspection: IntrospectionServer) -> None:
    """A request of each kind, so that every labelled series the rules and the dashboard
    name exists: allowed and denied checks, token-cache misses and hits, an unknown kid,
    and introspection calls answered, cached and failed."""

    def status(token: str | None) -> int:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return http_request("127.0.0.1", door, "GET", "/x", headers=headers).status

    valid = SIGNER.sign(claims(ISS, "api", ttl=600))
    assert status(None) == 401
    assert status(valid) == 200  # a token-cache miss
    assert status(valid) == 200  # a hit
    assert status(STRANGER.sign(claims(ISS, "api", ttl=600))) == 401  # unknown kid
    introspection.answers["opaque-ok"] = {
        "active": True,
        "iss": CORP,
        "aud": "api",
        "sub": "svc",
        "exp": int(time.time()) + 600,
    }
    assert status("opaque-ok") == 200  # an introspection call
    assert status("opaque-ok") == 200  # its cached answer
    introspection.fail_with = 500
    try:
        assert status("opaque-failing") == 503  # introspection_unavailable
    finally:
        introspection.fail_with = None


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    work = tmp_path_factory.mktemp("prometheus-live")
    secret = work / "introspection-secret"
    secret.write_text("s3cret\n")
    with JwksServer(jwks(SIGNER)) as issuer, IntrospectionServer() as endpoint:
        extauthz = ServeProcess(work, "extauthz", _config(issuer.url, endpoint.url, secret))
        try:
            extauthz.wait_ready()
            started = extauthz.event("started")
            assert started is not None and started["http"]
            _traffic(int(started["http"].rpartition(":")[2]), endpoint)
            rules = _rules_without_for(work / "extauthz-rules.yaml")
            target = f"127.0.0.1:{extauthz.admin_port}"
            with PrometheusServer(work / "prometheus", [target], [rules]) as prometheus:
                yield Rig(issuer, endpoint, extauthz, prometheus)
        finally:
            extauthz.stop()


def _rule_selectors() -> list[monitoring.Selector]:
    return [s for rule in monitoring.alert_rules() for s in monitoring.selectors(rule["expr"])]


def _dashboard_queries() -> list[tuple[str, str]]:
    board = monitoring.dashboard()
    values = monitoring.grafana_variables(board)
    return [(w, monitoring.substitute(e, values)) for w, e in monitoring.dashboard_exprs(board)]


def _dashboard_selectors() -> list[monitoring.Selector]:
    return [s for _, expr in _dashboard_queries() for s in monitoring.selectors(expr)]


def _exported(rig: Rig) -> dict[str, set[str]]:
    """extauthz's /metrics: each sample name and the label names it carries."""
    text = http_request("127.0.0.1", rig.extauthz.admin_port, "GET", "/metrics").text
    found: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, set()).update(sample.labels)
    return found


def test_every_metric_and_label_the_rules_and_dashboard_name_is_exported_and_stored(
    rig: Rig,
) -> None:
    wanted = _rule_selectors() + _dashboard_selectors()
    names = {s.name for s in wanted}
    exported: dict[str, set[str]] = {}

    def all_exported() -> bool:
        # The key-age gauge is first set by a periodic job, a moment after the start.
        exported.update(_exported(rig))
        return names <= set(exported)

    try:
        wait_for(all_exported, DEADLINE, "extauthz to export every metric the rules name")
    except AssertionError:
        pytest.fail(f"/metrics lacks {sorted(names - set(exported))}")
    for selector in wanted:
        assert selector.name in exported, f"/metrics has no {selector.name}"
        labels = {label for label, _, _ in selector.matchers}
        unknown = labels - exported[selector.name] - monitoring.TARGET_LABELS
        assert not unknown, f"{selector.name} has no label {sorted(unknown)}"
    exprs = [rule["expr"] for rule in monitoring.alert_rules()]
    exprs += [expr for _, expr in _dashboard_queries()]
    for expr in exprs:
        for grouped, below in monitoring.groupings(expr):
            carried = set().union(*(exported[name] for name in below))
            missing = grouped - carried - monitoring.TARGET_LABELS
            assert not missing, f"by {sorted(missing)}: no such label on {sorted(below)}"

    def stored() -> bool:
        return names <= rig.prometheus.metric_names()

    wait_for(stored, DEADLINE, "Prometheus to store every metric the rules name")


def test_every_rule_evaluates_without_error(rig: Rig) -> None:
    def evaluated() -> bool:
        rules = rig.prometheus.rules()
        broken = [f"{r['name']}: {r.get('lastError')}" for r in rules if r["health"] == "err"]
        assert not broken, broken
        return len(rules) == len(monitoring.alert_rules()) and all(
            r["health"] == "ok" for r in rules
        )

    wait_for(evaluated, DEADLINE, "every rule to be evaluated")


def test_every_dashboard_query_runs_and_shows_data(rig: Rig) -> None:
    queries = _dashboard_queries()
    empty: list[str] = []

    def all_show_data() -> bool:
        empty.clear()
        for where, expr in queries:
            if not rig.prometheus.query(expr):  # a query Prometheus refuses raises
                empty.append(where)
        return not empty

    try:
        wait_for(all_show_data, DEADLINE, "every dashboard query to return data")
    except AssertionError:
        pytest.fail(f"dashboard queries without data: {empty}")


def test_prometheus_refuses_a_query_that_does_not_parse(rig: Rig) -> None:
    # Guards the test above: a broken expression is an error, not an empty answer.
    with pytest.raises(QueryError) as refused:
        rig.prometheus.query("sum(rate(extauthz_check_total[1m])")
    assert refused.value.error_type == "bad_data"


def test_the_jwks_alert_fires_when_the_issuer_goes_down(rig: Rig) -> None:
    prometheus = rig.prometheus

    def rule() -> dict[str, Any]:
        (found,) = [r for r in prometheus.rules() if r["name"] == ALERT]
        return found

    # Healthy first: the rule has been evaluated on successful fetches and is quiet.
    wait_for(
        lambda: bool(prometheus.query('extauthz_jwks_fetch_total{provider="main"} > 1')),
        DEADLINE,
        "Prometheus to see successful fetches",
    )
    seen = rule()["lastEvaluation"]
    wait_for(lambda: rule()["lastEvaluation"] != seen, DEADLINE, "a rule evaluation")
    assert rule()["health"] == "ok"
    assert rule()["state"] == "inactive"
    assert prometheus.alerts(ALERT) == []

    rig.jwks.fail_with = 500
    try:

        def firing() -> list[dict[str, Any]]:
            return [
                a
                for a in prometheus.alerts(ALERT)
                if a["state"] == "firing" and a["labels"]["provider"] == "main"
            ]

        wait_for(lambda: bool(firing()), DEADLINE, f"{ALERT} to fire for provider main")
        (alert,) = firing()
        assert alert["labels"]["severity"] == "warning"
        assert alert["annotations"]["summary"] == "Most JWKS fetches for provider main fail"
        assert rig.extauthz.count("jwks_fetch_failed") > 0
    finally:
        rig.jwks.fail_with = None
