"""The local stack of tests/test_deploy_e2e.py and the Prometheus queries it sends: processes
stopped in reverse order, waiting on the stack, prometheus.yml pointed at localhost, and alert
expressions with their comparisons turned into `bool` comparisons."""

from __future__ import annotations

import math
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import REPO
from tests.test_deploy_prometheus import CONFIG

yaml = pytest.importorskip("yaml")

COMPARISONS = ("==", "!=", ">=", "<=", ">", "<")


def with_bool_comparisons(expr: str) -> str:
    """`a > 0.1 and b == 0` -> `a > bool 0.1 and b == bool 0` (label matchers untouched)."""
    out: list[str] = []
    depth = 0
    quote = ""
    i = 0
    while i < len(expr):
        char = expr[i]
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        elif depth == 0:
            operator = next((op for op in COMPARISONS if expr.startswith(op, i)), None)
            if operator and not expr.startswith("=~", i) and not expr.startswith("!~", i):
                rest = expr[i + len(operator) :].lstrip()
                out.append(operator if rest.startswith("bool") else f"{operator} bool")
                i += len(operator)
                continue
        out.append(char)
        i += 1
    return "".join(out)


class Stack:
    """Processes of the local stack; stops them in reverse order."""

    def __init__(self, workdir: Path, ports: dict[str, int]) -> None:
        self.workdir = workdir
        self.ports = ports
        self.processes: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        log = self.workdir / f"{name}.log"
        with open(log, "wb") as handle:
            process = subprocess.Popen(
                args, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT
            )
        self.processes.append((name, process, log))

    def logs(self) -> str:
        parts = []
        for name, process, log in self.processes:
            tail = log.read_text(errors="replace")[-3000:]
            parts.append(f"--- {name} (exit {process.poll()}) ---\n{tail}")
        return "\n".join(parts)

    def check_alive(self) -> None:
        for name, process, _ in self.processes:
            if process.poll() is not None:
                pytest.fail(f"{name} exited with {process.returncode}\n{self.logs()}")

    def stop(self) -> None:
        for _, process, _ in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def wait_until(condition: Callable[[], bool], timeout: float, stack: Stack, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stack.check_alive()
        try:
            if condition():
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    pytest.fail(f"timed out waiting for {what}\n{stack.logs()}")


def local_prometheus_config(ports: dict[str, int]) -> dict[str, Any]:
    """docker/prometheus/prometheus.yml with 1 s intervals and static localhost targets."""
    config = yaml.safe_load(CONFIG.read_text())
    config["global"]["scrape_interval"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    for job in config["scrape_configs"]:
        name = job["job_name"]
        assert name in ports, f"no local target for scrape job {name}"
        labels = {"service": "worker"} if name == "ldm-worker" else {}
        job.pop("dns_sd_configs", None)
        job.pop("relabel_configs", None)  # they map DNS meta labels; the static label replaces it
        job["static_configs"] = [{"targets": [f"127.0.0.1:{ports[name]}"], "labels": labels}]
    return config


def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10)
    body = response.json()
    assert body["status"] == "success", f"{expr}: {body}"
    return body["data"]["result"]


def finite(result: list[dict[str, Any]]) -> bool:
    """At least one sample that is a real number (a panel line that can be drawn)."""
    return any(math.isfinite(float(series["value"][1])) for series in result)
