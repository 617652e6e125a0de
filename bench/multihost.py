"""Many hosts on one machine: throughput per worker host, a killed host, a partitioned host.

    python -m bench.multihost        # as root: 1/2/3 worker hosts, a kill, a 30 s partition
    python -m bench.multihost --workers 1 2 --partition-seconds 10 --jobs 24

Builds a private network of namespace hosts (bench/netns.py: one bridge, addresses in
10.77.13.0/24 inside the namespaces only): `redis` (redis-server, password), `api`
(`ldm-serve api`), `client` (the closed-loop HTTP clients, this module's `client` command) and
worker hosts `w1`, `w2`, ... (each one `ldm-serve worker` with one torch thread, the shipped model
at 64x64 unless --model says otherwise). The orchestrator watches Redis through a unix socket (it
has no address on that network): job records, rq's job hashes and a keyspace-notification count
of every image write. Three measurements:

1. throughput: for 1, 2, 3 worker hosts, a warm-up round and then twice 48 jobs (64x64, 25
   steps, one image each) from 12 closed-loop clients over HTTP to the API host; images/s =
   jobs / (last done - first submit). Each run waits for the rest of the machine to be quiet
   and is repeated while other processes used more than 0.3 cores; the CPU of every lab host
   and of everything else is reported with it;
2. kill: under continuous load (8 clients), a worker host holding running jobs mid-batch loses
   every process (SIGKILL) and its link; the seconds from the kill until rq's cleanup (on a
   surviving worker) requeued its jobs and until they succeeded elsewhere;
3. partition: a worker host holding running jobs is cut off at the switch (frames dropped, no
   error) for 30 s and healed, under continuous load; every job must succeed with its images
   written once; the seconds from the heal until the worker talks to Redis again and until it
   completes a new job, and what rq and the API say about it afterwards.

Worker liveness settings are short so recovery takes seconds (LDM_HEARTBEAT_TTL=3,
LDM_MAINTENANCE_INTERVAL=1; production defaults 60/60), and LDM_REDIS_RETRY_SECONDS=90 so a 30 s
partition is an outage the worker rides out (with the default 30 it may exit 1 by design and be
restarted by its supervisor). tests/test_multihost.py asserts the same behaviours with smaller
sizes.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
import resource
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.netns import Host, NetnsLab, pids_in
from jobs.schema import Sampler

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
ENDED_ELSEWHERE = re.compile(r"job ([0-9a-f-]+) ended elsewhere")


# --------------------------------------------------------------------------------------------
# CPU accounting: what the lab used, and what everything else on the machine used meanwhile
# --------------------------------------------------------------------------------------------


def _proc_cpu_ticks(pid: int) -> int:
    with contextlib.suppress(OSError, IndexError, ValueError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime (fields 14, 15)
    return 0


def _machine_ticks() -> tuple[int, int]:
    """(busy, niced) clock ticks of all CPUs since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]
    return user + nice + system + irq + softirq + steal, nice


class CpuMeter:
    """CPU used during an interval: by the lab (its namespaces' processes, the orchestrator and
    its children) and by everything else (`others`; `niced` is the nice > 0 part of the whole
    machine). In cores (1.0 = one core busy for the whole interval)."""

    def __init__(self, lab: NetnsLab) -> None:
        self.lab = lab
        self.tick = os.sysconf("SC_CLK_TCK")

    def _ours(self) -> dict[str, dict[int, int]]:
        """host -> {pid: CPU ticks} of the processes in each lab namespace."""
        return {name: {pid: _proc_cpu_ticks(pid) for pid in pids_in(host.namespace)}
                for name, host in self.lab.hosts.items()}  # fmt: skip

    def _children_seconds(self) -> float:
        """CPU of this process and its reaped children (the client runs, `ip` commands)."""
        me = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.machine0 = _machine_ticks()
        self.ours0 = self._ours()
        self.self0 = self._children_seconds()
        self.load0 = os.getloadavg()

    def stop(self) -> dict[str, Any]:
        elapsed = max(1e-6, time.monotonic() - self.t0)
        busy1, nice1 = _machine_ticks()
        ours1 = self._ours()
        hosts = {}
        for name, pids in ours1.items():
            before = self.ours0.get(name, {})
            ticks = sum(t - before.get(pid, 0) for pid, t in pids.items())
            hosts[name] = ticks / self.tick
        # the client program runs to completion inside a measurement: it shows up here
        hosts["client"] = hosts.get("client", 0.0) + self._children_seconds() - self.self0
        ours = sum(hosts.values())
        busy = (busy1 - self.machine0[0]) / self.tick
        niced = (nice1 - self.machine0[1]) / self.tick
        return {
            "elapsed_s": round(elapsed, 2),
            "busy_cores": round(busy / elapsed, 2),
            "lab_cores": round(ours / elapsed, 2),
            "others_cores": round(max(0.0, busy - ours) / elapsed, 2),
            "niced_cores": round(niced / elapsed, 2),
            "loadavg_1m_before": round(self.load0[0], 2),
            "loadavg_1m_after": round(os.getloadavg()[0], 2),
            "host_cores": {name: round(v / elapsed, 2) for name, v in hosts.items() if v > 0},
        }


