"""Jobs of different sizes and owners on one worker: the current code vs a baseline revision.

    python -m bench.mixed_load [--baseline-rev 693cd75] [--current-rev REV] [--quick]
                               [--parts hol,mixed,fair,uneven] [--threads 1] ...

Two private stacks (bench/stack.py: redis-server, `ldm-serve api`, one `ldm-serve worker`; the
shipped model on the CPU; LDM_API_KEYS with two keys; LDM_MAX_ACTIVE_JOBS_PER_KEY=--quota) run
side by side: "current" from this working tree (or a worktree of --current-rev) and "baseline"
with its API and worker from a git worktree of --baseline-rev. Each part runs on each stack:

  hol     a 64x64 10-step job alone (--solo runs), then the same job --delay s after a 512x512
          20-step job started running (--repeats); clients poll every 50 ms.
  mixed   --seconds after --warmup of a closed loop: --large-clients send 512x512 20-step jobs,
          --small-clients 64x64 10-step jobs.
  fair    keys A and B, --fair-clients closed-loop clients each, 64x64 10-step jobs; a 429 waits
          its Retry-After and retries.  uneven: the same with key B at --uneven-clients.

Work inside a window comes from the job records in the stack's Redis (progress_step at both ends;
succeeded = all steps), so a job cut by the window counts only its steps inside it. "64-eq steps"
weighs a sample-step by its latent pixels relative to 64x64 (a 512x512 step = 64): device work,
comparable whichever mix of sizes a scheduler chose to serve.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import httpx

from bench.closed_loop import TERMINAL, Drive, Params, drive, one_request
from bench.mixed_report import Window, report_fair, report_hol, report_mixed
from bench.stack import REPO, Stack, loadavg, machine_info, worktree
from jobs.schema import Sampler

KEYS = {"A": "bench-key-a", "B": "bench-key-b"}
SMALL = Params(64, 64, 10, 3.0, Sampler.ddim)
LARGE = Params(512, 512, 20, 3.0, Sampler.ddim)
T = TypeVar("T")


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def closed_loop(stack: Stack, loads: list[tuple[str, int, Params, str]], warmup: float,
                seconds: float, poll: str, backoff: bool) -> Window:  # fmt: skip
    """Run each load (name, clients, params, API key) in its own thread; measure after warm-up."""
    drives: dict[str, Drive] = {}

    def run(i: int, name: str, clients: int, params: Params, key: str) -> None:
        drives[name] = drive(stack.url, clients, params, poll, warmup + seconds + 1, 0,
                             first_index=i * 10**6, headers=auth(key), backoff=backoff)  # fmt: skip

    threads = [threading.Thread(target=run, args=(i, *load)) for i, load in enumerate(loads)]
    for thread in threads:
        thread.start()
    time.sleep(warmup)
    t0, before, m0 = time.monotonic(), stack.jobs(), stack.probe()
    time.sleep(max(0.0, t0 + seconds - time.monotonic()))
    t1, after, m1 = time.monotonic(), stack.jobs(), stack.probe()
    for thread in threads:
        thread.join()
    stack.settle()
    steps: dict[tuple[str, str], int] = {}
    for job_id, (_, owner, size, done) in after.items():
        start = before[job_id][3] if job_id in before else 0
        steps[owner, size] = steps.get((owner, size), 0) + done - start
    return Window(t0, t1, drives, steps, {k: v - m0.get(k, 0.0) for k, v in m1.items()})


def timed(client: httpx.Client, params: Params, index: int) -> float:
    start = time.monotonic()
    ok, error, _, _ = one_request(client, index, params, "0.05", start + 600)
    if not ok:
        raise RuntimeError(f"{params.width}x{params.height} job failed: {error}")
    return time.monotonic() - start


def wait_for(client: httpx.Client, job_id: str, states: set[str]) -> None:
    deadline = time.monotonic() + 600
    while client.get(f"/v1/jobs/{job_id}").json()["status"] not in states:
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id} never reached {states}")
        time.sleep(0.05)


def head_of_line(stack: Stack, args: argparse.Namespace) -> dict[str, list[float]]:
    with httpx.Client(base_url=stack.url, timeout=30, headers=auth(KEYS["A"])) as client:
        for i in range(3):  # warm-up: the small shape, then the large one (2 steps)
            timed(client, SMALL, 10**6 + i)
        timed(client, replace(LARGE, steps=2), 10**6)
        solo = [timed(client, SMALL, i) for i in range(args.solo)]
        behind, large = [], []
        for r in range(args.repeats):
            start = time.monotonic()
            job_id = client.post("/v1/txt2img", json=LARGE.body(r)).json()["id"]
            wait_for(client, job_id, {"running"} | TERMINAL)
            time.sleep(args.delay)
            behind.append(timed(client, SMALL, 100 + r))
            wait_for(client, job_id, TERMINAL)
            large.append(time.monotonic() - start)
    stack.settle()
    return {"solo": solo, "behind": behind, "large": large}


def in_turn(stacks: dict[str, Stack], run: Callable[[Stack], T], first: str) -> dict[str, T]:
    """`run` on each stack, `first` first (parts alternate who goes first: the other work on a
    shared machine drifts); results in the stacks' order."""
    done = {name: run(stacks[name]) for name in sorted(stacks, key=lambda n: n != first)}
    return {name: done[name] for name in stacks}


def part_hol(stacks: dict[str, Stack], args: argparse.Namespace) -> None:
    report_hol(in_turn(stacks, lambda stack: head_of_line(stack, args), "baseline"), args.delay)


