"""deploy/k8s without a cluster or kustomize: rendered, schema-valid, consistent with the code.

A small renderer (tests/deploy_k8s_harness.py) applies each kustomization (`resources`,
strategic-merge `patches`, `images`, `namespace`); built-in objects are validated against
Kubernetes 1.30's OpenAPI schemas (kubernetes-validate, strict, offline), the CRDs (KEDA,
prometheus-operator) by explicit assertions. Then what matters: KEDA watches the list the workers
consume, the ConfigMap sets only real settings, probes hit real routes and ports (the webhook
deliverer's on the real `ldm-serve webhooks` process), and the worker's and the deliverer's grace
outlasts their drain. Pod lockdown, the Redis fence and the deliverer's egress:
tests/test_deploy_k8s_security.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, free_port, wait_for_port
from tests.deploy_k8s_harness import (
    CRD_REQUIRED,
    CRDS,
    DEPLOYABLE,
    K8S,
    KUBERNETES_VERSION,
    KUSTOMIZATIONS,
    NAMESPACE,
    TEMPLATE,
    container,
    env_names,
    labels,
    matches,
    one,
    pods,
    render,
    settings,
)

yaml = pytest.importorskip("yaml")


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_objects_are_valid(path: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    objects = render(path) + ([TEMPLATE] if path == "base" else [])
    for obj in objects:
        kind, name = obj["kind"], obj["metadata"]["name"]
        assert obj["metadata"].get("namespace") == (None if kind == "Namespace" else NAMESPACE)
        if obj["apiVersion"] in CRDS:
            assert kind in CRDS[obj["apiVersion"]], f"unknown custom resource {kind}"
            for field in CRD_REQUIRED[kind]:
                value: Any = obj
                for part in field.split("."):
                    value = (value[0] if isinstance(value, list) else value)[part]
                assert value, f"{kind}/{name}: {field}"
            for trigger in obj["spec"].get("triggers", []):  # KEDA: map[string]string
                assert all(isinstance(v, str) for v in trigger["metadata"].values())
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{kind}/{name}: {exc.message} at {list(exc.path)}")


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_renderer_agrees_with_kustomize(path: str) -> None:
    built = subprocess.run(["kubectl", "kustomize", str(K8S / path)], capture_output=True,
                           text=True, check=True, timeout=60).stdout  # fmt: skip
    key = lambda o: (o["kind"], o["metadata"]["name"])  # noqa: E731
    assert sorted(yaml.safe_load_all(built), key=key) == sorted(render(path), key=key)


def test_keda_scales_workers_on_the_queue_they_consume(monkeypatch: pytest.MonkeyPatch) -> None:
    import redis
    from rq import Queue

    from jobs.store import JobStore

    objects = render("overlays/gpu")
    spec = one(objects, "ScaledObject")["spec"]
    target = one(objects, spec["scaleTargetRef"]["kind"], spec["scaleTargetRef"]["name"])
    assert target["spec"]["template"] is pods(objects)["worker"]
    assert "replicas" not in target["spec"], "an apply would reset KEDA's replica count"
    assert spec["minReplicaCount"] == 0 < spec["maxReplicaCount"]
    (trigger,) = spec["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "redis" and meta["activationListLength"] == "0"
    worker, api = settings(objects, "worker", monkeypatch), settings(objects, "api", monkeypatch)
    assert worker.model_name == api.model_name
    client = redis.Redis()  # never connects: both names are computed
    assert meta["listName"] == Queue(worker.queue_name, connection=client).key
    assert meta["listName"] == JobStore(client).queue(api.model_name).key
    assert int(meta["listLength"]) >= 1 and meta["databaseIndex"] == "0"
    host, port = meta["address"].rsplit(":", 1)
    service = one(objects, "Service", host.split(".")[0])
    assert host == f"{service['metadata']['name']}.{NAMESPACE}.svc.cluster.local"
    assert int(port) == service["spec"]["ports"][0]["port"]
    assert matches({"matchLabels": service["spec"]["selector"]}, labels(objects, "redis"))
    assert worker.redis_url.endswith(f"@{host.split('.')[0]}:{port}/0")
    auth = one(objects, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    (ref,) = auth["spec"]["secretTargetRef"]
    assert ref["parameter"] == "password" and ref["name"] == TEMPLATE["metadata"]["name"]
    assert ref["key"] in TEMPLATE["stringData"]
    # With scale to zero, an API that is unready without workers could never wake one.
    assert container(objects, "api")["readinessProbe"]["httpGet"]["path"] != "/readyz"


@pytest.mark.parametrize("path", DEPLOYABLE)
def test_config_names_real_settings(path: str) -> None:
    from tests.deploy_compose_harness import settings_in_code  # env names the settings read
    from webhooks.settings import DelivererSettings

    objects, names = render(path), settings_in_code()
    assert set(one(objects, "ConfigMap")["data"]) <= names
    for component in ("api", "worker"):
        for env in container(objects, component)["env"]:
            assert env["name"] in names | {"REDIS_PASSWORD", "HOME"}, env["name"]
    # The deliverer's own variables are all settings it reads (REDIS_PASSWORD only builds the URL).
    deliverer = {env["name"] for env in container(objects, "webhooks")["env"]}
    assert deliverer - {"REDIS_PASSWORD"} <= env_names(DelivererSettings)
    assert {"REDIS_URL", "LDM_WEBHOOK_SECRET"} <= deliverer
    assert "LDM_WEBHOOK_METRICS_PORT" in one(objects, "ConfigMap")["data"]
    # API and deliverer must derive the same signing secrets: the same Secret key, or neither.
    secret_refs = {
        component: {
            env["name"]: env["valueFrom"]["secretKeyRef"]
            for env in container(objects, component)["env"]
            if "secretKeyRef" in env.get("valueFrom", {})
        }  # fmt: skip
        for component in ("api", "webhooks")
    }
    assert secret_refs["api"]["LDM_WEBHOOK_SECRET"] == secret_refs["webhooks"]["LDM_WEBHOOK_SECRET"]
    assert secret_refs["api"]["REDIS_PASSWORD"] == secret_refs["webhooks"]["REDIS_PASSWORD"]
    api = next(e for e in container(objects, "api")["env"] if e["name"] == "REDIS_URL")
    hook = next(e for e in container(objects, "webhooks")["env"] if e["name"] == "REDIS_URL")
    assert api["value"] == hook["value"]


@pytest.mark.parametrize("path", DEPLOYABLE)
def test_probes_scrapes_and_grace_fit_the_code(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient

    from service.main import create_app
    from service.routes.health import router
    from workers.metrics import serve

    objects = render(path)
    api, worker = settings(objects, "api", monkeypatch), settings(objects, "worker", monkeypatch)
    routes, client = {route.path for route in router.routes}, TestClient(create_app(api))
    for component, port in {"api": api.api_port, "worker": worker.metrics_port}.items():
        box, annotations = container(objects, component), pods(objects)[component]["metadata"]
        probes = [box[p]["httpGet"] for p in ("readinessProbe", "livenessProbe")]
        ports = {p["name"]: p["containerPort"] for p in box["ports"]}
        assert {ports[probe["port"]] for probe in probes} == {port}
        annotations = annotations["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(port)
        paths = {probe["path"] for probe in probes} | {annotations["prometheus.io/path"]}
        if component == "api":  # the health routes, answering 200 without Redis
            assert paths <= routes  # type: ignore[operator]
            assert all(client.get(probe["path"]).status_code == 200 for probe in probes)
            continue
        server, thread = serve(local := free_port())
        try:  # the worker's real metrics server answers every path its probes and scrapes use
            for p in paths:
                with urllib.request.urlopen(f"http://127.0.0.1:{local}{p}", timeout=5) as answer:
                    assert answer.status == 200
        finally:
            server.shutdown()
            thread.join(5)
    # SIGTERM drains running jobs for shutdown_grace; the kubelet's SIGKILL must come later.
    assert worker.shutdown_grace >= worker.job_timeout, "a running job could not finish"
    assert pods(objects)["worker"]["spec"]["terminationGracePeriodSeconds"] >= (
        worker.shutdown_grace + 30
    )


@pytest.mark.parametrize("path", DEPLOYABLE)
def test_deliverer_probes_and_scrapes_hit_the_real_deliverer(
    path: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`ldm-serve webhooks` with the manifest's environment (Redis unreachable, as in a pod
    started before Redis): its metrics server answers every probe and scrape path, on the port
    the manifest names, on every interface; SIGTERM ends it with 0 within the grace period."""
    objects = render(path)
    deliverer = settings(objects, "webhooks", monkeypatch)
    pod, box = pods(objects)["webhooks"], container(objects, "webhooks")
    assert box["args"] == ["webhooks"] and box["image"] == container(objects, "api")["image"]
    probes = [box[p]["httpGet"] for p in ("readinessProbe", "livenessProbe")]
    ports = {p["name"]: p["containerPort"] for p in box["ports"]}
    assert {ports[probe["port"]] for probe in probes} == {deliverer.metrics_port} == {9102}
    assert deliverer.metrics_host in ("0.0.0.0", "::"), "the kubelet probes the pod's address"
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(deliverer.metrics_port)
    paths = {probe["path"] for probe in probes} | {annotations["prometheus.io/path"]}

    env = {k: v for k, v in os.environ.items() if not k.startswith("LDM_") and k != "REDIS_URL"}
    for source in box["envFrom"]:
        env.update(one(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
    env.update({e["name"]: e["value"] for e in box["env"] if "value" in e})
    assert env["LDM_WEBHOOK_METRICS_PORT"] == str(deliverer.metrics_port)
    local = free_port()
    env.update({"REDIS_URL": f"redis://:pw@127.0.0.1:{free_port()}/0",  # nothing listens there
                "LDM_WEBHOOK_METRICS_PORT": str(local), "LDM_WEBHOOK_METRICS_HOST": "127.0.0.1",
                "PYTHONPATH": str(REPO)})  # fmt: skip
    log = tmp_path / "deliverer.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "cli.main", "webhooks"], cwd=REPO,
                                   env=env, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        wait_for_port(local, timeout=30)
        for p in paths:
            with urllib.request.urlopen(f"http://127.0.0.1:{local}{p}", timeout=5) as answer:
                assert answer.status == 200
        deadline = time.monotonic() + 30  # the server starts before the deliverer's metrics
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{local}/metrics", timeout=5) as answer:
                if b"ldm_webhook_outbox_messages" in answer.read():
                    break
            assert time.monotonic() < deadline and process.poll() is None, log.read_text()
            time.sleep(0.1)
        started = time.monotonic()
        process.terminate()
        assert process.wait(timeout=30) == 0, log.read_text()
        assert time.monotonic() - started < pod["spec"]["terminationGracePeriodSeconds"]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    # SIGTERM waits up to timeout_s + 5 for the attempts under way; SIGKILL must come later.
    assert pod["spec"]["terminationGracePeriodSeconds"] >= deliverer.timeout_s + 5 + 10


def test_gpu_overlay_alone_requests_a_gpu_and_images_match_compose() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    for path, worker_service in (("overlays/cpu", "worker"), ("overlays/gpu", "worker-gpu")):
        objects = render(path)
        images = {c: container(objects, c)["image"] for c in pods(objects)}
        assert images == {"api": compose["api"]["image"], "redis": compose["redis"]["image"],
                          "worker": compose[worker_service]["image"],
                          "webhooks": compose["webhooks"]["image"]}  # fmt: skip
        assert container(objects, "webhooks")["args"] == compose["webhooks"]["command"]
        resources = container(objects, "worker")["resources"]
        gpus = {kind: resources[kind].get("nvidia.com/gpu") for kind in ("requests", "limits")}
        if path == "overlays/gpu":
            assert gpus == {"requests": "1", "limits": "1"}
            assert one(objects, "ConfigMap")["data"]["LDM_DEVICE"] == "cuda"
        else:
            assert "nvidia.com/gpu" not in json.dumps(objects)


def test_service_monitors_scrape_the_jobs_the_rules_use() -> None:
    objects = render("overlays/gpu") + render("monitoring")
    prometheus = yaml.safe_load((REPO / "docker/prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"] for job in prometheus["scrape_configs"]}
    monitored = set()
    for monitor in (o for o in objects if o["kind"] == "ServiceMonitor"):
        spec = monitor["spec"]
        (service,) = [s for s in objects if s["kind"] == "Service"
                      and matches(spec["selector"], s["metadata"]["labels"])]  # fmt: skip
        assert service["metadata"]["labels"][spec["jobLabel"]] in jobs
        ports = {p["name"] for p in service["spec"]["ports"]}
        assert spec["endpoints"] and all(e["port"] in ports for e in spec["endpoints"])
        assert all(e["path"] == "/metrics" for e in spec["endpoints"])
        component = service["spec"]["selector"]["app.kubernetes.io/component"]
        assert matches({"matchLabels": service["spec"]["selector"]}, labels(objects, component))
        numbers = {p["name"]: str(p["port"]) for p in service["spec"]["ports"]}
        annotations = pods(objects)[component]["metadata"]["annotations"]
        assert {numbers[e["port"]] for e in spec["endpoints"]} == {
            annotations["prometheus.io/port"]
        }
        monitored.add(service["metadata"]["labels"][spec["jobLabel"]])
    # Every scrape job of prometheus.yml but Prometheus' own has its ServiceMonitor.
    assert monitored == jobs - {"prometheus"} == {"ldm-api", "ldm-worker", "ldm-webhooks"}
