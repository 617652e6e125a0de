"""The benchmark's private stack: a redis-server, `ldm-serve api` and one `ldm-serve worker`.

Started on free loopback ports with logs in a temp dir; also the machine description printed with
every benchmark table.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx
import redis

from bench.closed_loop import TERMINAL

REPO = Path(__file__).resolve().parents[1]
# --------------------------------------------------------------------------------------------
# machine
# --------------------------------------------------------------------------------------------


def machine_info() -> dict[str, str]:
    """CPU, cores, torch, date, commit and load: enough to compare runs on other machines."""
    import torch

    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
            timeout=10, check=False,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        commit = "?"
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": f"{os.cpu_count()} logical, {affinity} usable",
        "torch": f"{torch.__version__} ({torch.get_num_threads()} intra-op threads)",
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "commit": commit or "?",
        "load average": loadavg(),
    }


def loadavg() -> str:
    """1/5/15-minute load averages (other work on the machine skews every number here)."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def pythonpath() -> list[str]:
    """This process's PYTHONPATH entries (e.g. packages carried to a device), kept for children."""
    return [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------------------------
# the stack: redis-server + ldm-serve api + one ldm-serve worker
# --------------------------------------------------------------------------------------------


class Stack:
    """A private redis-server, API and worker on free loopback ports; logs in a temp dir.

    `source`: the checkout whose `ldm-serve api` and `worker` run (cwd and PYTHONPATH; another
    revision's tree from `worktree()` for a baseline); `env`: extra or overriding variables
    (e.g. LDM_API_KEYS) for the API and the worker.
    """

    def __init__(self, model: Path, max_batch: int, workdir: Path, name: str,
                 threads: int | None = None, *, source: Path = REPO,
                 env: Mapping[str, str] | None = None) -> None:  # fmt: skip
        self.source = Path(source).resolve()
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.redis_port, self.api_port, self.metrics_port = free_port(), free_port(), free_port()
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.url = f"http://127.0.0.1:{self.api_port}"
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.env = {
            **os.environ, "REDIS_URL": self.redis_url,
            "PYTHONPATH": os.pathsep.join([str(self.source), *pythonpath()]),
            "LDM_MODEL": str(model), "LDM_MODEL_NAME": "default", "LDM_DEVICE": "cpu",
            "LDM_DTYPE": "float32", "LDM_MAX_BATCH": str(max_batch),
            "LDM_METRICS_PORT": str(self.metrics_port), "LDM_RATE_LIMIT": "0",
            "LDM_SHUTDOWN_GRACE": "1", "LDM_RESULT_TTL": "600", "LDM_LOG_LEVEL": "WARNING",
        }  # fmt: skip
        if threads:  # the worker's torch.set_num_threads, as the direct run's
            self.env["LDM_TORCH_THREADS"] = str(threads)
        self.env.update(env or {})

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.dir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(argv, cwd=self.source, env=self.env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        log.close()
        self.procs.append((name, proc))

    def start(self, timeout: float = 180.0) -> None:
        """Start all three and wait for /readyz (Redis up, worker registered, model loaded)."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server not found: sudo apt-get install -y redis-server")
        self._spawn("redis", [binary, "--port", str(self.redis_port), "--bind", "127.0.0.1",
                              "--dir", str(self.dir), "--save", "", "--appendonly", "no",
                              "--maxmemory-policy", "noeviction"])  # fmt: skip
        cli = [sys.executable, "-m", "cli.main"]
        self._spawn("api", [*cli, "api", "--host", "127.0.0.1", "--port", str(self.api_port),
                            "--log-level", "warning"])  # fmt: skip
        self._spawn("worker", [*cli, "worker"])
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2) as client:
            while time.monotonic() < deadline:
                for name, proc in self.procs:
                    if proc.poll() is not None:
                        raise RuntimeError(f"{name} exited {proc.returncode}:\n{self.log(name)}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.url}/readyz").status_code == 200:
                        return
                time.sleep(0.2)
        raise RuntimeError(f"stack not ready after {timeout:g}s:\n{self.log('worker')}")

    def pid(self, name: str) -> int:
        """Process id of 'redis', 'api' or 'worker'."""
        return next(proc.pid for n, proc in self.procs if n == name)

    def imports_from(self) -> str:
        """Where the stack's processes import `workers` and `service` from (a baseline check)."""
        code = "import service, workers; print(service.__file__, workers.__file__)"
        out = subprocess.run([sys.executable, "-c", code], cwd=self.source, env=self.env,
                             capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        return out.stdout.strip() or out.stderr.strip()[-300:]

    def jobs(self) -> dict[str, tuple[str, str, str, int]]:
        """Every job record in the stack's Redis: id -> (status, owner, 'WxH', sample-steps done
        so far: all of them once succeeded, else the last progress the worker reported)."""
        client = redis.Redis.from_url(self.redis_url, decode_responses=True)
        ids = [k for k in client.scan_iter("ldm:job:*", count=1000) if k.count(":") == 2]
        pipe = client.pipeline(transaction=False)
        for key in ids:
            pipe.hmget(key, "status", "progress_step", "request", "owner")
        out = {}
        for key, (status, step, request, owner) in zip(ids, pipe.execute(), strict=True):
            if request:
                req = json.loads(request)
                done = int(req["steps"]) if status == "succeeded" else int(step or 0)
                size, images = f"{req['width']}x{req['height']}", req.get("num_images", 1)
                out[key.split(":")[-1]] = (status, owner or "", size, done * images)
        client.close()
        return out

    def settle(self, timeout: float = 300.0) -> None:
        """Wait until every job record is terminal (succeeded, failed, canceled, expired)."""
        deadline = time.monotonic() + timeout
        while any(job[0] not in TERMINAL for job in self.jobs().values()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"jobs still not terminal after {timeout:g}s")
            time.sleep(0.5)

    def log(self, name: str) -> str:
        path = self.dir / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop(self) -> None:
        """Worker first, Redis last: SIGTERM, then SIGKILL if one lingers."""
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
        self.procs.clear()

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds (user + system) used so far by each stack process and by this one (the
        client threads): {'cpu_worker', 'cpu_api', 'cpu_redis', 'cpu_clients'}."""
        ticks = os.sysconf("SC_CLK_TCK")
        out = {"cpu_clients": time.process_time()}
        for name, proc in self.procs:
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
                out[f"cpu_{name}"] = (int(fields[11]) + int(fields[12])) / ticks
        return out

    def probe(self) -> dict[str, float]:
        """Worker metrics and CPU seconds, for deltas over a window."""
        return {**self.worker_metrics(), **self.cpu_seconds()}

    def worker_metrics(self) -> dict[str, float]:
        """Scrape the worker's /metrics, summed over label sets: {'metric_name': value}."""
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).text
        values: dict[str, float] = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            key, _, value = line.rpartition(" ")
            name = key.split("{", 1)[0]
            with contextlib.suppress(ValueError):
                values[name] = values.get(name, 0.0) + float(value)
        return values


@contextlib.contextmanager
def running_stack(model: Path, max_batch: int, workdir: Path, name: str,
                  threads: int | None, **options: object) -> Iterator[Stack]:  # fmt: skip
    """A started Stack (options: Stack's `source`, `env`), stopped on exit."""
    stack = Stack(model, max_batch, workdir, name, threads, **options)  # type: ignore[arg-type]
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


@contextlib.contextmanager
def worktree(rev: str) -> Iterator[Path]:
    """A detached `git worktree` of `rev` in a temp dir (another revision's code for a baseline),
    removed on exit."""
    path = Path(tempfile.mkdtemp(prefix=f"ldm-bench-{rev[:12]}-"))
    git = ["git", "-C", str(REPO), "worktree"]
    subprocess.run([*git, "add", "--detach", str(path), rev], check=True, capture_output=True)
    try:
        yield path
    finally:
        subprocess.run([*git, "remove", "--force", str(path)], check=False, capture_output=True)
        shutil.rmtree(path, ignore_errors=True)
