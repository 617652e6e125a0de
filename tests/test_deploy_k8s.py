"""deploy/k8s without a cluster or kustomize: rendered, schema-valid, consistent with the code.

A small renderer applies each kustomization (`resources`, strategic-merge `patches`, `images`,
`namespace`); built-in objects are validated against Kubernetes 1.30's OpenAPI schemas
(kubernetes-validate, strict, offline), the CRDs (KEDA, prometheus-operator) by explicit
assertions. Then what matters: KEDA watches the list the workers consume, the ConfigMap sets only
real settings, probes hit real routes and ports (the webhook deliverer's on the real
`ldm-serve webhooks` process), the worker's and the deliverer's grace outlasts their drain, Redis
is fenced and runs with the manifest's own arguments in a real redis-server, and the deliverer may
reach the internet on 80/443 but no private, link-local or metadata address.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, free_port, redis_server_binary, wait_for_port

yaml = pytest.importorskip("yaml")

K8S = REPO / "deploy" / "k8s"
KUSTOMIZATIONS = ("base", "keda", "monitoring", "overlays/cpu", "overlays/gpu")
DEPLOYABLE = ("overlays/cpu", "overlays/gpu")
NAMESPACE = "ldm-serve"
KUBERNETES_VERSION = "1.30.0"
CRDS = {"keda.sh/v1alpha1": {"ScaledObject", "TriggerAuthentication"},
        "monitoring.coreos.com/v1": {"ServiceMonitor"}}  # fmt: skip
CLUSTER_SCOPED = {"Namespace", "PersistentVolume", "StorageClass", "ClusterRole"}
# Strategic-merge keys of the lists the overlays patch; any other list is replaced.
MERGE_KEYS = {"containers": "name", "env": "name", "volumes": "name", "volumeMounts": "mountPath"}
TEMPLATE = yaml.safe_load((K8S / "secret.template.yaml").read_text())
# What the CRDs' schemas require (KEDA 2.x, prometheus-operator); list items: their first.
CRD_REQUIRED = {
    "ScaledObject": ("spec.scaleTargetRef.name", "spec.triggers.type", "spec.triggers.metadata"),
    "TriggerAuthentication": ("spec.secretTargetRef.parameter", "spec.secretTargetRef.key"),
    "ServiceMonitor": ("spec.selector", "spec.endpoints.port"),
}
# Where the deliverer must never connect: the cluster's and nodes' private ranges, CGNAT, link-local
# (cloud metadata 169.254.169.254; Alibaba's 100.100.100.200 is CGNAT) and loopback.
FORBIDDEN_EGRESS = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16",
                    "100.64.0.0/10", "127.0.0.0/8")  # fmt: skip
Obj = dict[str, Any]


def merge(base: Obj, patch: Obj) -> None:
    for key, value in patch.items():
        if value is None:
            base.pop(key, None)
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        elif key in MERGE_KEYS and isinstance(base.get(key), list):
            items, added = {item[MERGE_KEYS[key]]: item for item in base[key]}, []
            for item in value:
                if item[MERGE_KEYS[key]] in items:
                    merge(items[item[MERGE_KEYS[key]]], item)
                else:
                    added.append(copy.deepcopy(item))
            base[key][:0] = added  # kustomize puts new list items first
        else:
            base[key] = copy.deepcopy(value)


def render(path: str | Path) -> list[Obj]:
    """What `kustomize build` makes of the subset of kustomization.yaml these files use."""
    root = K8S / path
    spec = yaml.safe_load((root / "kustomization.yaml").read_text())
    assert set(spec) <= {"apiVersion", "kind", "namespace", "resources", "patches", "images"}
    objects: list[Obj] = []
    for entry in spec.get("resources", []):
        source = root / entry
        docs = render(source) if source.is_dir() else yaml.safe_load_all(source.read_text())
        objects += [doc for doc in docs if doc]
    for patch in spec.get("patches", []):
        assert set(patch) == {"path"}, "only strategic-merge patch files"
        for doc in yaml.safe_load_all((root / patch["path"]).read_text()):
            merge(one(objects, doc["kind"], doc["metadata"]["name"]), doc)
    for image in spec.get("images", []):
        for pod in pods(objects).values():
            for box in pod["spec"]["containers"]:
                name, _, tag = box["image"].partition(":")
                if name == image["name"]:
                    box["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"
    for obj in objects:
        if "namespace" in spec and obj["kind"] not in CLUSTER_SCOPED:
            obj["metadata"]["namespace"] = spec["namespace"]
    return objects


def one(objects: list[Obj], kind: str, name: str | None = None) -> Obj:
    found = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"{len(found)} x {kind} {name or ''}"
    return found[0]


def pods(objects: list[Obj]) -> dict[str, Obj]:
    """Pod templates of the Deployments and StatefulSets, by component (api, worker, webhooks,
    redis)."""
    kinds = ("Deployment", "StatefulSet")
    templates = [o["spec"]["template"] for o in objects if o["kind"] in kinds]
    return {t["metadata"]["labels"]["app.kubernetes.io/component"]: t for t in templates}


def labels(objects: list[Obj], component: str) -> dict[str, str]:
    return pods(objects)[component]["metadata"]["labels"]


def container(objects: list[Obj], component: str) -> Obj:
    (only,) = pods(objects)[component]["spec"]["containers"]
    return only


def matches(selector: Obj, pod_labels: dict[str, str]) -> bool:
    expressions = selector.get("matchExpressions", [])
    return all(pod_labels.get(k) == v for k, v in selector.get("matchLabels", {}).items()) and all(
        pod_labels.get(e["key"]) in e["values"] for e in expressions
    )


def settings(objects: list[Obj], component: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The real settings class, reading the container's environment: ConfigMaps, then values."""
    from service.settings import ApiSettings
    from webhooks.settings import DelivererSettings
    from workers.settings import WorkerSettings

    box = container(objects, component)
    for name in [n for n in os.environ if n.startswith("LDM_") or n == "REDIS_URL"]:
        monkeypatch.delenv(name)
    for source in box.get("envFrom", []):
        for name, value in one(objects, "ConfigMap", source["configMapRef"]["name"])[
            "data"
        ].items():
            monkeypatch.setenv(name, value)
    for env in (e for e in box.get("env", []) if "value" in e):
        monkeypatch.setenv(env["name"], env["value"])
    classes = {"api": ApiSettings, "worker": WorkerSettings, "webhooks": DelivererSettings}
    return classes[component]()


