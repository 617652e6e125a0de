"""Submit latency under a flood: N threads POST /v1/txt2img as fast as they can, no worker.

    python -m bench.submit_flood [--clients 64] [--seconds 20]

Starts its own redis-server and `ldm-serve api` on free loopback ports (no worker: jobs stay
queued; the queue limit is lifted so every POST is a full admission: quota scripts, queue place,
record and rq job in one MULTI) and prints requests/s and latency percentiles per status code.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time

import httpx

from bench.mixed_report import table
from bench.stack import REPO, free_port, loadavg, machine_info


def wait_healthy(url: str, timeout: float = 30.0) -> None:
    """Poll /healthz until the API answers."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx.get(f"{url}/healthz", timeout=1.0).raise_for_status()
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def flood(url: str, clients: int, seconds: float) -> list[tuple[int, float]]:
    """(status, seconds) of every POST the clients made in the window."""
    results: list[tuple[int, float]] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client() -> None:
        with httpx.Client(timeout=30.0) as http:
            while time.monotonic() < stop:
                began = time.monotonic()
                reply = http.post(f"{url}/v1/txt2img", json={"prompt": "a cat", "steps": 4})
                with lock:
                    results.append((reply.status_code, time.monotonic() - began))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def percentile(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    print(
        f"command: python -m bench.submit_flood --clients {args.clients} --seconds {args.seconds:g}"
    )
    for key, value in machine_info().items():
        print(f"- {key}: {value}")
    redis_port, api_port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as data:
        redis = subprocess.Popen(
            ["redis-server", "--port", str(redis_port), "--save", "", "--dir", data,
             "--maxmemory-policy", "noeviction"], stdout=subprocess.DEVNULL,
        )  # fmt: skip
        env = {
            **os.environ, "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "LDM_MAX_QUEUE": "1000000", "LDM_RATE_LIMIT": "0", "LDM_DEFAULT_SIZE": "64",
        }  # fmt: skip
        api = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "api", "--host", "127.0.0.1", "--port",
             str(api_port), "--log-level", "warning"], env=env, cwd=REPO,
        )  # fmt: skip
        try:
            url = f"http://127.0.0.1:{api_port}"
            wait_healthy(url)
            results = flood(url, args.clients, args.seconds)
        finally:
            api.terminate()
            redis.terminate()
            api.wait(10)
            redis.wait(10)
    rows = []
    for status in sorted({code for code, _ in results}):
        times = [seconds * 1000 for code, seconds in results if code == status]
        rows.append([str(status), str(len(times)), f"{len(times) / args.seconds:.0f}",
                     f"{percentile(times, 0.5):.0f}", f"{percentile(times, 0.95):.0f}",
                     f"{percentile(times, 0.99):.0f}", f"{max(times):.0f}"])  # fmt: skip
    print(f"- load average after: {loadavg()}")
    print(table(["status", "requests", "per s", "p50 ms", "p95 ms", "p99 ms", "max ms"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
