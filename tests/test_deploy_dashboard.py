"""The Grafana dashboard: schema basics, provisioned datasource, a query and a unit on every panel.

Also checks that the dashboard covers what an operator needs (the panel list of issue 4) and
reads only recording rules or documented metrics, so a renamed series breaks a test, not a panel.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.conftest import REPO
from tests.test_deploy_prometheus import (
    BUILTIN_SERIES,
    deliverer_series,
    documented_metrics,
    recording_rule_names,
    rule_expressions,
    series_names,
)

yaml = pytest.importorskip("yaml")

GRAFANA = REPO / "docker" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "ldm-serve.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
REQUIRED_TITLES = (
    "Requests by status",
    "Errors by route and code",
    "Queue depth",
    "Queue wait p50 / p95 / p99",
    "Job latency p50 / p95 / p99",
    "Images / s per worker",
    "Denoising steps / s per worker",
    "Batch occupancy",
    "Job outcomes",
    "Device memory",
    "Workers alive",
    "Model load time",
    "Webhook deliveries by outcome",
    "Webhook attempts by result",
    "Webhook attempt latency p95",
    "Webhook outbox backlog",
    "Webhook deliverers up",
    "Processes by release",
)
# Grafana variables and their stand-ins when a query is sent to Prometheus directly.
VARIABLES = {"$model": ".*", "$__rate_interval": "1m", "$__interval": "15s"}


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def data_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel except rows, including panels nested in collapsed rows."""
    panels = []
    for panel in dashboard["panels"]:
        panels.extend(panel.get("panels", []))
        if panel["type"] != "row":
            panels.append(panel)
    return panels


def dashboard_expressions() -> list[tuple[str, str]]:
    """(panel title / refId, PromQL with Grafana variables substituted) of every query."""
    expressions = []
    dashboard = load_dashboard()
    for panel in data_panels(dashboard):
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in VARIABLES.items():
                expr = expr.replace(variable, value)
            expressions.append((f"{panel['title']} / {target['refId']}", expr))
    for variable in dashboard["templating"]["list"]:
        query = variable["query"]["query"]
        match = re.fullmatch(r"label_values\((\w+),\s*\w+\)", query)
        assert match, f"variable {variable['name']}: unsupported query {query}"
        expressions.append((f"variable {variable['name']}", match.group(1)))
    return expressions


def provisioned_uid() -> str:
    sources = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert len(sources) == 1 and sources[0]["type"] == "prometheus"
    return sources[0]["uid"]


def test_dashboard_identity_and_schema_basics() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] == "ldm-serve" and dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
    assert "id" not in dashboard or dashboard["id"] is None, "provisioned dashboards carry no id"
    ids = [panel["id"] for panel in dashboard["panels"]]
    ids += [child["id"] for panel in dashboard["panels"] for child in panel.get("panels", [])]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert {"h", "w", "x", "y"} <= set(grid) and grid["x"] + grid["w"] <= 24, panel["title"]


def test_panels_do_not_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in load_dashboard()["panels"]:
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_every_panel_uses_the_provisioned_datasource() -> None:
    uid = provisioned_uid()
    dashboard = load_dashboard()
    for panel in data_panels(dashboard):
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", panel["datasource"])["uid"] == uid, panel["title"]
    for variable in dashboard["templating"]["list"]:
        assert variable["datasource"]["uid"] == uid


def test_every_panel_has_a_query_and_a_unit() -> None:
    for panel in data_panels(load_dashboard()):
        targets = panel.get("targets", [])
        assert targets and all(t.get("expr", "").strip() for t in targets), panel["title"]
        ref_ids = [t["refId"] for t in targets]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{panel['title']}: no unit"
        assert panel.get("description"), f"{panel['title']}: no description"


def test_dashboard_has_the_panels_an_operator_needs() -> None:
    titles = {panel["title"] for panel in data_panels(load_dashboard())}
    missing = set(REQUIRED_TITLES) - titles
    assert not missing, sorted(missing)


def test_queries_read_recording_rules_or_documented_metrics() -> None:
    allowed = recording_rule_names() | documented_metrics() | BUILTIN_SERIES
    for where, expr in dashboard_expressions():
        unknown = series_names(expr) - allowed
        assert not unknown, f"{where}: unknown series {sorted(unknown)}"


def test_every_recording_rule_is_used() -> None:
    used = set()
    for _, expr in dashboard_expressions() + rule_expressions():
        used |= series_names(expr)
    unused = recording_rule_names() - used
    assert not unused, f"recording rules nothing reads: {sorted(unused)}"


def test_webhook_panels_read_the_deliverers_real_series() -> None:
    """The webhook panels read recording rules over, or directly, the deliverer's real series."""
    exported = deliverer_series()
    webhook_panels = [p for p in data_panels(load_dashboard()) if p["title"].startswith("Webhook")]
    assert webhook_panels
    for panel in webhook_panels:
        for target in panel["targets"]:
            read = series_names(target["expr"])
            assert any("ldm_webhook_" in s for s in read) or 'job="ldm-webhooks"' in target["expr"]
            raw = {s for s in read if s.startswith("ldm_webhook_")}
            assert raw <= exported, f"{panel['title']}: {sorted(raw - exported)}"