# --------------------------------------------------------------------------------------------
# the cluster: hosts, processes, and the orchestrator's view of Redis
# --------------------------------------------------------------------------------------------


@dataclass
class WorkerHost:
    host: Host
    process: subprocess.Popen[bytes]
    log_path: Path
    rq_name: str


class ImageWrites(threading.Thread):
    """Counts SETs of every image key (`ldm:job:<id>:image:<n>`) via keyspace notifications."""

    def __init__(self, client: Any) -> None:
        super().__init__(name="image-writes", daemon=True)
        self.pubsub = client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.psubscribe("__keyspace@0__:ldm:job:*:image:*")
        self.counts: Counter[str] = Counter()
        self.stopped = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        while not self.stopped.is_set():
            with contextlib.suppress(Exception):
                message = self.pubsub.get_message(timeout=0.5)
                if message and message.get("data") == b"set":
                    key = message["channel"].decode().split(":", 1)[1]
                    with self.lock:
                        self.counts[key] += 1

    def per_job(self) -> dict[str, int]:
        """job id -> image writes seen (each image key counts once per SET)."""
        out: Counter[str] = Counter()
        with self.lock:
            for key, count in self.counts.items():
                out[key.split(":")[2]] += count
        return dict(out)

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=5)
        with contextlib.suppress(Exception):
            self.pubsub.close()


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


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    lines = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            lines.append(json.loads(line))
    return lines


def accepted_ids(path: Path) -> list[str]:
    """Ids of every job the API accepted (202), in the order the client saw them."""
    return [row["id"] for row in read_jsonl(path) if row.get("event") == "accepted"]


def wait_terminal(cluster: Cluster, ids: Sequence[str], timeout: float) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while True:
        records = cluster.records(ids)
        if all(r.get("status") in TERMINAL for r in records.values()):
            return records
        if time.monotonic() > deadline:
            return records
        time.sleep(0.2)


# --------------------------------------------------------------------------------------------
# 1. throughput
# --------------------------------------------------------------------------------------------


@dataclass
class ThroughputRun:
    workers: int
    jobs: int
    succeeded: int
    seconds: float
    images_per_s: float
    cpu: dict[str, float]
    attempt: int = 1  # which try was kept (bench.multihost.measure)


def client_args(jobs: int, clients: int, steps: int, size: int, first: int) -> list[str]:
    return ["--jobs", str(jobs), "--clients", str(clients), "--steps", str(steps),
            "--size", str(size), "--first-index", str(first)]  # fmt: skip


def wait_quiet(lab: NetnsLab, max_others: float = 0.3, window: float = 2.0,
               timeout: float = 60.0) -> dict[str, float]:  # fmt: skip
    """Wait (up to `timeout`) for a `window` in which processes outside the lab used at most
    `max_others` cores; returns the last window's figures. Niced work counts: with autogroup
    scheduling (sched_autogroup_enabled=1) nice only ranks processes within one session, so a
    niced job in another session takes its full share from the lab's workers."""
    deadline = time.monotonic() + timeout
    while True:
        meter = CpuMeter(lab)
        meter.start()
        time.sleep(window)
        cpu = meter.stop()
        if cpu["others_cores"] <= max_others or time.monotonic() > deadline:
            return cpu


