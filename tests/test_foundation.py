"""Project foundation: the real redis-server harness works and the layers keep their direction."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

# package -> top-level modules it must never import (house style, "Architecture")
# (training/ and testkit/ are never imported by what serves: the worker image ships without them)
FORBIDDEN = {
    "service": {"torch", "model", "workers", "transformers", "diffusers", "training", "testkit"},
    "model": {"fastapi", "redis", "rq", "service", "workers", "jobs", "starlette", "uvicorn",
              "training", "testkit"},
    "jobs": {"torch", "model", "workers", "service", "fastapi", "starlette", "training"},
    "workers": {"service", "fastapi", "starlette", "diffusers", "training", "testkit"},
    "webhooks": {"torch", "model", "workers", "service", "fastapi", "starlette", "training",
                 "testkit"},
}  # fmt: skip


def imported_top_levels(path: Path) -> set[str]:
    """Top-level module names a Python file imports (absolute imports only)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_dependency_direction(package: str) -> None:
    offences = []
    for path in sorted((REPO / package).rglob("*.py")):
        bad = imported_top_levels(path) & FORBIDDEN[package]
        if bad:
            offences.append(f"{path.relative_to(REPO)} imports {sorted(bad)}")
    assert not offences, "\n".join(offences)


def test_ast_scan_catches_a_forbidden_import(tmp_path: Path) -> None:
    sample = tmp_path / "x.py"
    sample.write_text("import os\nfrom torch import nn\nfrom . import sibling\n")
    assert imported_top_levels(sample) == {"os", "torch"}


def test_runtime_never_imports_diffusers() -> None:
    hits = [
        str(path.relative_to(REPO))
        for package in ("service", "model", "workers", "jobs", "cli")
        for path in (REPO / package).rglob("*.py")
        if "diffusers" in imported_top_levels(path)
    ]
    assert not hits


def test_redis_fixture_is_a_real_server(redis_url: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    client.set("k", "v")
    assert client.get("k") == b"v"
    info = client.info("server")
    assert info["redis_version"]
    assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"


def test_cli_help_lists_subcommands() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "cli.main", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "COMMAND" in out