def part_mixed(stacks: dict[str, Stack], args: argparse.Namespace) -> None:
    loads = [("512", args.large_clients, LARGE, KEYS["A"]),
             ("64", args.small_clients, SMALL, KEYS["A"])]  # fmt: skip
    res = in_turn(stacks, lambda s: closed_loop(s, loads, args.warmup, args.seconds, args.poll,
                                                False), "current")  # fmt: skip
    print(f"\n### (b) mixed closed loop: {args.large_clients} clients 512x512 20 steps + "
          f"{args.small_clients} clients 64x64 10 steps, {args.seconds:g} s after "
          f"{args.warmup:g} s warm-up (poll {args.poll} s)\n")  # fmt: skip
    report_mixed(res)


def part_fair(stacks: dict[str, Stack], args: argparse.Namespace, clients_b: int) -> None:
    loads = [("A", args.fair_clients, SMALL, KEYS["A"]), ("B", clients_b, SMALL, KEYS["B"])]
    first = "baseline" if clients_b == args.fair_clients else "current"
    res = in_turn(stacks, lambda s: closed_loop(s, loads, args.fair_warmup, args.fair_seconds,
                                                args.fair_poll, True), first)  # fmt: skip
    print(f"\n### (c) fairness: key A {args.fair_clients} clients, key B {clients_b} clients, "
          f"64x64 10 steps, {args.fair_seconds:g} s after {args.fair_warmup:g} s (poll "
          f"{args.fair_poll} s, quota {args.quota} active jobs per key)\n")  # fmt: skip
    report_fair(res, {k: hashlib.sha256(key.encode()).hexdigest() for k, key in KEYS.items()})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = p.add_argument
    add("--baseline-rev", default="693cd75")
    add("--current-rev", default=None, help="'current' from this revision (default: worktree)")
    add("--model", type=Path, default=REPO / "models" / "default")
    add("--max-batch", type=int, default=8, help="the worker's LDM_MAX_BATCH")
    add("--threads", type=int, default=1, help="LDM_TORCH_THREADS (0: torch's default)")
    add("--parts", default="hol,mixed,fair,uneven")
    add("--solo", type=int, default=5)
    add("--repeats", type=int, default=3)
    add("--delay", type=float, default=0.5)
    add("--seconds", type=float, default=90.0, help="measured window of the mixed loop")
    add("--warmup", type=float, default=20.0, help="warm-up of the mixed loop")
    add("--large-clients", type=int, default=2)
    add("--small-clients", type=int, default=4)
    add("--poll", default="0.25", help="poll interval of the mixed loop's clients (s)")
    add("--fair-seconds", type=float, default=90.0)
    add("--fair-warmup", type=float, default=10.0)
    add("--fair-clients", type=int, default=40)
    add("--uneven-clients", type=int, default=8, help="key B's clients in the uneven variant")
    add("--fair-poll", default="1.0", help="poll interval of the fairness clients (s)")
    add("--quota", type=int, default=32, help="LDM_MAX_ACTIVE_JOBS_PER_KEY")
    add("--quick", action="store_true", help="smoke run: 2 solo, 1 repeat, 15 s windows")
    args = p.parse_args(argv)
    if args.quick:
        args.solo, args.repeats = min(args.solo, 2), 1
        args.seconds, args.warmup, args.fair_seconds, args.fair_warmup = 15.0, 10.0, 15.0, 5.0
    args.parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    if not set(args.parts) <= {"hol", "mixed", "fair", "uneven"}:
        p.error(f"unknown --parts {args.parts}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print("# bench.mixed_load\n")
    print("command: python -m bench.mixed_load " + " ".join(sys.argv[1:] if argv is None else argv))
    for key, value in machine_info().items():
        print(f"- {key}: {value}")
    status = ["git", "-C", str(REPO), "status", "--short", "--untracked-files=no"]
    dirty = len(subprocess.run(status, capture_output=True, text=True).stdout.splitlines())
    print(f"- model: {args.model}; worker LDM_MAX_BATCH={args.max_batch}, LDM_TORCH_THREADS="
          f"{args.threads or 'default'}; working tree: {dirty} modified tracked files")  # fmt: skip
    env = {"LDM_API_KEYS": ",".join(KEYS.values()), "LDM_RESULT_TTL": "7200",
           "LDM_MAX_ACTIVE_JOBS_PER_KEY": str(args.quota)}  # fmt: skip
    parts = {"hol": lambda: part_hol(stacks, args), "mixed": lambda: part_mixed(stacks, args),
             "fair": lambda: part_fair(stacks, args, args.fair_clients),
             "uneven": lambda: part_fair(stacks, args, args.uneven_clients)}  # fmt: skip
    stacks: dict[str, Stack] = {}
    with contextlib.ExitStack() as cleanup:
        tmp = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="ldm-bench-mixed-")))
        revs = {"baseline": args.baseline_rev, "current": args.current_rev}
        for name, rev in revs.items():
            tree = cleanup.enter_context(worktree(rev)) if rev else REPO
            stacks[name] = Stack(args.model.resolve(), args.max_batch, tmp, name,
                                 args.threads or None, source=tree, env=env)  # fmt: skip
            cleanup.callback(stacks[name].stop)
        with ThreadPoolExecutor() as pool:  # both load the model at once
            list(pool.map(Stack.start, stacks.values()))
        for name, stack in stacks.items():
            print(f"- {name} ({revs[name] or 'working tree'}) imports: {stack.imports_from()}")
        for part in args.parts:
            started = time.monotonic()
            parts[part]()
            took = time.monotonic() - started
            print(f"\n({part}: {took:.0f} s; load average {loadavg()})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