def measure(cluster: Cluster, workers: int, *, jobs: int, clients: int, steps: int, size: int,
            first: int, busy_others: float = 0.3, tries: int = 3,
            quiet_timeout: float = 60.0) -> ThroughputRun:  # fmt: skip
    """One closed-loop run on the current worker hosts, started once the machine is quiet
    (`wait_quiet`) and repeated (up to `tries`) while processes outside the lab used more than
    `busy_others` cores meanwhile; the run that competed least is kept."""
    runs = []
    for attempt in range(tries):
        wait_quiet(cluster.lab, busy_others, timeout=quiet_timeout)
        meter = CpuMeter(cluster.lab)
        meter.start()
        summary = cluster.run_client(
            client_args(jobs, clients, steps, size, first + attempt * jobs)
        )
        cpu = meter.stop()
        seconds = summary["last_done"] - summary["first_submit"]
        run = ThroughputRun(workers, jobs, summary["succeeded"], round(seconds, 2),
                            round(summary["succeeded"] / seconds, 3), cpu, attempt + 1)  # fmt: skip
        runs.append(run)
        if cpu["others_cores"] <= busy_others:
            break
    return min(runs, key=lambda r: r.cpu["others_cores"])


def throughput(cluster: Cluster, counts: Sequence[int], *, jobs: int, clients: int, steps: int,
               size: int, repeats: int = 1, tries: int = 3, quiet_timeout: float = 60.0,
               log: Any = print) -> list[ThroughputRun]:  # fmt: skip
    """Worker hosts w1..wk for each k in `counts`: a warm-up round, then `repeats` runs."""
    out = []
    index = 0
    for k in counts:
        cluster.ensure_workers([f"w{i}" for i in range(1, k + 1)])
        cluster.run_client(client_args(max(clients, 2 * k), clients, steps, size, 10**6 + index))
        index += 1000
        for _ in range(repeats):
            run = measure(cluster, k, jobs=jobs, clients=clients, steps=steps, size=size,
                          first=index, tries=tries, quiet_timeout=quiet_timeout)  # fmt: skip
            index += 1000
            log(f"  {k} worker(s): {run.images_per_s:.2f} images/s ({run.succeeded}/{run.jobs} "
                f"in {run.seconds:.1f} s; others {run.cpu['others_cores']} cores, of them niced "
                f"{run.cpu['niced_cores']}, try {run.attempt}, "
                f"load {run.cpu['loadavg_1m_before']})")  # fmt: skip
            out.append(run)
    return out


# --------------------------------------------------------------------------------------------
# 2. a worker host killed mid-batch / 3. a worker host partitioned from Redis
# --------------------------------------------------------------------------------------------


@dataclass
class FaultResult:
    scenario: str
    victim: str
    held: list[str]  # jobs the victim was running (mid-batch) at the fault
    accepted: int  # jobs the API accepted (202) during the scenario
    statuses: dict[str, int]  # final record statuses of the accepted jobs
    attempts: dict[str, int]  # attempts -> number of jobs
    held_attempts: list[int]
    success_logs: dict[str, int]  # how many job_succeeded lines per job -> number of jobs
    image_writes: dict[str, int]  # image SETs per job -> number of jobs
    requeue_s: float | None  # fault -> every held job requeued
    done_s: float | None  # fault -> every held job succeeded
    registries: dict[str, int] = field(default_factory=dict)  # change during the scenario
    client_errors: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def problems(self) -> list[str]:
        """What breaks the promises (empty: every accepted job succeeded exactly once)."""
        found = []
        if self.accepted == 0:
            found.append("no job was accepted")
        if set(self.statuses) != {"succeeded"}:
            found.append(f"statuses {self.statuses}")
        if set(self.success_logs) != {"1"}:
            found.append(f"job_succeeded lines per job {self.success_logs}")
        if set(self.image_writes) != {"1"}:
            found.append(f"image writes per job {self.image_writes}")
        if not self.held:
            found.append("the victim held no running job at the fault")
        if self.held and min(self.held_attempts) < 2:
            found.append(f"held jobs' attempts {self.held_attempts}")
        if self.client_errors:
            found.append(f"client errors {self.client_errors[:5]}")
        return found


def _wait_mid_batch(cluster: Cluster, victim: str, jsonl: Path, want: int,
                    timeout: float) -> list[str]:  # fmt: skip
    """Jobs the victim runs mid-batch: `want` of them at >= 2 steps in, or whatever it runs at
    the deadline (at least one, else [])."""
    rq_name = cluster.workers[victim].rq_name
    deadline = time.monotonic() + timeout
    held: list[str] = []
    while time.monotonic() < deadline:
        held = cluster.held_by(rq_name, accepted_ids(jsonl), min_step=2)
        if len(held) >= want:
            return held
        time.sleep(0.05)
    return held


