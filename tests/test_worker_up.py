"""`ldm-serve up`: starts Redis (none reachable), the API and a worker; SIGINT stops them all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from cli.client import Client
from tests.conftest import REPO, free_port
from tests.worker_harness import FAST_ENV, tiny_model

__all__ = ["tiny_model"]


pytestmark = pytest.mark.slow  # real processes for tens of seconds: full tier only


def test_up_runs_the_stack_in_the_foreground_and_stops_cleanly(
    tiny_model: Path, tmp_path: Path
) -> None:
    redis_port, api_port = free_port(), free_port()
    env = {
        **os.environ, **FAST_ENV, "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "LDM_MODEL": str(tiny_model), "LDM_METRICS_PORT": str(free_port()),
        "LDM_WEBHOOK_METRICS_PORT": str(free_port()),
        "LDM_MIN_SIZE": "32", "LDM_DEFAULT_SIZE": "32", "PYTHONPATH": str(REPO),
    }  # fmt: skip
    up = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "up", "--port", str(api_port),
         "--data-dir", str(tmp_path / "data")],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{api_port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert up.poll() is None and time.monotonic() < deadline, "stack did not get ready"
            time.sleep(0.2)
        (png,) = Client(url).txt2img("a cat", steps=3, seed=1, timeout=60)
        assert png.startswith(b"\x89PNG")
        assert (tmp_path / "data" / "redis" / "appendonlydir").is_dir()  # AOF on
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=40) == 0
        with_children = subprocess.run(["pgrep", "-f", str(tmp_path / "data")], capture_output=True)
        assert with_children.stdout == b""
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
