"""Pure continuous-batching decisions: admission, retirement, progress and failure isolation.

Nothing here touches Redis, rq or torch: the loop describes its claimed jobs as `Slot`s (in the
order they were dequeued; each derived from a JobInFlight) and asks what to do next.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Slot:
    """One claimed job as the batching policy sees it: a snapshot, derived, never updated."""

    job_id: str
    width: int
    height: int
    steps: int
    samples: int  # num_images: each image is one sample in the batch
    owner: str = ""  # API key owner: room in the engine goes to owners in turn
    admitted: int = 0  # samples handed to the engine in this attempt
    active: int = 0  # samples in the engine right now
    done: int = 0  # samples that finished denoising in this attempt
    group: int | None = None  # isolation group after a batch failure; None = shares freely
    cap: int | None = None  # most samples of this job in the engine at once (OOM backoff)

    @property
    def resolution(self) -> tuple[int, int]:
        """(width, height): only samples of one resolution share a batch."""
        return (self.width, self.height)

    @property
    def waiting(self) -> int:
        """Samples not yet handed to the engine."""
        return self.samples - self.admitted


@dataclass(frozen=True)
class Admission:
    """Hand `count` more samples of job `job_id` to the engine, starting at image `first`."""

    job_id: str
    first: int
    count: int


def running_samples(slots: Sequence[Slot]) -> int:
    """Samples currently in the engine."""
    return sum(slot.active for slot in slots)


def _eligible(slots: Sequence[Slot]) -> list[Slot]:
    """Jobs that may join now. Isolation groups (reruns after a failed batch) run alone: while
    one runs only its group joins; while one waits the engine drains for it."""
    running = {slot.group for slot in slots if slot.active}
    isolated = next((g for g in running if g is not None), None)
    if isolated is None:
        waiting = [s.group for s in slots if s.waiting > 0 and s.group is not None]
        if waiting and running:
            return []
        isolated = waiting[0] if waiting else None
    return [slot for slot in slots if slot.group == isolated and slot.waiting > 0]


def plan_admissions(slots: Sequence[Slot], max_batch: int) -> list[Admission]:
    """Which waiting samples join the engine now (at most `max_batch` samples in it).

    Jobs of every resolution run side by side (workers/fair_share.py shares the device between
    shape groups). Room goes to owners in turn, the owner with the fewest samples in the engine
    first, each owner's jobs in claim order, so one key's backlog cannot crowd out another's.
    """
    room = max_batch - running_samples(slots)
    in_engine = Counter({slot.owner: 0 for slot in slots})
    for slot in slots:
        in_engine[slot.owner] += slot.active
    queues: dict[str, deque[Slot]] = {}
    for slot in _eligible(slots):
        queues.setdefault(slot.owner, deque()).append(slot)
    plan: list[Admission] = []
    while room > 0 and queues:
        owner = min(queues, key=lambda o: in_engine[o])  # ties: the earliest claim (dict order)
        slot = queues[owner].popleft()
        if not queues[owner]:
            del queues[owner]
        cap = slot.cap if slot.cap is not None else slot.samples
        count = min(slot.waiting, room, cap - slot.active)
        if count > 0:
            plan.append(Admission(slot.job_id, slot.admitted, count))
            room -= count
            in_engine[owner] += count
    return plan


def should_dequeue(slots: Sequence[Slot], max_batch: int, *, draining: bool = False) -> bool:
    """Whether to claim another queued job: while claimed samples (running and waiting) stay
    under two batches, so admission can choose among owners without hoarding the queue."""
    if draining:
        return False
    waiting = sum(slot.waiting for slot in slots)
    return running_samples(slots) + waiting < 2 * max_batch and waiting < max_batch


def is_complete(slot: Slot) -> bool:
    """All of a job's samples finished denoising: it can be decoded and retired."""
    return slot.done >= slot.samples


def job_progress(slot: Slot, active_steps_done: Sequence[int]) -> tuple[int, int]:
    """(step, total) of a job: grid steps of its images so far, averaged (floor) over them."""
    sample_steps = slot.done * slot.steps + sum(active_steps_done)
    return sample_steps // max(1, slot.samples), slot.steps


def split_for_retry(job_ids: Sequence[str]) -> tuple[list[str], list[str]]:
    """Bisect the jobs of a failed batch so a bad member ends up failing alone."""
    half = (len(job_ids) + 1) // 2
    return list(job_ids[:half]), list(job_ids[half:])


def backoff_cap(active: int) -> int | None:
    """Per-job sample cap after one job alone ran out of memory; None once it is down to 1."""
    return active // 2 if active > 1 else None


def retry_plan(
    slots: Sequence[Slot], failed_ids: Sequence[str], next_group: int, *, oom: bool
) -> dict[str, tuple[int | None, int | None]]:
    """After a batched step raised: job id -> (group, cap) to rerun, absent = fail it now.

    Several jobs: bisect into two fresh isolation groups. One job with several samples in the
    batch that ran out of memory: halve its cap. Otherwise the job failed alone.
    """
    by_id = {slot.job_id: slot for slot in slots}
    if len(failed_ids) > 1:
        left, right = split_for_retry(failed_ids)
        plan: dict[str, tuple[int | None, int | None]] = {}
        for offset, half in enumerate((left, right)):
            for job_id in half:
                plan[job_id] = (next_group + offset, by_id[job_id].cap)
        return plan
    if len(failed_ids) == 1 and oom:
        slot = by_id[failed_ids[0]]
        cap = backoff_cap(slot.active)
        if cap is not None:
            return {slot.job_id: (next_group, cap)}
    return {}