def env_names(settings_class: Any) -> set[str]:
    """The env vars one settings class reads (its validation aliases)."""
    names = set()
    for field in settings_class.model_fields.values():
        alias = field.validation_alias
        choices = alias.choices if hasattr(alias, "choices") else [alias]
        names |= {choice.upper() for choice in choices if isinstance(choice, str)}
    return names


def egress_allowed(objects: list[Obj], component: str, ip: str, port: int,
                   protocol: str = "TCP") -> bool:  # fmt: skip
    """Whether the NetworkPolicies let a component's pods connect to ip:port (ipBlock peers only;
    a pod or namespace selector never matches a bare address). Policies add up: one rule of one
    policy selecting the pod is enough; no Egress policy selecting it allows everything."""
    pod_labels, address = labels(objects, component), ipaddress.ip_address(ip)
    policies = [p["spec"] for p in objects if p["kind"] == "NetworkPolicy"
                and "Egress" in p["spec"]["policyTypes"]
                and matches(p["spec"]["podSelector"], pod_labels)]  # fmt: skip
    if not policies:
        return True
    for rule in (rule for policy in policies for rule in policy.get("egress", [])):
        ports = rule.get("ports")
        if ports and not any(
            q.get("protocol", "TCP") == protocol and q.get("port") in (None, port) for q in ports
        ):
            continue
        peers = rule.get("to")
        if not peers:
            return True
        for peer in (p["ipBlock"] for p in peers if "ipBlock" in p):
            if address in ipaddress.ip_network(peer["cidr"]) and not any(
                address in ipaddress.ip_network(cut) for cut in peer.get("except", [])
            ):
                return True
    return False


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
    from tests.test_deploy_compose import settings_in_code  # env names the settings read
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


