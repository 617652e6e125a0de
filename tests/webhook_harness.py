"""Real processes for the webhook tests: a verifying receiver and the deliverer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, free_port, wait_for_port

# Retries in a fraction of a second, the sweep every half second: the tests' deliverer.
FAST_ENV = {
    "LDM_WEBHOOK_RETRY_BASE": "0.2",
    "LDM_WEBHOOK_RETRY_MAX": "0.5",
    "LDM_WEBHOOK_MAX_AGE": "120",
    "LDM_WEBHOOK_TIMEOUT": "1",
    "LDM_WEBHOOK_POLL": "0.05",
    "LDM_WEBHOOK_SWEEP_INTERVAL": "0.5",
    "LDM_WEBHOOK_ALLOW": "127.0.0.0/8",
}


class Receiver:
    """`python -m tests.webhook_receiver` on a fixed port: stop it, start it again."""

    def __init__(self, log_dir: Path, secret: str, fail_first: int = 0, hold: float = 0) -> None:
        self.port = free_port()
        self.log_path = log_dir / f"receiver-{uuid.uuid4().hex[:8]}.jsonl"
        self.args = ["--port", str(self.port), "--secret", secret, "--log", str(self.log_path),
                     "--fail-first", str(fail_first), "--hold", str(hold)]  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        args = [sys.executable, "-m", "tests.webhook_receiver", *self.args]
        self.process = subprocess.Popen(args, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def deliveries(self) -> list[dict[str, Any]]:
        """Every request received so far, in order."""
        if not self.log_path.exists():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines()]


class DelivererProcess:
    """`python -m cli.main webhooks` with the tests' fast settings."""

    def __init__(self, redis_url: str, log_dir: Path, env: Mapping[str, str]) -> None:
        self.metrics_port = free_port()
        self.log_path = log_dir / f"deliverer-{uuid.uuid4().hex[:8]}.log"
        self.env = {**os.environ, **FAST_ENV, **env, "REDIS_URL": redis_url,
                    "LDM_WEBHOOK_METRICS_PORT": str(self.metrics_port),
                    "PYTHONPATH": str(REPO)}  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> DelivererProcess:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "cli.main", "webhooks"],
                                            cwd=REPO, env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT)  # fmt: skip
        try:
            wait_for_port(self.metrics_port, timeout=30)
        except TimeoutError:
            pytest.fail(f"deliverer did not start:\n{self.log()}")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> int | None:
        """SIGTERM (a graceful drain); the exit code."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.terminate()
        return self.process.wait(timeout=20)

    def metrics(self) -> dict[str, float]:
        """Scrape /metrics: {'name{labels}': value}."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                for line in text.splitlines() if line and not line.startswith("#")}  # fmt: skip


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll `check` until it returns something truthy; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)
