"""docker-compose.yml without a Docker engine: schema-valid, and everything it names exists.

Checks the compose file against the Compose Specification JSON schema, that every service, volume,
network, bind-mounted file, build file and port it names is real, and that docker/redis.conf gives
the durability the deploy guide promises, in a real redis-server. Secure defaults, secrets and
settings: tests/test_deploy_compose_secrets.py; helpers: tests/deploy_compose_harness.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, free_port, redis_server_binary
from tests.deploy_compose_harness import (
    PROMETHEUS_YML,
    REDIS_CONF,
    WORKER_SERVICES,
    bind_mounts,
    compose_fixture,  # noqa: F401
    compose_schema_path,
    running_redis,
    seconds,
)

jsonschema = pytest.importorskip("jsonschema")
yaml = pytest.importorskip("yaml")


def test_compose_file_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    schema = json.loads(compose_schema_path().read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(compose)]
    assert not errors, "\n".join(errors)


def test_expected_services_with_restart_and_healthcheck(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {
        "redis",
        "api",
        "worker",
        "worker-gpu",
        "webhooks",
        "prometheus",
        "grafana",
    }
    for name, service in services.items():
        assert service.get("restart") == "unless-stopped", name
        test = service.get("healthcheck", {}).get("test")
        assert test and not service["healthcheck"].get("disable"), f"{name}: no healthcheck"


def test_references_between_services_networks_and_volumes(compose: dict[str, Any]) -> None:
    services, networks = compose["services"], set(compose.get("networks", {}))
    volumes = set(compose.get("volumes", {}))
    for name, service in services.items():
        assert set(service.get("depends_on", {})) <= set(services), name
        assert set(service.get("networks", [])) <= networks, name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in volumes, f"{name}: undeclared volume {source}"


def test_build_contexts_and_dockerfiles_exist(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        build = service.get("build")
        if build is None:
            continue
        context = (REPO / build["context"]).resolve()
        assert context.is_dir(), name
        assert (context / build["dockerfile"]).is_file(), f"{name}: {build['dockerfile']}"


@pytest.mark.parametrize(
    "service_name", ["redis", "api", "worker", "worker-gpu", "prometheus", "grafana"]
)
def test_bind_mounted_paths_exist(compose: dict[str, Any], service_name: str) -> None:
    for source, target in bind_mounts(compose["services"][service_name]):
        path = (REPO / source).resolve()
        if not path.exists() and source.rstrip("/") == "./models":
            pytest.skip("models/ is produced by the default-model task (MODELS_DIR default)")
        assert path.exists(), f"{service_name}: {source} -> {target} does not exist"


def test_redis_is_private_durable_and_never_evicts(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    assert "ports" not in redis, "Redis must not publish a port"
    for network in redis["networks"]:
        assert compose["networks"][network].get("internal") is True, network
    mounts = dict((target, source) for source, target in bind_mounts(redis))
    conf_path = redis["command"][1]
    assert (REPO / mounts[conf_path]).resolve() == REDIS_CONF
    assert "--maxmemory" in redis["command"]
    conf = REDIS_CONF.read_text()
    for line in ("appendonly yes", "appendfsync everysec", "maxmemory-policy noeviction"):
        assert re.search(rf"^{line}$", conf, re.MULTILINE), line


def test_redis_conf_loads_in_a_real_redis_server(tmp_path: Path) -> None:
    binary = redis_server_binary()
    if binary is None:
        pytest.skip("redis-server not installed")
    import redis

    port = free_port()
    args = [binary, str(REDIS_CONF), "--port", str(port), "--bind", "127.0.0.1"]
    args += ["--dir", str(tmp_path), "--maxmemory", "64mb"]
    with running_redis(args, port):
        client = redis.Redis(port=port)
        expected = {
            "appendonly": "yes",
            "appendfsync": "everysec",
            "maxmemory-policy": "noeviction",
            "maxmemory": str(64 * 1024 * 1024),
        }
        for key, value in expected.items():
            assert client.config_get(key)[key] == value, key
        client.close()


def test_workers_scale_and_prometheus_discovers_them(compose: dict[str, Any]) -> None:
    scrape = yaml.safe_load(PROMETHEUS_YML.read_text())
    jobs = {job["job_name"]: job for job in scrape["scrape_configs"]}
    sd = jobs["ldm-worker"]["dns_sd_configs"]
    names = {name for config in sd for name in config["names"]}
    assert names == set(WORKER_SERVICES)
    for name in WORKER_SERVICES:
        service = compose["services"][name]
        # `--scale worker=N` breaks on a fixed container name or a published host port.
        assert "container_name" not in service and "ports" not in service, name
        port = int(service["environment"]["LDM_METRICS_PORT"])
        assert {config["type"] for config in sd} == {"A"}
        assert {config["port"] for config in sd} == {port}
        assert str(port) in [str(p) for p in service["expose"]], name
        prometheus_nets = set(compose["services"]["prometheus"]["networks"])
        assert prometheus_nets & set(service["networks"]), f"prometheus cannot reach {name}"
    api_sd = jobs["ldm-api"]["dns_sd_configs"]
    assert api_sd[0]["names"] == ["api"] and api_sd[0]["type"] == "A"
    assert api_sd[0]["port"] == int(compose["services"]["api"]["environment"]["LDM_API_PORT"])


def test_worker_stop_grace_outlasts_a_job(compose: dict[str, Any]) -> None:
    job_timeout = 600  # LDM_JOB_TIMEOUT default (docs/architecture.md)
    for name in WORKER_SERVICES:
        service = compose["services"][name]
        grace = float(service["environment"]["LDM_SHUTDOWN_GRACE"])
        assert grace >= job_timeout, name
        assert seconds(service["stop_grace_period"]) > grace, name


def test_gpu_service_reserves_an_nvidia_gpu_and_mounts_user_models(
    compose: dict[str, Any],
) -> None:
    gpu = compose["services"]["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert gpu["build"]["args"]["DEVICE"] == "gpu"
    assert ("./models", "/models") in bind_mounts(gpu)
    assert gpu["volumes"][0].endswith(":ro")
    assert gpu["environment"]["LDM_MODEL"].startswith("/models/")
    assert gpu["environment"]["LDM_DEVICE"] == "cuda"
    cpu = compose["services"]["worker"]
    assert "profiles" not in cpu, "plain `docker compose up` must start the CPU worker"
    assert cpu["build"]["args"]["DEVICE"] == "cpu" and cpu["environment"]["LDM_DEVICE"] == "cpu"


def test_published_ports(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["api"]["ports"] == ["127.0.0.1:8000:8000"]
    assert services["grafana"]["ports"] == ["127.0.0.1:3000:3000"]
    assert services["prometheus"]["ports"] == ["127.0.0.1:9090:9090"]
    published = {name for name, service in services.items() if "ports" in service}
    assert published == {"api", "grafana", "prometheus"}


def test_grafana_and_prometheus_mounts_match_their_configs(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    mounts = {target: (REPO / source).resolve() for source, target in bind_mounts(grafana)}
    provisioning = mounts["/etc/grafana/provisioning"]
    provider = yaml.safe_load((provisioning / "dashboards" / "ldm-serve.yml").read_text())
    dashboards_path = provider["providers"][0]["options"]["path"]
    assert dashboards_path in mounts and any(mounts[dashboards_path].glob("*.json"))
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (mounts[dashboards_path] / Path(home).relative_to(dashboards_path)).is_file()
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    assert set(grafana["networks"]) & set(compose["services"]["prometheus"]["networks"])

    prometheus = compose["services"]["prometheus"]
    mounts = {target: (REPO / source).resolve() for source, target in bind_mounts(prometheus)}
    config = next(a.split("=", 1)[1] for a in prometheus["command"] if "config.file" in a)
    assert (mounts["/etc/prometheus"] / Path(config).relative_to("/etc/prometheus")).is_file()


@pytest.mark.parametrize("doc", ["README.md", "docs/deploy.md"])
def test_docs_compose_commands_match_the_compose_file(compose: dict[str, Any], doc: str) -> None:
    """Profiles, scaled services and localhost ports the docs mention exist in the compose file."""
    text = (REPO / doc).read_text()
    commands = re.findall(r"docker compose[^\n`]*", text)
    if not commands:
        pytest.skip(f"{doc} has no docker compose command yet")
    services = compose["services"]
    profiles = {p for service in services.values() for p in service.get("profiles", [])}
    for command in commands:
        for profile in re.findall(r"--profile\s+(\S+)", command):
            assert profile in profiles, f"{doc}: `{command}` uses unknown profile {profile}"
        for service in re.findall(r"--scale\s+([\w-]+)=", command):
            assert service in services, f"{doc}: `{command}` scales unknown service {service}"
    published = {
        int(port.split(":")[-2])
        for service in services.values()
        for port in service.get("ports", [])
    }
    for port in re.findall(r"(?:localhost|127\.0\.0\.1):(\d+)", text):
        assert int(port) in published, f"{doc} mentions port {port}, which nothing publishes"


def test_api_request_defaults_suit_the_shipped_model(compose: dict[str, Any]) -> None:
    """The compose CPU worker serves models/default: the API defaults to its size and guidance."""
    from cli.generate import DEFAULT_MODEL_GUIDANCE, DEFAULT_MODEL_SIZE

    api = compose["services"]["api"]["environment"]
    worker = compose["services"]["worker"]["environment"]
    assert worker["LDM_MODEL"].endswith("models/default")
    assert int(api["LDM_DEFAULT_SIZE"]) == DEFAULT_MODEL_SIZE
    assert float(api["LDM_DEFAULT_GUIDANCE"]) == DEFAULT_MODEL_GUIDANCE