def _summarise(cluster: Cluster, scenario: str, victim: str, jsonl: Path, held: list[str],
               fault_at: float, requeued: dict[str, float], done: dict[str, float],
               registries_before: dict[str, int], timeout: float = 180) -> FaultResult:  # fmt: skip
    ids = accepted_ids(jsonl)
    records = wait_terminal(cluster, ids, timeout)
    time.sleep(1.5)  # let the last keyspace notifications arrive
    assert cluster.images is not None
    writes = cluster.images.per_job()
    successes = cluster.successes()
    held_done = [done[j] for j in held if j in done]
    held_requeued = [requeued[j] for j in held if j in requeued]
    rows = read_jsonl(jsonl)
    return FaultResult(
        scenario=scenario, victim=victim, held=held, accepted=len(ids),
        statuses=dict(Counter(r.get("status", "missing") for r in records.values())),
        attempts={str(k): v for k, v in sorted(Counter(
            int(r.get("attempts", 0)) for r in records.values()).items())},
        held_attempts=[int(records[j].get("attempts", 0)) for j in held],
        success_logs={str(k): v for k, v in sorted(Counter(
            successes.get(j, 0) for j in ids).items())},
        image_writes={str(k): v for k, v in sorted(Counter(
            writes.get(j, 0) for j in ids).items())},
        requeue_s=_after(fault_at, held_requeued, len(held)),
        done_s=_after(fault_at, held_done, len(held)),
        registries=_registry_change(registries_before, cluster.registry_counts()),
        client_errors=[r["error"] for r in rows if r.get("error")],
    )  # fmt: skip


