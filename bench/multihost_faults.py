"""Fault scenarios of the multi-host lab, under continuous closed-loop load: a worker host
killed mid-batch (`kill_scenario`) and a worker host partitioned from Redis and healed
(`partition_scenario`). Each returns a `FaultResult`: what happened to every accepted job
(statuses, attempts, job_succeeded lines and image writes per job), how long recovery took, and
`problems()`, the broken promises (empty: every accepted job succeeded exactly once)."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.multihost_client import client_args
from bench.multihost_cluster import TERMINAL, Cluster

ENDED_ELSEWHERE = re.compile(r"job ([0-9a-f-]+) ended elsewhere")


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
