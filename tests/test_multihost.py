"""Many hosts on one machine: network-namespace hosts on a private bridge (bench/netns.py).

A Redis host, an API host, a client host and worker hosts w1..w3 (each `ldm-serve worker` with
one torch thread and the shipped model at 64x64), all on 10.77.13.0/24 inside namespaces only.
The clients talk HTTP to the API host; the test reads Redis through a unix socket. Checked:

1. two worker hosts serve clearly more images/s than one (closed-loop clients, 25-step jobs);
2. a worker host killed mid-batch (every process SIGKILLed, link down): rq's cleanup on a
   survivor requeues its jobs within seconds and every accepted job succeeds, once;
3. a worker host cut off from Redis for 30 s under load, then healed: no job lost, none
   finished twice (one job_succeeded per job, one write per image key, attempts <= 2), and the
   same worker process takes and completes new jobs after the heal.

Skips (with the reason) where network namespaces are not allowed: not root, or a container/CI
runner that refuses `ip netns add`. The figures of a full run: `python -m bench.multihost`
(docs/deploy.md, "Many hosts on one machine").
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.netns_harness import cluster, skip_without_lab, tail

__all__ = ["cluster"]

STEPS = 25
SIZE = 64
MIN_SPEEDUP = 1.4  # 2 single-threaded workers on 2 cores; ~1.8x when the machine is quiet
BUSY = 0.3  # cores other processes may use during a throughput run before it says nothing
FINDINGS: dict[str, Any] = {}  # the partition test's result, for the known-gap tests below


def test_lab_hosts_talk_inside_the_bridge_only_and_vanish_on_cleanup(tmp_path: Path) -> None:
    """The harness itself: two hosts reach each other, the caller's namespace has no address of
    the subnet, a cut drops traffic and a heal restores it, and destroy removes everything."""
    skip_without_lab()
    from bench.netns import NetnsLab, namespaces

    lab = NetnsLab(tmp_path, subnet="10.77.14")
    env = dict(os.environ)
    try:
        lab.create()
        server, client = lab.add_host("a", 2), lab.add_host("b", 3)
        code = (
            "import socket,sys; s=socket.socket(); s.bind((sys.argv[1], 7000)); s.listen(); "
            "[c.sendall(b'hi') or c.close() for c in iter(lambda: s.accept()[0], None)]"
        )
        lab.spawn(server, "listener", [sys.executable, "-c", code, server.address], env, tmp_path)
        probe = (
            "import socket,sys; s=socket.create_connection((sys.argv[1], 7000), timeout=2); "
            "print(s.recv(2).decode())"
        )

        def connect() -> subprocess.CompletedProcess[str]:
            return lab.run(client, [sys.executable, "-c", probe, server.address], env, tmp_path, 30)

        deadline = time.monotonic() + 10
        while (answer := connect()).stdout.strip() != "hi":
            assert time.monotonic() < deadline, answer.stderr
            time.sleep(0.2)
        root_addresses = subprocess.run(["ip", "-4", "addr"], capture_output=True, text=True)
        assert "10.77.14." not in root_addresses.stdout
        lab.cut(client)
        assert connect().returncode != 0, "the cut host still reaches the other"
        lab.heal(client)
        assert connect().stdout.strip() == "hi"
    finally:
        problems = lab.destroy()
    assert not problems
    assert not [name for name in namespaces() if name.startswith(lab.run_id)]


@pytest.mark.slow
def test_two_worker_hosts_serve_clearly_more_than_one(cluster: Any) -> None:
    """Best of two runs per worker count, each started once other processes are quiet and
    repeated while they competed (bench.multihost_throughput.measure). On a machine that stays
    busy (other processes took more than BUSY cores during a kept run) a missed speed-up is not
    evidence against scaling out: skip, with the figures, instead of failing."""
    from bench.multihost_throughput import throughput

    runs = throughput(cluster, [1, 2], jobs=48, clients=12, steps=STEPS, size=SIZE, repeats=2,
                      tries=2, quiet_timeout=30,
                      log=lambda line: print(line, flush=True))  # fmt: skip
    assert all(run.succeeded == run.jobs for run in runs), runs
    best = {k: max(r.images_per_s for r in runs if r.workers == k) for k in (1, 2)}
    speedup = best[2] / best[1]
    print(f"images/s {best}, speed-up {speedup:.2f}x")
    message = (
        f"2 worker hosts: {best[2]:.2f} images/s, 1: {best[1]:.2f} ({speedup:.2f}x, wanted >= "
        f"{MIN_SPEEDUP}x); CPU meanwhile: {[r.cpu for r in runs]}"
    )
    busy = [r for r in runs if r.cpu["others_cores"] > BUSY]
    if speedup < MIN_SPEEDUP and busy:
        pytest.skip(f"the machine stayed busy with other work: {message}")
    assert speedup >= MIN_SPEEDUP, message


@pytest.mark.slow
def test_a_worker_host_killed_mid_batch_loses_no_job(cluster: Any) -> None:
    from bench.multihost_cluster import WORKER_ENV
    from bench.multihost_faults import kill_scenario

    result = kill_scenario(cluster, "w3", ["w1", "w2"], clients=8, steps=STEPS, size=SIZE)
    print(result)
    logs = tail(cluster, ("w1", "worker"), ("w2", "worker"), ("w3", "worker"))
    assert result.problems() == [], f"{result}\n{logs}"
    assert result.extra["victim_exit"] == -9
    assert result.held_attempts == [2] * len(result.held), "each held job ran exactly twice"
    assert result.registries["failed"] == 0, result.registries
    # Detection: the victim's StartedJobRegistry entries expire after LDM_HEARTBEAT_TTL and the
    # next maintenance pass (every LDM_MAINTENANCE_INTERVAL) on a survivor requeues them.
    bound = int(WORKER_ENV["LDM_HEARTBEAT_TTL"]) + int(WORKER_ENV["LDM_MAINTENANCE_INTERVAL"])
    assert result.requeue_s is not None and result.requeue_s < bound + 5, result
    assert result.done_s is not None and result.done_s < 60, result


@pytest.mark.slow
def test_a_worker_host_partitioned_30s_rejoins_and_no_job_runs_twice(cluster: Any) -> None:
    from bench.multihost_faults import partition_scenario

    result = partition_scenario(cluster, "w2", ["w1"], seconds=30, clients=8, steps=STEPS,
                                size=SIZE, after_heal=10)  # fmt: skip
    FINDINGS["partition"] = result
    print(result)
    extra = result.extra
    logs = tail(cluster, ("w1", "worker"), ("w2", "worker"))
    assert result.problems() == [], f"{result}\n{logs}"
    assert result.registries["failed"] == 0, result.registries
    # Its jobs did not wait for the heal: a survivor requeued and finished them meanwhile.
    assert result.requeue_s is not None and result.requeue_s < 15, result
    assert result.done_s is not None and result.done_s < 30, result
    assert set(result.held_attempts) == {2}, result
    # The same process rode the outage out and serves again, without a restart.
    assert extra["victim_same_pid"], f"{extra}\n{logs}"
    assert extra["victim_redis_warnings"] >= 1, "the partition never reached the worker"
    assert extra["heartbeat_back_s"] is not None and extra["heartbeat_back_s"] < 20, extra
    assert extra["victim_new_jobs_succeeded"] >= 1, f"{extra}\n{logs}"
    assert extra["first_new_job_done_s"] is not None and extra["first_new_job_done_s"] < 30
    # Its stale copies of the requeued jobs were dropped, not stored a second time.
    assert extra["victim_stale_copies_dropped"] >= 1, f"{extra}\n{logs}"


def partition_finding() -> Any:
    result = FINDINGS.get("partition")
    if result is None:
        pytest.skip("needs test_a_worker_host_partitioned_30s_rejoins_and_no_job_runs_twice")
    return result


@pytest.mark.slow
def test_a_healed_worker_is_counted_again(cluster: Any) -> None:
    extra = partition_finding().extra
    assert extra["rq_lists_victim_after"], extra
    assert extra["readyz_after"]["body"]["workers"] == 2, extra


@pytest.mark.slow
@pytest.mark.xfail(
    strict=False,  # timing-dependent: report, never break the suite
    reason="known gap: after the heal the partitioned worker drops its stale copy of a job that "
    "a survivor finished by canceling it in rq (Job.cancel), which moves the finished rq job to "
    "CanceledJobRegistry (and counts it as canceled in the worker's metrics); the job record, "
    "and so the API, correctly says succeeded",
)
def test_rq_agrees_that_the_requeued_jobs_finished(cluster: Any) -> None:
    result = partition_finding()
    assert result.registries["canceled"] == 0, result.registries
    assert result.extra["held_rq_status"] == {"finished": len(result.held)}, result.extra
