"""Real worker processes for the worker tests: start, signal, kill, scrape metrics, submit jobs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

import pytest
import redis
from rq import Worker

from jobs.record import JobRecord
from jobs.schema import JobStatus, ResolvedRequest
from jobs.store import JobStore
from tests.conftest import REPO, free_port

# Fast liveness so crash recovery is testable in seconds (production defaults: 60 s / 60 s).
FAST_ENV = {
    "LDM_MODEL_NAME": "default",
    "LDM_DEVICE": "cpu",
    "LDM_DTYPE": "float32",
    "LDM_MAX_BATCH": "8",
    "LDM_HEARTBEAT_TTL": "3",
    "LDM_MAINTENANCE_INTERVAL": "1",
    "LDM_WATCHDOG_SECONDS": "60",
    "LDM_SHUTDOWN_GRACE": "30",
    "LDM_RESULT_TTL": "300",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny random SD folder per test session (shared by every worker test module)."""
    path = tmp_path_factory.getbasetemp() / "worker-tiny-sd"
    if not (path / "model_index.json").exists():
        from testkit.tiny_models import build_tiny_sd

        build_tiny_sd(path)
    return path


class WorkerProcess:
    """`python -m tests.fault_worker` (production worker + fault hooks) as a subprocess."""

    def __init__(self, redis_url: str, model: Path, log_dir: Path, env: Mapping[str, str]) -> None:
        self.redis_url = redis_url
        self.metrics_port = free_port()
        self.log_path = log_dir / f"worker-{uuid.uuid4().hex[:8]}.log"
        self.fault_dir = log_dir / "faults"
        self.env = {
            **os.environ, **FAST_ENV, **env, "REDIS_URL": redis_url, "LDM_MODEL": str(model),
            "LDM_METRICS_PORT": str(self.metrics_port), "LDM_FAULT_DIR": str(self.fault_dir),
            "PYTHONPATH": str(REPO),
        }  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 60) -> WorkerProcess:
        """Start and wait until rq lists the worker (model loaded, registered)."""
        return self.spawn().registered(timeout)

    def spawn(self) -> WorkerProcess:
        """Start the process and return at once."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.fault_worker"], cwd=REPO, env=self.env,
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        return self

    def registered(self, timeout: float = 60) -> WorkerProcess:
        """Wait until rq lists the worker; fail with its log if it exits or never shows."""
        assert self.process is not None
        client = redis.Redis.from_url(self.redis_url)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"worker exited {self.process.returncode}:\n{self.log()}")
            if any(w.pid == self.pid for w in Worker.all(connection=client)):
                return self
            time.sleep(0.1)
        pytest.fail(f"worker did not register:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        if self.process is None or self.process.poll() is not None:
            return
        self.signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def metrics(self) -> dict[str, float]:
        """Scrape /metrics: {'name{labels}': value}."""
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics") as resp:
            text = resp.read().decode()
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                values[name] = float(value)
        return values


def submit(store: JobStore, prompt: str = "a red circle", **params: object) -> str:
    """Create a job exactly as the API does (record + rq job in one MULTI); returns its id.

    The request bypasses the API's bounds on purpose (e.g. 8 images to fill a batch)."""
    fields = {"width": 64, "height": 64, "steps": 4, "seed": 1, "guidance_scale": 7.5,
              "sampler": "ddim", "prompt": prompt, "model": "default", **params}  # fmt: skip
    request = ResolvedRequest.model_validate(fields)
    job_id = uuid.uuid4().hex
    record = JobRecord(
        id=job_id, status=JobStatus.queued, owner="test", request=request, created_at=time.time()
    )
    store.create(record)
    return job_id


def wait_for(store: JobStore, job_id: str, statuses: set[str], timeout: float = 60) -> JobRecord:
    """Poll a job record until its status is one of `statuses`."""
    deadline = time.monotonic() + timeout
    while True:
        record = store.get(job_id)
        if record is not None and record.status.value in statuses:
            return record
        if time.monotonic() > deadline:
            pytest.fail(f"job {job_id} is {record and record.status} after {timeout}s")
        time.sleep(0.05)


def done(store: JobStore, job_id: str, timeout: float = 60) -> JobRecord:
    """Wait until the job is terminal."""
    return wait_for(store, job_id, {"succeeded", "failed", "canceled", "expired"}, timeout)
