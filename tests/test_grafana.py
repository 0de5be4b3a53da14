"""The Grafana dashboard deploy/grafana/extauthz.json: a dashboard Grafana imports
(templated data source, unique ids and refIds, panels on the grid without overlap), whose
every expression is PromQL once Grafana's variables are filled in and names only
metrics and label values extauthz exports, and that shows what an operator needs.
tests/test_prometheus_live.py runs each expression on a real Prometheus."""

from __future__ import annotations

import re
from typing import Any

import pytest

from extauthz import metrics
from tests.support import monitoring

BOARD = monitoring.dashboard()
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
EXPRS = monitoring.dashboard_exprs(BOARD)


def _variables() -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in BOARD["templating"]["list"]}


def test_the_dashboard_has_its_identity_and_a_templated_data_source() -> None:
    assert BOARD["uid"] == "extauthz" and BOARD["title"]
    assert isinstance(BOARD["schemaVersion"], int)
    assert "id" not in BOARD or BOARD["id"] is None, "an id would clash on import"
    source = _variables()["datasource"]
    assert (source["type"], source["query"]) == ("datasource", "prometheus")


def test_every_panel_and_query_uses_the_templated_data_source() -> None:
    for panel in monitoring.panels(BOARD):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel.get("description"), f"{panel['title']}: say what it shows"
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]


def test_query_variables_filter_by_instance_and_provider_only() -> None:
    variables = _variables()
    assert set(variables) == {"datasource", "instance", "provider"}
    for name in ("instance", "provider"):
        var = variables[name]
        assert var["type"] == "query" and var["datasource"] == DATASOURCE
        assert var["includeAll"] and var["allValue"] == ".*"
        query = var["query"]["query"]
        used = set(re.findall(r"\bextauthz_\w+", query))
        assert used and used <= set(monitoring.exported_names(metrics.REGISTRY)), query
    # No job or namespace is assumed anywhere: they differ from one install to the next.
    for _, expr in EXPRS:
        assert "job=" not in expr and "namespace=" not in expr, expr


def test_ids_are_unique_and_panels_tile_the_grid() -> None:
    everything = list(BOARD["panels"])
    ids = [p["id"] for p in everything]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for panel in everything:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


@pytest.mark.parametrize(("where", "expr"), EXPRS, ids=[w for w, _ in EXPRS])
def test_every_expression_is_promql_naming_exported_metrics(where: str, expr: str) -> None:
    filled = monitoring.substitute(expr, monitoring.grafana_variables(BOARD))
    assert "$" not in filled, f"{where}: a variable Grafana would not fill in"
    assert monitoring.selector_problems(filled) == [], where


def test_variable_substitution() -> None:
    values = {"instance": ".*", "__rate_interval": "1m"}
    assert (
        monitoring.substitute('rate(x{instance=~"$instance"}[$__rate_interval])', values)
        == 'rate(x{instance=~".*"}[1m])'
    )
    assert monitoring.substitute("${instance}${instance:regex}", values) == ".*.*"
    with pytest.raises(KeyError):
        monitoring.substitute("$nope", values)


def test_the_dashboard_shows_what_an_operator_needs() -> None:
    selectors = [s for _, e in EXPRS for s in monitoring.selectors(_filled(e))]
    used = {s.name for s in selectors}
    assert {
        "extauthz_check_total",
        "extauthz_check_duration_seconds_bucket",
        "extauthz_jwks_age_seconds",
        "extauthz_jwks_max_stale_seconds",
        "extauthz_jwks_fetch_total",
        "extauthz_unknown_kid_total",
        "extauthz_token_cache_total",
        "extauthz_introspection_total",
        "extauthz_introspection_cache_total",
        "extauthz_replay_store_errors_total",
    } <= used
    groupings = {g for _, e in EXPRS for g in re.findall(r"by \(([^)]*)\)", e)}
    for label in ("reason", "rule", "front_door"):
        assert any(label in g for g in groupings), f"no panel splits decisions by {label}"
    quantiles = {q for _, e in EXPRS for q in re.findall(r"histogram_quantile\(([\d.]+)", e)}
    assert {"0.5", "0.99"} <= quantiles


def _filled(expr: str) -> str:
    return monitoring.substitute(expr, monitoring.grafana_variables(BOARD))
