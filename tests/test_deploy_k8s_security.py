"""deploy/k8s without a cluster: locked-down pods, placeholder Secrets, Redis fenced, egress.

Rendered by tests/deploy_k8s_harness.py. Pods are locked down and the Secret is a placeholder that
an apply never overwrites; Redis is fenced and runs with the manifest's own arguments in a real
redis-server, and the deliverer may reach the internet on 80/443 but no private, link-local or
metadata address.
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
import subprocess
from pathlib import Path

import pytest

from tests.conftest import free_port, redis_server_binary, wait_for_port
from tests.deploy_k8s_harness import (
    DEPLOYABLE,
    FORBIDDEN_EGRESS,
    TEMPLATE,
    container,
    egress_allowed,
    labels,
    matches,
    pods,
    render,
)


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
