"""End to end: the real stack and a real Prometheus; every dashboard and rule query returns data.

Starts redis-server with docker/redis.conf and the ACL users of docker/redis-users.acl.example (API,
worker and deliverer connect as the restricted `ldm` user), `ldm-serve api`, `ldm-serve worker`
with a tiny model, `ldm-serve webhooks`, a webhook receiver that verifies every signature, and
Debian's Prometheus with docker/prometheus/prometheus.yml rewritten to localhost targets (1 s
scrape and rule evaluation, static targets instead of DNS discovery) and the project's rules.yml.
Runs a few jobs (each with a webhook, every delivery verified), a cancellation and rejected
requests, then sends every PromQL expression of the Grafana dashboard and of rules.yml to
Prometheus' HTTP API and requires each to return at least one finite sample. Alert expressions are
evaluated with their comparisons turned into `bool` comparisons, so the test asks "does every
signal the alert compares exist", not "is the alert firing". Last, the worker must stop with exit 0
and Redis' ACL LOG must be empty.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import REPO, free_port, redis_server_binary, wait_for_port
from tests.deploy_e2e_harness import (
    Stack,
    finite,
    local_prometheus_config,
    query,
    wait_until,
    with_bool_comparisons,
)
from tests.test_deploy_dashboard import dashboard_expressions
from tests.test_deploy_prometheus import RULES, load_rules

yaml = pytest.importorskip("yaml")


pytestmark = pytest.mark.slow

API_KEY = "e2e-key-0123456789"
ACL_EXAMPLE = REPO / "docker" / "redis-users.acl.example"
REDIS_PASSWORD = "e2e-redis-ldm-password"
ADMIN_PASSWORD = "e2e-redis-admin-password"


def test_bool_rewrite_leaves_matchers_alone() -> None:
    expr = 'x{status=~"5..", a!="b"} > 0.1 and on (m) y == 0 or z != bool 1'
    assert with_bool_comparisons(expr) == (
        'x{status=~"5..", a!="b"} > bool 0.1 and on (m) y == bool 0 or z != bool 1'
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, str]]:
    binaries = {"redis-server": redis_server_binary(), "prometheus": shutil.which("prometheus")}
    missing = [name for name, path in binaries.items() if path is None]
    if missing:
        pytest.fail(f"{missing} not installed (apt-get install redis-server prometheus)")
    pytest.importorskip("diffusers", reason="the tiny test model is built with diffusers")
    pytest.importorskip("standardwebhooks", reason="the webhook receiver verifies with it")
    from testkit.tiny_models import build_tiny_sd

    workdir = tmp_path_factory.mktemp("deploy-e2e")
    model = build_tiny_sd(workdir / "tiny-sd")
    ports = {
        "redis": free_port(),
        "ldm-api": free_port(),
        "ldm-worker": free_port(),
        "ldm-webhooks": free_port(),
        "prometheus": free_port(),
        "receiver": free_port(),
    }
    redis_url = f"redis://ldm:{REDIS_PASSWORD}@127.0.0.1:{ports['redis']}/0"
    acl = ACL_EXAMPLE.read_text().replace("CHANGE-ME-LONG-RANDOM", REDIS_PASSWORD)
    (workdir / "users.acl").write_text(acl.replace("CHANGE-ME-TOO", ADMIN_PASSWORD))
    stack = Stack(workdir, ports)
    try:
        (workdir / "redis").mkdir()
        stack.start(
            "redis",
            [binaries["redis-server"], str(REPO / "docker" / "redis.conf")]
            + ["--port", str(ports["redis"]), "--bind", "127.0.0.1"]
            + ["--dir", str(workdir / "redis"), "--maxmemory", "256mb", "--save", ""]
            + ["--aclfile", str(workdir / "users.acl")],
        )
        wait_for_port(ports["redis"])
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "REDIS_URL": redis_url,
            "LDM_MODEL_NAME": "default",
            "LDM_API_KEYS": API_KEY,
            "LDM_RATE_LIMIT": "0",
            "LDM_DEFAULT_SIZE": "64",
            "LDM_MODEL": str(model),
            "LDM_DEVICE": "cpu",
            "LDM_DTYPE": "float32",
            "LDM_MAX_BATCH": "4",
            "LDM_METRICS_PORT": str(ports["ldm-worker"]),
            "LDM_SHUTDOWN_GRACE": "5",
            "OMP_NUM_THREADS": "1",
            # The receiver listens on loopback, which the SSRF rule refuses unless allowed.
            "LDM_WEBHOOK_ALLOW": "127.0.0.0/8",
        }
        cli = [sys.executable, "-m", "cli.main"]
        stack.start(
            "api", [*cli, "api", "--host", "127.0.0.1", "--port", str(ports["ldm-api"])], env
        )
        stack.start("worker", [*cli, "worker"], env)
        webhooks_env = {**env, "LDM_WEBHOOK_METRICS_PORT": str(ports["ldm-webhooks"])}
        stack.start("webhooks", [*cli, "webhooks"], webhooks_env)

        promdir = workdir / "prometheus"
        promdir.mkdir()
        shutil.copy(RULES, promdir / "rules.yml")
        config_path = promdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(local_prometheus_config(ports), sort_keys=False))
        prometheus = f"http://127.0.0.1:{ports['prometheus']}"
        stack.start(
            "prometheus",
            [binaries["prometheus"], f"--config.file={config_path}"]
            + [f"--storage.tsdb.path={promdir / 'data'}"]
            + [f"--web.listen-address=127.0.0.1:{ports['prometheus']}"],
        )
        yield stack, prometheus
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def prometheus_with_data(stack: tuple[Stack, str]) -> str:
    """Prometheus after every target is up and a few jobs have run through the stack."""
    processes, prometheus = stack

    def targets_up() -> bool:
        # Prometheus answers 503 "Service Unavailable" (plain text) until its TSDB is open.
        response = httpx.get(f"{prometheus}/api/v1/targets", timeout=5)
        if response.status_code != 200:
            return False
        targets = response.json()["data"]["activeTargets"]
        return len(targets) == 4 and all(t["health"] == "up" for t in targets)

    what = "every scrape target up (API, worker, deliverer, Prometheus)"
    wait_until(targets_up, 120, processes, what)
    # The worker has registered with rq once the API's gauge says so.
    wait_until(
        lambda: finite(query(prometheus, "ldm_workers_alive > 0")), 60, processes, "a live worker"
    )
    # Let Prometheus record the idle state first, so every rate() sees the jobs as increases.
    time.sleep(3)

    api_port = processes.ports["ldm-api"]
    api = httpx.Client(
        base_url=f"http://127.0.0.1:{api_port}",
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=10,
    )
    # Every job reports to a receiver that verifies the signatures with this key's secret.
    secret = api.get("/v1/webhooks/secret").json()["secret"]
    receiver_log = processes.workdir / "receiver.jsonl"
    receiver_port = processes.ports["receiver"]
    processes.start(
        "receiver",
        [sys.executable, "-m", "tests.webhook_receiver", "--port", str(receiver_port)]
        + ["--secret", secret, "--log", str(receiver_log)],
        {**os.environ, "PYTHONPATH": str(REPO)},
    )
    wait_for_port(receiver_port)
    webhook = {"url": f"http://127.0.0.1:{receiver_port}/hook",
               "events": ["completed", "failed", "canceled"]}  # fmt: skip
    job_ids = []
    for index in range(6):
        body = {
            "prompt": f"a red circle {index}",
            "width": 64,
            "height": 64,
            "steps": 4 + index,
            "num_images": 1 + index % 2,
            "seed": index,
            "webhook": webhook,
        }
        response = api.post("/v1/txt2img", json=body)
        assert response.status_code == 202, response.text
        job_ids.append(response.json()["id"])
    # One job canceled right after submission (outcome `canceled`, unless it already finished).
    canceled = api.post(
        "/v1/txt2img", json={"prompt": "a blue square", "steps": 40, "webhook": webhook}
    )
    assert canceled.status_code == 202, canceled.text
    assert api.delete(f"/v1/jobs/{canceled.json()['id']}").status_code in (200, 202)
    # Rejections: one invalid request (422 validation), one without a key (401 unauthorized).
    assert api.post("/v1/txt2img", json={"prompt": ""}).status_code == 422
    anonymous = httpx.post(f"http://127.0.0.1:{api_port}/v1/txt2img", json={"prompt": "x"})
    assert anonymous.status_code == 401

    def all_succeeded() -> bool:
        statuses = [api.get(f"/v1/jobs/{job_id}").json()["status"] for job_id in job_ids]
        assert "failed" not in statuses, statuses
        return all(status == "succeeded" for status in statuses)

    wait_until(all_succeeded, 180, processes, "six jobs to succeed")
    cancel_url = f"/v1/jobs/{canceled.json()['id']}"
    wait_until(
        lambda: api.get(cancel_url).json()["status"] in ("canceled", "succeeded"),
        60,
        processes,
        "the canceled job to end",
    )
    for job_id in job_ids:  # fetch the images too, like a client would
        for url in api.get(f"/v1/jobs/{job_id}").json()["images"]:
            assert api.get(url).status_code == 200

    def all_delivered() -> bool:
        states = [(api.get(f"/v1/jobs/{job_id}").json()["webhook"]["delivery"] or {}).get("state")
                  for job_id in [*job_ids, canceled.json()["id"]]]  # fmt: skip
        assert "failed" not in states, states
        return all(state == "delivered" for state in states)

    wait_until(all_delivered, 60, processes, "every job's webhook to be delivered")
    api.close()
    received = [json.loads(line) for line in receiver_log.read_text().splitlines()]
    assert len({entry["id"] for entry in received}) == len(job_ids) + 1
    assert all(entry["verified"] for entry in received), received

    def recorded() -> bool:
        expressions = (
            'model:ldm_worker_job_duration_seconds:quantile_rate5m{quantile="0.99"}',
            "job:ldm_webhook_attempt_duration_seconds:p95_rate5m",
        )
        return all(finite(query(prometheus, expr)) for expr in expressions)

    wait_until(recorded, 60, processes, "recording rules over the finished jobs")
    time.sleep(3)  # a few more scrapes and rule evaluations past the last job
    return prometheus


def test_every_rule_evaluates_without_error(prometheus_with_data: str) -> None:
    groups = httpx.get(f"{prometheus_with_data}/api/v1/rules", timeout=10).json()["data"]
    rules = [rule for group in groups["groups"] for rule in group["rules"]]
    assert len(rules) == len(load_rules())
    unhealthy = {rule["name"]: rule.get("lastError") for rule in rules if rule["health"] != "ok"}
    assert not unhealthy


def test_every_recording_rule_has_data(prometheus_with_data: str) -> None:
    empty = []
    for rule in load_rules():
        if "record" in rule:
            selector = rule["record"] + "{" + ",".join(
                f'{key}="{value}"' for key, value in rule.get("labels", {}).items()
            ) + "}"  # fmt: skip
            if not finite(query(prometheus_with_data, selector)):
                empty.append(selector)
    assert not empty, f"recording rules without a finite sample: {empty}"


def test_every_dashboard_query_returns_data(prometheus_with_data: str) -> None:
    empty = [
        f"{where}: {expr}"
        for where, expr in dashboard_expressions()
        if not finite(query(prometheus_with_data, expr))
    ]
    assert not empty, "panels that would stay empty:\n" + "\n".join(empty)


def test_every_rule_expression_returns_data(prometheus_with_data: str) -> None:
    empty = []
    for rule in load_rules():
        expr = rule["expr"] if "record" in rule else with_bool_comparisons(rule["expr"])
        if not finite(query(prometheus_with_data, expr)):
            empty.append(f"{rule.get('record') or rule['alert']}: {expr}")
    assert not empty, "rules whose inputs never show up:\n" + "\n".join(empty)


def test_no_alert_fires_on_a_healthy_stack(prometheus_with_data: str) -> None:
    alerts = httpx.get(f"{prometheus_with_data}/api/v1/alerts", timeout=10).json()
    active = [alert["labels"]["alertname"] for alert in alerts["data"]["alerts"]]
    assert not active, active


def test_worker_stops_cleanly_and_the_redis_acl_refused_nothing(
    stack: tuple[Stack, str], prometheus_with_data: str
) -> None:
    """Last: SIGTERM the worker (exit 0), then no command of the whole run hit an ACL denial."""
    import redis

    processes, _ = stack
    name, worker, _ = processes.processes[2]
    assert name == "worker"
    worker.terminate()
    assert worker.wait(timeout=30) == 0, processes.logs()
    admin = redis.Redis(port=processes.ports["redis"], username="admin", password=ADMIN_PASSWORD)
    denied = admin.acl_log()
    admin.close()
    assert not denied, denied
