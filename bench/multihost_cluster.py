"""The multi-host lab's cluster (bench/multihost.py): the namespace hosts' addresses, ports and
environments (`WORKER_ENV`, `API_ENV`), `Cluster`, which starts Redis, the API, the client host's
program and worker hosts w1, w2, ... on a private bridge (bench/netns.py), and the
orchestrator's view of Redis through a unix socket: job records, rq's job hashes and registries,
worker heartbeats and the job_* lines of each worker host's log."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.multihost_image_writes import ImageWrites
from bench.netns import Host, NetnsLab

REPO = Path(__file__).resolve().parents[1]
SUBNET = "10.77.13"
OCTETS = {"redis": 2, "api": 3, "client": 4}  # worker host wN is .(10 + N)
API_PORT = 8000
REDIS_PORT = 6379
TERMINAL = {"succeeded", "failed", "canceled", "expired"}

# Every worker host: one torch thread, fast liveness (see the module docstring).
WORKER_ENV = {
    "LDM_MODEL_NAME": "default",
    "LDM_DEVICE": "cpu",
    "LDM_DTYPE": "float32",
    "LDM_TORCH_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "LDM_MAX_BATCH": "8",
    "LDM_HEARTBEAT_TTL": "3",
    "LDM_MAINTENANCE_INTERVAL": "1",
    "LDM_REDIS_RETRY_SECONDS": "90",
    "LDM_WATCHDOG_SECONDS": "120",
    "LDM_SHUTDOWN_GRACE": "30",
    "LDM_RESULT_TTL": "1800",
    "LDM_DEFAULT_SIZE": "64",
    "LDM_METRICS_PORT": "9101",
    "LDM_LOG_LEVEL": "INFO",
}
API_ENV = {
    "LDM_MODEL_NAME": "default",
    "LDM_DEFAULT_SIZE": "64",
    "LDM_DEFAULT_GUIDANCE": "3",
    "LDM_RATE_LIMIT": "0",
    "LDM_RESULT_TTL": "1800",
}
LOG_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) .*?"
    r"(job_started|job_succeeded|job_requeued|job_handed_back|job_failed|job_canceled)"
    r" job_id=([0-9a-f-]+)"
)


@dataclass
class WorkerHost:
    host: Host
    process: subprocess.Popen[bytes]
    log_path: Path
    rq_name: str


class Cluster:
    """The lab's hosts and processes: Redis, API, client, worker hosts w1, w2, ..."""

    def __init__(self, workdir: Path, model: Path, env: Mapping[str, str] | None = None) -> None:
        self.workdir = Path(workdir)
        self.model = Path(model).resolve()
        self.lab = NetnsLab(self.workdir, SUBNET)
        self.password = secrets.token_hex(16)
        self.socket = self.workdir / "redis.sock"
        self.workers: dict[str, WorkerHost] = {}
        self.starts = Counter[str]()
        self.extra_env = dict(env or {})
        self.redis: Any = None
        self.images: ImageWrites | None = None

    # --- lifecycle -------------------------------------------------------------------------------

    def base_env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}

    @property
    def redis_url(self) -> str:
        return f"redis://:{self.password}@{self.lab.hosts['redis'].address}:{REDIS_PORT}/0"

    @property
    def api_url(self) -> str:
        return f"http://{self.lab.hosts['api'].address}:{API_PORT}"

    def start(self) -> None:
        """Network, Redis, API and the client host (workers come with `ensure_workers`)."""
        import redis

        from cli.local_redis import newest_redis_server

        found = newest_redis_server()
        if found is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.lab.create()
        for name, octet in OCTETS.items():
            self.lab.add_host(name, octet)
        redis_host = self.lab.hosts["redis"]
        (self.workdir / "redis-data").mkdir(exist_ok=True)
        self.lab.spawn(redis_host, "redis-server", [
            str(found[0]), "--bind", redis_host.address, "--port", str(REDIS_PORT),
            "--requirepass", self.password, "--unixsocket", str(self.socket),
            "--unixsocketperm", "700", "--dir", str(self.workdir / "redis-data"),
            "--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
            "--maxmemory-policy", "noeviction", "--notify-keyspace-events", "K$",
        ], self.base_env(), REPO)  # fmt: skip
        self.redis = redis.Redis(unix_socket_path=str(self.socket), password=self.password)
        deadline = time.monotonic() + 20
        while True:
            try:
                self.redis.ping()
                break
            except (redis.ConnectionError, FileNotFoundError) as exc:
                if time.monotonic() > deadline:
                    log = self.log("redis", "redis-server")
                    raise RuntimeError(f"redis did not start:\n{log}") from exc
                time.sleep(0.1)
        self.images = ImageWrites(self.redis)
        self.images.start()
        api_env = {**self.base_env(), **API_ENV, **self.extra_env, "REDIS_URL": self.redis_url}
        self.lab.spawn(self.lab.hosts["api"], "api", [
            sys.executable, "-m", "cli.main", "api", "--host", self.lab.hosts["api"].address,
            "--port", str(API_PORT), "--log-level", "warning",
        ], api_env, REPO)  # fmt: skip

    def destroy(self) -> list[str]:
        """Stop everything and remove the network (idempotent)."""
        if self.images is not None:
            self.images.stop()
            self.images = None
        if self.redis is not None:
            with contextlib.suppress(Exception):
                self.redis.close()
        return self.lab.destroy()

    def log(self, host: str, name: str) -> str:
        path = self.workdir / f"{host}-{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # --- workers ---------------------------------------------------------------------------------

    def start_worker(self, name: str) -> WorkerHost:
        """A worker host `name` (wN: address .(10+N)) running `ldm-serve worker`."""
        if name not in self.lab.hosts:
            self.lab.add_host(name, 10 + int(name.lstrip("w")))
        host = self.lab.hosts[name]
        self.starts[name] += 1
        rq_name = f"{name}-{self.starts[name]}"
        env = {**self.base_env(), **WORKER_ENV, **self.extra_env, "REDIS_URL": self.redis_url,
               "LDM_MODEL": str(self.model), "LDM_WORKER_NAME": rq_name}  # fmt: skip
        process = self.lab.spawn(host, "worker", [sys.executable, "-m", "cli.main", "worker"],
                                 env, REPO)  # fmt: skip
        worker = WorkerHost(host, process, self.workdir / f"{name}-worker.log", rq_name)
        self.workers[name] = worker
        return worker

    def wait_registered(self, names: Iterable[str], timeout: float = 180) -> None:
        """Until rq lists each worker (model loaded, registered on the queue)."""
        deadline = time.monotonic() + timeout
        for name in names:
            worker = self.workers[name]
            while not self.redis.sismember("rq:workers", f"rq:worker:{worker.rq_name}"):
                if worker.process.poll() is not None:
                    raise RuntimeError(f"{name} exited {worker.process.returncode}:\n"
                                       f"{self.log(name, 'worker')[-4000:]}")  # fmt: skip
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not register:\n"
                                       f"{self.log(name, 'worker')[-4000:]}")  # fmt: skip
                time.sleep(0.2)

    def alive(self, name: str) -> bool:
        worker = self.workers.get(name)
        return worker is not None and worker.process.poll() is None

    def ensure_workers(self, names: Sequence[str]) -> None:
        """Exactly these worker hosts serving (start missing ones, stop the others)."""
        for name in list(self.workers):
            if name not in names and self.alive(name):
                self.stop_worker(name)
        started = [name for name in names if not self.alive(name)]
        for name in started:
            if name in self.lab.hosts:
                self.lab.set_link(self.lab.hosts[name], True)
                self.lab.heal(self.lab.hosts[name])
            self.start_worker(name)
        self.wait_registered(started)

    def stop_worker(self, name: str) -> int:
        """SIGTERM (graceful: finishes running work) and wait; returns the exit code."""
        process = self.workers[name].process
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()

    # --- clients ---------------------------------------------------------------------------------

    def client_argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "bench.multihost", "client", "--url", self.api_url, *args]

    def run_client(self, args: Sequence[str], timeout: float = 600) -> dict[str, Any]:
        """Run the client program on the client host to completion; its JSON summary."""
        result = self.lab.run(self.lab.hosts["client"], self.client_argv(*args),
                              self.base_env(), REPO, timeout)  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"client failed ({result.returncode}):\n{result.stderr[-4000:]}")
        return json.loads(result.stdout.strip().splitlines()[-1])

    def spawn_client(self, name: str, args: Sequence[str]) -> subprocess.Popen[bytes]:
        """Start the client program on the client host in the background."""
        return self.lab.spawn(self.lab.hosts["client"], name, self.client_argv(*args),
                              self.base_env(), REPO)  # fmt: skip

    def readyz(self) -> dict[str, Any]:
        """GET /readyz from the client host: {'code': ..., 'body': ...}."""
        return self.run_client(["--readyz"], timeout=60)

    # --- what Redis says -------------------------------------------------------------------------

    def records(self, ids: Iterable[str]) -> dict[str, dict[str, str]]:
        """Job records (status, attempts, progress_step, ...) by id, as strings."""
        ids = list(ids)
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hgetall(f"ldm:job:{job_id}")
        out = {}
        for job_id, fields in zip(ids, pipe.execute(), strict=True):
            out[job_id] = {k.decode(): v.decode(errors="replace") for k, v in fields.items()
                           if k.decode() not in ("request",)}  # fmt: skip
        return out

    def rq_jobs(self, ids: Iterable[str]) -> dict[str, dict[str, str]]:
        """rq's view of each job: status and worker_name."""
        ids = list(ids)
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(f"rq:job:{job_id}", "status", "worker_name")
        return {job_id: {"status": (s or b"").decode(), "worker_name": (w or b"").decode()}
                for job_id, (s, w) in zip(ids, pipe.execute(), strict=True)}  # fmt: skip

    def held_by(self, rq_name: str, ids: Iterable[str], min_step: int) -> list[str]:
        """Jobs a worker is running right now, at least `min_step` steps in."""
        ids = list(ids)
        rq = self.rq_jobs(ids)
        records = self.records(ids)
        return [job_id for job_id in ids
                if rq[job_id]["worker_name"] == rq_name and rq[job_id]["status"] == "started"
                and records[job_id].get("status") == "running"
                and int(records[job_id].get("progress_step", "0")) >= min_step]  # fmt: skip

    def last_heartbeat(self, rq_name: str) -> float | None:
        """The worker's last heartbeat (epoch seconds) from `rq:worker:<name>`."""
        raw = self.redis.hget(f"rq:worker:{rq_name}", "last_heartbeat")
        if not raw:
            return None
        stamp = datetime.datetime.strptime(raw.decode(), "%Y-%m-%dT%H:%M:%S.%fZ")
        return stamp.replace(tzinfo=datetime.UTC).timestamp()

    def events(self, name: str) -> list[tuple[float, str, str]]:
        """(epoch, event, job id) of a worker host's job_* log lines (all its starts)."""
        out = []
        for line in self.log(name, "worker").splitlines():
            match = LOG_LINE.match(line)
            if match:
                stamp = time.mktime(time.strptime(match.group(1), "%Y-%m-%d %H:%M:%S"))
                out.append((stamp + int(match.group(2)) / 1000, match.group(3), match.group(4)))
        return out

    def successes(self) -> Counter[str]:
        """job id -> how many worker hosts logged job_succeeded for it (must be 1)."""
        counts: Counter[str] = Counter()
        for name in self.workers:
            counts.update(job_id for _, event, job_id in self.events(name)
                          if event == "job_succeeded")  # fmt: skip
        return counts

    def registry_counts(self) -> dict[str, int]:
        """Sizes of rq's registries of the model's queue."""
        queue = "ldm:default"
        return {
            "queued": int(self.redis.llen(f"rq:queue:{queue}")),
            "started": int(self.redis.zcard(f"rq:wip:{queue}")),
            "finished": int(self.redis.zcard(f"rq:finished:{queue}")),
            "failed": int(self.redis.zcard(f"rq:failed:{queue}")),
            "canceled": int(self.redis.zcard(f"rq:canceled:{queue}")),
        }
