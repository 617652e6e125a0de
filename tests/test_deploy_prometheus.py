"""Prometheus config and rules: promtool accepts them, every alert is unit-tested, names are real.

`promtool check config`, `promtool check rules` and `promtool test rules` (Debian's prometheus
package) must pass; every alert carries `for`, a severity and annotations and has a firing and a
quiet case in rules_test.yml; every metric the rules read is one docs/architecture.md defines, and
every webhook series one the deliverer (webhooks/metrics.py) really exports.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO

yaml = pytest.importorskip("yaml")

PROMETHEUS_DIR = REPO / "docker" / "prometheus"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULES = PROMETHEUS_DIR / "rules.yml"
RULES_TEST = PROMETHEUS_DIR / "rules_test.yml"
# Series Prometheus or prometheus_client produce themselves.
BUILTIN_SERIES = {"up", "process_start_time_seconds"}
PROMQL_FUNCTIONS = {
    "sum", "max", "min", "avg", "count", "rate", "increase", "deriv", "changes", "absent",
    "histogram_quantile", "vector", "by", "on", "and", "or", "unless", "without", "bool",
}  # fmt: skip


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is not installed (apt-get install prometheus)")
    return subprocess.run(
        [binary, *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )


def load_rules() -> list[dict[str, Any]]:
    """Every rule of docker/prometheus/rules.yml, with its group name under `group`."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [{**rule, "group": group["name"]} for group in groups for rule in group["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [rule for rule in load_rules() if "alert" in rule]


def recording_rule_names() -> set[str]:
    return {rule["record"] for rule in load_rules() if "record" in rule}


def rule_expressions() -> list[tuple[str, str]]:
    """(rule name, PromQL) of every recording and alerting rule."""
    return [(rule.get("record") or rule["alert"], rule["expr"]) for rule in load_rules()]


def series_names(expr: str) -> set[str]:
    """Metric names a PromQL expression reads (identifiers outside label matchers and strings)."""
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    without_matchers = re.sub(r"\{[^}]*\}", "{}", without_strings)
    without_ranges = re.sub(r"\[[^\]]*\]", "[]", without_matchers)
    tokens = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", without_ranges))
    grouping = re.findall(r"\b(?:by|on|without)\s*\(([^)]*)\)", without_ranges)
    labels = {label.strip() for group in grouping for label in group.split(",")}
    return tokens - PROMQL_FUNCTIONS - labels


def deliverer_series() -> set[str]:
    """Every sample name the webhook deliverer's metrics export (webhooks/metrics.py), from a
    fresh registry: counters with _total, histograms with _bucket/_sum/_count, gauges."""
    from prometheus_client import CollectorRegistry

    from webhooks.metrics import DelivererMetrics

    registry = CollectorRegistry()
    DelivererMetrics(registry)
    return {sample.name for family in registry.collect() for sample in family.samples}


def documented_metrics() -> set[str]:
    """Metric names in docs/architecture.md, section "Metrics"."""
    text = (REPO / "docs" / "architecture.md").read_text()
    section = text.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"\b(ldm_[a-z0-9_]+)", section))


def test_promtool_check_config() -> None:
    result = promtool("check", "config", CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_unit_tests_pass() -> None:
    result = promtool("test", "rules", RULES_TEST)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests_would_catch_a_wrong_expectation(tmp_path: Path) -> None:
    """The unit tests are not vacuous: a wrong expected value makes promtool fail."""
    (tmp_path / "rules.yml").write_text(RULES.read_text())
    broken = RULES_TEST.read_text().replace("value: 0.75", "value: 0.5")
    assert broken != RULES_TEST.read_text()
    (tmp_path / "rules_test.yml").write_text(broken)
    result = promtool("test", "rules", tmp_path / "rules_test.yml")
    assert result.returncode != 0


def test_every_alert_has_for_severity_and_annotations() -> None:
    names = [rule["alert"] for rule in alerts()]
    assert len(names) == len(set(names)), "duplicate alert names"
    for rule in alerts():
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "")), f"{rule['alert']}: no for:"
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]


def test_the_required_alerts_exist() -> None:
    names = {rule["alert"] for rule in alerts()}
    required = {
        "LdmNoLiveWorkers",
        "LdmQueueBacklogGrowing",
        "LdmOldestQueuedJobTooOld",
        "LdmJobFailureRatioHigh",
        "LdmJobLatencyP95High",
        "LdmRedisMemoryNearMax",
        "LdmWorkerRestarting",
        "LdmWebhookDelivererDown",
        "LdmWebhookOutboxBacklogGrowing",
        "LdmWebhookDeliveryLagging",
        "LdmWebhookFailureRatioHigh",
    }
    assert required <= names


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    cases = yaml.safe_load(RULES_TEST.read_text())["tests"]
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in cases:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alerts()}
    assert names - firing == set(), f"alerts never tested firing: {sorted(names - firing)}"
    assert names - quiet == set(), f"alerts never tested quiet: {sorted(names - quiet)}"


def test_rules_read_only_documented_metrics() -> None:
    allowed = documented_metrics() | recording_rule_names() | BUILTIN_SERIES
    for name, expr in rule_expressions():
        read = {re.sub(r"_(bucket|sum|count)$", "", series) for series in series_names(expr)}
        unknown = read - allowed
        assert not unknown, f"{name} reads undocumented series {sorted(unknown)}"


def test_scrape_jobs_match_the_alerts() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    referenced = set()
    for _, expr in rule_expressions():
        referenced |= set(re.findall(r'job="([^"]+)"', expr))
    assert referenced <= jobs
    assert config["rule_files"] == ["rules.yml"]


def test_webhook_rules_read_the_deliverers_real_series() -> None:
    """Rules read only series the deliverer exports, and every one of its metrics is watched."""
    exported, read = deliverer_series(), set()
    for name, expr in rule_expressions():
        webhook = {s for s in series_names(expr) if s.startswith(("ldm_webhook_", "ldm_build_"))}
        assert webhook <= exported, f"{name} reads {sorted(webhook - exported)}"
        read |= webhook
    families = {re.sub(r"_(bucket|sum|count|created)$", "", s) for s in exported}
    unread = {f for f in families if not any(s.startswith(f) for s in read)}
    assert not unread, f"deliverer metrics no rule reads: {sorted(unread)}"
    assert 'up{job="ldm-webhooks"}' in " ".join(expr for _, expr in rule_expressions())
