"""deploy/k8s rendered without a cluster or kustomize, and queries on the rendered objects.

A small renderer applies each kustomization (`resources`, strategic-merge `patches`, `images`,
`namespace`); the helpers find objects, pod templates, containers and labels, build the real
settings classes from a container's environment, and decide what the NetworkPolicies let a pod
connect to (tests/test_deploy_k8s.py, tests/test_deploy_k8s_security.py).
"""

from __future__ import annotations

import copy
import ipaddress
import os
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO

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
