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
import json
import os
import re
import signal
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.multihost_client import client_main
from bench.multihost_cluster import REPO, Cluster
from bench.multihost_faults import FaultResult, kill_scenario, partition_scenario
from bench.multihost_throughput import ThroughputRun, throughput


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