def _registry_change(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Queue and started registry as they are now; finished, failed, canceled: added since."""
    return {name: count if name in ("queued", "started") else count - before.get(name, 0)
            for name, count in after.items()}  # fmt: skip


def _after(start: float, times: list[float], expected: int) -> float | None:
    """Seconds from `start` until the last of `expected` events (None if some never came)."""
    return round(max(times) - start, 2) if expected and len(times) == expected else None


def _watch_held(cluster: Cluster, held: list[str], requeued: dict[str, float],
                done: dict[str, float]) -> None:  # fmt: skip
    """Note when each held job was requeued (record back to queued, or a second attempt) and
    when it succeeded."""
    now = time.time()
    for job_id, record in cluster.records(held).items():
        status, attempts = record.get("status"), int(record.get("attempts", "0"))
        if job_id not in requeued and (status == "queued" or attempts >= 2 or status in TERMINAL):
            requeued[job_id] = now
        if job_id not in done and status in TERMINAL:
            done[job_id] = now


def kill_scenario(cluster: Cluster, victim: str, survivors: Sequence[str], *, clients: int,
                  steps: int, size: int, after: float = 3.0) -> FaultResult:  # fmt: skip
    """Under continuous closed-loop load, kill every process of `victim` while it runs jobs
    mid-batch and set its link down; the survivors' rq maintenance must requeue its jobs and
    every accepted job must succeed once. The load stops `after` s after the requeued jobs
    succeeded."""
    cluster.ensure_workers([*survivors, victim])
    before = cluster.registry_counts()
    jsonl = cluster.workdir / f"kill-{victim}.jsonl"
    stop_file = cluster.workdir / f"kill-{victim}.stop"
    stop_file.unlink(missing_ok=True)
    client = cluster.spawn_client(f"client-kill-{victim}", [
        *client_args(10**6, clients, steps, size, 2 * 10**6), "--out", str(jsonl),
        "--stop-file", str(stop_file)])  # fmt: skip
    held = _wait_mid_batch(cluster, victim, jsonl, want=2, timeout=90)
    fault_at = time.time()
    host = cluster.workers[victim].host
    killed = cluster.lab.kill_host(host)
    cluster.lab.set_link(host, False)
    requeued: dict[str, float] = {}
    done: dict[str, float] = {}
    deadline = time.monotonic() + 120
    while held and len(done) < len(held) and time.monotonic() < deadline:
        _watch_held(cluster, held, requeued, done)
        time.sleep(0.05)
    time.sleep(after)
    stop_file.touch()
    with contextlib.suppress(subprocess.TimeoutExpired):
        client.wait(timeout=300)
    result = _summarise(cluster, "kill", victim, jsonl, held, fault_at, requeued, done, before)
    result.extra = {
        "killed_pids": len(killed),
        "victim_exit": cluster.workers[victim].process.poll(),
    }
    return result


def partition_scenario(cluster: Cluster, victim: str, survivors: Sequence[str], *,
                       seconds: float, clients: int, steps: int, size: int,
                       after_heal: float = 20.0) -> FaultResult:  # fmt: skip
    """Cut `victim` off at the switch for `seconds` under continuous closed-loop load, heal, and
    keep the load on until the victim has completed new jobs (or `after_heal` + 40 s)."""
    cluster.ensure_workers([*survivors, victim])
    before = cluster.registry_counts()
    worker = cluster.workers[victim]
    pid_before = worker.process.pid
    jsonl = cluster.workdir / f"partition-{victim}.jsonl"
    stop_file = cluster.workdir / f"partition-{victim}.stop"
    stop_file.unlink(missing_ok=True)
    client = cluster.spawn_client(f"client-partition-{victim}", [
        *client_args(10**6, clients, steps, size, 3 * 10**6), "--out", str(jsonl),
        "--stop-file", str(stop_file)])  # fmt: skip
    held = _wait_mid_batch(cluster, victim, jsonl, want=2, timeout=90)
    fault_at = time.time()
    cluster.lab.cut(worker.host)
    requeued: dict[str, float] = {}
    done: dict[str, float] = {}
    while time.time() < fault_at + seconds:
        _watch_held(cluster, held, requeued, done)
        time.sleep(0.1)
    registered_during = cluster.redis.sismember("rq:workers", f"rq:worker:{worker.rq_name}")
    heal_at = time.time()
    cluster.lab.heal(worker.host)
    heartbeat_back: float | None = None
    first_new_start: float | None = None
    first_new_done: float | None = None
    deadline = heal_at + after_heal + 40
    while time.time() < deadline:
        _watch_held(cluster, held, requeued, done)
        beat = cluster.last_heartbeat(worker.rq_name)
        if heartbeat_back is None and beat is not None and beat > heal_at:
            heartbeat_back = beat
        events = cluster.events(victim)
        started_after = {j for t, e, j in events if e == "job_started" and t > heal_at}
        starts = [t for t, e, j in events if e == "job_started" and t > heal_at]
        finishes = [t for t, e, j in events if e == "job_succeeded" and j in started_after]
        first_new_start = min(starts) if starts else None
        first_new_done = min(finishes) if finishes else None
        if len(finishes) >= 2 and time.time() > heal_at + min(after_heal, 8):
            break
        time.sleep(0.2)
    readyz = cluster.readyz()
    registered_after = cluster.redis.sismember("rq:workers", f"rq:worker:{worker.rq_name}")
    stop_file.touch()
    with contextlib.suppress(subprocess.TimeoutExpired):
        client.wait(timeout=300)
    result = _summarise(cluster, "partition", victim, jsonl, held, fault_at, requeued, done, before)
    events = cluster.events(victim)
    log = cluster.log(victim, "worker")
    new_jobs = {j for t, e, j in events if e == "job_started" and t > heal_at}
    result.extra = {
        "partition_s": round(heal_at - fault_at, 1),
        "heartbeat_back_s": round(heartbeat_back - heal_at, 2) if heartbeat_back else None,
        "first_new_job_started_s": round(first_new_start - heal_at, 2)
        if first_new_start else None,
        "first_new_job_done_s": round(first_new_done - heal_at, 2) if first_new_done else None,
        "victim_new_jobs_succeeded": sum(1 for t, e, j in events
                                         if e == "job_succeeded" and j in new_jobs),
        "victim_alive": worker.process.poll() is None,
        "victim_same_pid": worker.process.pid == pid_before and worker.process.poll() is None,
        "victim_stale_copies_dropped": len(
            set(ENDED_ELSEWHERE.findall(log))
            | {j for t, e, j in events if e == "job_canceled" and t > heal_at}
        ),
        "victim_redis_warnings": log.count("redis unavailable"),
        "rq_lists_victim_during": bool(registered_during),
        "rq_lists_victim_after": bool(registered_after),
        "readyz_after": readyz,
        "held_rq_status": dict(Counter(s["status"] for s in cluster.rq_jobs(held).values())),
    }  # fmt: skip
    return result


# --------------------------------------------------------------------------------------------
# the client host's program
# --------------------------------------------------------------------------------------------


def client_main(args: argparse.Namespace) -> int:
    """Closed-loop clients: each submits, polls until terminal, fetches image 0, repeats."""
    import httpx

    from bench.closed_loop import PNG_MAGIC, Params, poll_delay

    if args.readyz:
        with httpx.Client(base_url=args.url, timeout=10) as client:
            reply = client.get("/readyz")
            print(json.dumps({"code": reply.status_code, "body": reply.json()}))
        return 0
    params = Params(args.size, args.size, args.steps, 3.0, Sampler.ddim.value)
    counter = iter(range(args.first_index, args.first_index + args.jobs))
    lock = threading.Lock()
    out = open(args.out, "a") if args.out else None  # noqa: SIM115 - closed below
    stats: dict[str, Any] = {"succeeded": 0, "failed": 0, "first_submit": None, "last_done": None}
    stop_file = Path(args.stop_file) if args.stop_file else None

    def write(row: dict[str, Any]) -> None:
        if out is not None:
            with lock:
                out.write(json.dumps(row) + "\n")
                out.flush()

    def one(client: httpx.Client, index: int) -> None:
        submitted = time.time()
        with lock:
            if stats["first_submit"] is None:
                stats["first_submit"] = submitted
        reply = client.post("/v1/txt2img", json=params.body(index))
        if reply.status_code != 202:
            write({"event": "refused", "index": index, "code": reply.status_code,
                   "error": f"submit {reply.status_code}"})  # fmt: skip
            with lock:
                stats["failed"] += 1
            time.sleep(0.5)
            return
        view = reply.json()
        job_id = view["id"]
        write({"event": "accepted", "index": index, "id": job_id, "t": submitted})
        while view["status"] not in TERMINAL:
            time.sleep(poll_delay("eta", view))
            answer = client.get(f"/v1/jobs/{job_id}")
            if answer.status_code == 200:
                view = answer.json()
        image_ok = False
        if view["status"] == "succeeded":
            image = client.get(f"/v1/jobs/{job_id}/images/0")
            image_ok = image.status_code == 200 and image.content.startswith(PNG_MAGIC)
        finished = time.time()
        ok = view["status"] == "succeeded" and image_ok
        row = {"event": "done", "index": index, "id": job_id, "status": view["status"],
               "t": finished, "image_ok": image_ok}  # fmt: skip
        if not ok:
            row["error"] = f"{job_id} {view['status']} image_ok={image_ok}"
        write(row)
        with lock:
            stats["succeeded" if ok else "failed"] += 1
            stats["last_done"] = max(stats["last_done"] or 0.0, finished)

    def loop() -> None:
        with httpx.Client(base_url=args.url, timeout=30) as client:
            while not (stop_file and stop_file.exists()):
                with lock:
                    index = next(counter, None)
                if index is None:
                    return
                try:
                    one(client, index)
                except httpx.HTTPError as exc:
                    write({"event": "error", "index": index, "error": repr(exc)})
                    with lock:
                        stats["failed"] += 1
                    time.sleep(0.5)

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(args.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if out is not None:
        out.close()
    print(json.dumps(stats))
    return 0


# --------------------------------------------------------------------------------------------
# the benchmark
# --------------------------------------------------------------------------------------------


def report(runs: list[ThroughputRun], faults: list[FaultResult], info: dict[str, Any]) -> str:
    lines = ["", "## machine", *(f"  {k}: {v}" for k, v in info.items()), "",
             "## throughput (closed-loop clients over HTTP to the API host)",
             "| worker hosts | images/s | speed-up | jobs | seconds | lab cores (workers + API, "
             "Redis, client) | others' cores (of them niced) | load 1m before | try kept |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    base = next((r.images_per_s for r in runs if r.workers == 1), None)
    for r in runs:
        speedup = f"{r.images_per_s / base:.2f}x" if base else "-"
        lines.append(f"| {r.workers} | {r.images_per_s:.2f} | {speedup} | {r.succeeded}/{r.jobs} "
                     f"| {r.seconds:.1f} | {r.cpu['lab_cores']:.2f} ({_split(r.cpu)}) "
                     f"| {r.cpu['others_cores']:.2f} ({r.cpu['niced_cores']:.2f}) "
                     f"| {r.cpu['loadavg_1m_before']:.2f} | {r.attempt} |")  # fmt: skip
    for f in faults:
        lines += ["", f"## {f.scenario} ({f.victim})",
                  f"  held mid-batch: {len(f.held)} jobs, attempts {f.held_attempts}",
                  f"  fault -> all held requeued: {f.requeue_s} s; -> all held succeeded: "
                  f"{f.done_s} s",
                  f"  accepted {f.accepted}: statuses {f.statuses}, attempts {f.attempts}",
                  f"  job_succeeded lines per job {f.success_logs}; image writes per job "
                  f"{f.image_writes}",
                  f"  rq registries {f.registries}",
                  f"  problems: {f.problems() or 'none'}"]  # fmt: skip
        lines += [f"  {k}: {v}" for k, v in f.extra.items()]
    return "\n".join(lines)


def _split(cpu: dict[str, Any]) -> str:
    """'workers + the rest' of a run's lab cores."""
    hosts = cpu.get("host_cores", {})
    workers = sum(v for k, v in hosts.items() if re.fullmatch(r"w\d+", k))
    return f"{workers:.2f} + {sum(hosts.values()) - workers:.2f}"


def bench_main(args: argparse.Namespace) -> int:
    from bench.netns import unsupported_reason
    from bench.stack import machine_info

    reason = unsupported_reason()
    if reason:
        print(f"cannot build the lab: {reason}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="ldm-mh-"))
    info = machine_info()
    info["command"] = "python -m bench.multihost " + " ".join(sys.argv[1:])
    info["model"] = str(args.model)
    info["workdir"] = str(workdir)
    cluster = Cluster(workdir, Path(args.model))
    # SIGTERM unwinds like Ctrl-C, so `finally` removes the lab (a SIGKILLed run's namespaces
    # are swept by the next run: bench.netns.sweep_stale)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    runs: list[ThroughputRun] = []
    faults: list[FaultResult] = []
    try:
        cluster.start()
        print(f"lab {cluster.lab.run_id} in {workdir}", flush=True)
        print("throughput:", flush=True)
        runs = throughput(cluster, args.workers, jobs=args.jobs, clients=args.clients,
                          steps=args.steps, size=args.size, repeats=args.repeats,
                          quiet_timeout=args.quiet_timeout)  # fmt: skip
        victim, survivors = "w3", ["w1", "w2"]  # after the throughput runs' w1..w3
        print(f"kill {victim}:", flush=True)
        faults.append(kill_scenario(cluster, victim, survivors, clients=8, steps=args.steps,
                                    size=args.size))  # fmt: skip
        print(f"  {asdict(faults[-1])}", flush=True)
        victim, survivors = "w2", ["w1"]
        print(f"partition {victim} for {args.partition_seconds:g} s:", flush=True)
        faults.append(partition_scenario(cluster, victim, survivors,
                                         seconds=args.partition_seconds, clients=8,
                                         steps=args.steps, size=args.size))  # fmt: skip
        print(f"  {asdict(faults[-1])}", flush=True)
    finally:
        problems = cluster.destroy()
        if problems:
            print(f"cleanup problems: {problems}", file=sys.stderr)
    info["load average (end)"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(report(runs, faults, info))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"info": info, "throughput": [asdict(r) for r in runs],
             "faults": [asdict(f) for f in faults]}, indent=2))  # fmt: skip
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    client = sub.add_parser("client", help="(internal) the client host's closed loop")
    client.add_argument("--url", required=True)
    client.add_argument("--jobs", type=int, default=24)
    client.add_argument("--clients", type=int, default=12)
    client.add_argument("--steps", type=int, default=25)
    client.add_argument("--size", type=int, default=64)
    client.add_argument("--first-index", type=int, default=0)
    client.add_argument("--out", help="JSON lines: every accepted job and its end")
    client.add_argument("--stop-file", help="take no new job once this file exists")
    client.add_argument("--readyz", action="store_true", help="GET /readyz once and print it")
    parser.add_argument("--model", default=str(REPO / "models" / "default"))
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--jobs", type=int, default=48, help="jobs per throughput run")
    parser.add_argument("--clients", type=int, default=12, help="closed-loop clients")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="throughput runs per worker count")
    parser.add_argument("--partition-seconds", type=float, default=30.0)
    parser.add_argument(
        "--quiet-timeout",
        type=float,
        default=300.0,
        help="seconds to wait for other processes to go quiet before a run",
    )
    parser.add_argument("--json", help="also write every figure to this file")
    args = parser.parse_args(argv)
    if args.command == "client":
        return client_main(args)
    return bench_main(args)


if __name__ == "__main__":
    sys.exit(main())