@pytest.mark.parametrize("path", DEPLOYABLE)
def test_deliverer_reaches_the_internet_but_nothing_internal(path: str) -> None:
    objects = render(path)
    for cidr in FORBIDDEN_EGRESS:  # never reachable on any port but DNS's
        network = ipaddress.ip_network(cidr)
        for inside in (network[1], network[-2], network[network.num_addresses // 2]):
            for port in (80, 443, 6379, 8000, 9101, 9102):
                assert not egress_allowed(objects, "webhooks", str(inside), port), (inside, port)
    for ip in ("169.254.169.254", "100.100.100.200", "10.96.0.1", "172.17.0.1", "127.0.0.1"):
        assert not egress_allowed(objects, "webhooks", ip, 80)
        assert not egress_allowed(objects, "webhooks", ip, 443)
    for ip in ("93.184.215.14", "1.1.1.1", "8.8.8.8", "203.0.114.7"):  # receivers
        assert egress_allowed(objects, "webhooks", ip, 443)
        assert egress_allowed(objects, "webhooks", ip, 80)
        assert not egress_allowed(objects, "webhooks", ip, 22)
        assert not egress_allowed(objects, "webhooks", ip, 6379)
        assert not egress_allowed(objects, "webhooks", ip, 443, "UDP")
        for component in ("api", "worker"):  # the deliverer's opening is its own
            assert not egress_allowed(objects, component, ip, 443)
    assert egress_allowed(objects, "webhooks", "10.96.0.10", 53, "UDP")  # cluster DNS
    policies = [p["spec"] for p in objects if p["kind"] == "NetworkPolicy"
                and matches(p["spec"]["podSelector"], labels(objects, "webhooks"))]  # fmt: skip
    for rule in (r for p in policies for r in p.get("egress", [])):
        for peer in rule.get("to", []):
            if "ipBlock" in peer:  # the API server refuses an `except` outside its cidr
                block = ipaddress.ip_network(peer["ipBlock"]["cidr"])
                cuts = [ipaddress.ip_network(c) for c in peer["ipBlock"].get("except", [])]
                assert all(cut.subnet_of(block) and cut != block for cut in cuts)  # type: ignore[arg-type]
                assert all(any(ipaddress.ip_network(f).subnet_of(cut) for cut in cuts)  # type: ignore[arg-type]
                           for f in FORBIDDEN_EGRESS)  # fmt: skip
            else:  # the only pods it may reach: Redis, on its port
                assert "namespaceSelector" not in peer
                reached = {c for c in pods(objects)
                           if matches(peer["podSelector"], labels(objects, c))}  # fmt: skip
                assert reached == {"redis"}
                assert rule["ports"] == [{"protocol": "TCP", "port": 6379}]
    # Nothing may connect to it but Prometheus, on its metrics port.
    ingress = [r for p in policies if "Ingress" in p["policyTypes"] for r in p["ingress"]]
    monitoring = {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    assert ingress and all(rule["from"] == [{"namespaceSelector": monitoring}] for rule in ingress)
    assert all(rule["ports"] == [{"protocol": "TCP", "port": 9102}] for rule in ingress)


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


@pytest.mark.parametrize("path", DEPLOYABLE)
def test_pods_are_locked_down_and_secrets_are_placeholders(path: str) -> None:
    objects = render(path)
    assert not [o for o in objects if o["kind"] == "Secret"], "apply must not overwrite the Secret"
    assert TEMPLATE["kind"] == "Secret" and "data" not in TEMPLATE
    assert all(v.startswith("CHANGE-ME") for v in TEMPLATE["stringData"].values())
    for pod in (template["spec"] for template in pods(objects).values()):
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert pod["enableServiceLinks"] is False  # no LDM_SERVE_API_PORT=tcp://... in the env
        for box in pod["containers"]:
            context = box["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert box["resources"]["limits"]["memory"]
            for env in box.get("env", []):
                if "secretKeyRef" in env.get("valueFrom", {}):
                    ref = env["valueFrom"]["secretKeyRef"]
                    assert ref["name"] == TEMPLATE["metadata"]["name"]
                    assert ref["key"] in TEMPLATE["stringData"]
    for pdb in (o for o in objects if o["kind"] == "PodDisruptionBudget"):
        assert sum(matches(pdb["spec"]["selector"], labels(objects, c)) for c in pods(objects)) == 1


@pytest.mark.parametrize("path", DEPLOYABLE)
def test_only_api_workers_and_deliverer_reach_redis(path: str) -> None:
    objects = render(path)
    redis_labels = labels(objects, "redis")
    fences = [p["spec"] for p in objects if p["kind"] == "NetworkPolicy"
              and matches(p["spec"]["podSelector"], redis_labels)]  # fmt: skip
    assert fences and all(f["policyTypes"] == ["Ingress"] for f in fences)
    peers = [peer for f in fences for rule in f["ingress"] for peer in rule["from"]]
    assert all(port == {"protocol": "TCP", "port": 6379}
               for f in fences for rule in f["ingress"] for port in rule["ports"])  # fmt: skip
    allowed = set()
    for peer in peers:
        if "namespaceSelector" in peer:  # KEDA's operator, reading the queue's length
            keda = {"kubernetes.io/metadata.name": "keda"}
            assert path == "overlays/gpu" and peer["namespaceSelector"]["matchLabels"] == keda
            assert peer["podSelector"]["matchLabels"] == {"app": "keda-operator"}
            continue
        allowed |= {c for c in pods(objects) if matches(peer["podSelector"], labels(objects, c))}
    assert allowed == {"api", "worker", "webhooks"}


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


@pytest.mark.skipif(redis_server_binary() is None, reason="redis-server is not installed")
def test_redis_runs_with_the_manifests_arguments(tmp_path: Path) -> None:
    import redis

    password, port = secrets.token_hex(16), free_port()
    args = container(render("overlays/gpu"), "redis")["args"]
    args = [a.replace("$(REDIS_PASSWORD)", password).replace("/data", str(tmp_path)) for a in args]
    process = subprocess.Popen([redis_server_binary(), *args[1:], "--port", str(port)],
                               stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for_port(port)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as anonymous:
            anonymous.sendall(b"PING\r\n")
            assert anonymous.recv(64).startswith(b"-NOAUTH")
        client = redis.Redis(port=port, password=password, decode_responses=True)
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        assert client.config_get("dir")["dir"] == str(tmp_path)
    finally:
        process.terminate()
        process.wait(10)
