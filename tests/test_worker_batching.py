"""Pure batching policy: admission, dequeue gating, retirement, progress, failure isolation."""

from __future__ import annotations

from dataclasses import replace

from workers.batching import (
    Admission,
    Slot,
    backoff_cap,
    is_complete,
    job_progress,
    plan_admissions,
    retry_plan,
    running_samples,
    should_dequeue,
    split_for_retry,
)


def slot(job_id: str, samples: int = 1, size: int = 64, **kw: int | None) -> Slot:
    return Slot(job_id, size, size, 10, samples, **kw)  # type: ignore[arg-type]


def test_empty_engine_admits_fifo_up_to_max_batch() -> None:
    slots = [slot("a", 3), slot("b", 3), slot("c", 3)]
    assert plan_admissions(slots, 8) == [
        Admission("a", 0, 3),
        Admission("b", 0, 3),
        Admission("c", 0, 2),  # partial: a request of N images is N samples
    ]


def test_other_resolution_blocks_the_line_behind_it() -> None:
    slots = [slot("a", 2, admitted=2, active=2), slot("b", 1, size=128), slot("c", 1)]
    assert plan_admissions(slots, 8) == []  # c may not overtake b
    slots[0] = replace(slots[0], active=0, done=2)
    assert plan_admissions(slots, 8) == [Admission("b", 0, 1)]


def test_joins_running_batch_of_same_resolution() -> None:
    slots = [slot("a", 2, admitted=2, active=2), slot("b", 4)]
    assert plan_admissions(slots, 4) == [Admission("b", 0, 2)]
    slots[1] = replace(slots[1], admitted=2, active=2)
    assert plan_admissions(slots, 4) == []
    slots[0] = replace(slots[0], active=0, done=2)
    assert plan_admissions(slots, 4) == [Admission("b", 2, 2)]


def test_isolation_groups_never_mix() -> None:
    slots = [slot("a", 1, group=1), slot("b", 1, group=2), slot("c", 1)]
    assert plan_admissions(slots, 8) == [Admission("a", 0, 1)]
    slots[0] = replace(slots[0], admitted=1, active=1)
    assert plan_admissions(slots, 8) == []


def test_cap_limits_samples_of_one_job() -> None:
    slots = [slot("a", 4, cap=2)]
    assert plan_admissions(slots, 8) == [Admission("a", 0, 2)]
    slots[0] = replace(slots[0], admitted=2, active=2)
    assert plan_admissions(slots, 8) == []


def test_should_dequeue_only_when_everything_claimed_runs_and_room_is_left() -> None:
    assert should_dequeue([], 4)
    assert not should_dequeue([], 4, draining=True)
    assert not should_dequeue([slot("a", 1)], 4)  # claimed but not yet admitted
    running = slot("a", 2, admitted=2, active=2)
    assert should_dequeue([running], 4)
    assert not should_dequeue([running, slot("b", 2, admitted=2, active=2)], 4)
    assert running_samples([running]) == 2


def test_completion_and_progress() -> None:
    s = slot("a", 2, admitted=2, active=1, done=1)
    assert not is_complete(s)
    assert job_progress(s, [4]) == (7, 10)  # (10 + 4) / 2
    s = replace(s, active=0, done=2)
    assert is_complete(s)
    assert job_progress(s, []) == (10, 10)


def test_bisect_then_alone() -> None:
    assert split_for_retry(["a", "b", "c"]) == (["a", "b"], ["c"])
    slots = [slot("a", 1, active=1), slot("b", 1, active=1), slot("c", 1, active=1)]
    plan = retry_plan(slots, ["a", "b", "c"], 5, oom=False)
    assert plan == {"a": (5, None), "b": (5, None), "c": (6, None)}
    assert retry_plan(slots, ["c"], 7, oom=False) == {}  # alone: it fails


def test_oom_of_one_job_halves_its_samples_before_failing() -> None:
    slots = [slot("a", 4, admitted=4, active=4)]
    assert retry_plan(slots, ["a"], 3, oom=True) == {"a": (3, 2)}
    assert retry_plan(slots, ["a"], 3, oom=False) == {}
    assert backoff_cap(1) is None
