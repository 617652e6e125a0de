"""Pure batching policy: admission, dequeue gating, retirement, progress, failure isolation."""

from __future__ import annotations

from dataclasses import replace

import pytest

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
from workers.fair_share import FairStepper


def slot(job_id: str, samples: int = 1, size: int = 64, **kw: object) -> Slot:
    return Slot(job_id, size, size, 10, samples, **kw)  # type: ignore[arg-type]


def test_empty_engine_admits_in_claim_order_up_to_max_batch() -> None:
    slots = [slot("a", 3), slot("b", 3), slot("c", 3)]
    assert plan_admissions(slots, 8) == [
        Admission("a", 0, 3),
        Admission("b", 0, 3),
        Admission("c", 0, 2),  # partial: a request of N images is N samples
    ]


def test_other_resolutions_join_at_once_instead_of_waiting_their_turn() -> None:
    """No head-of-line blocking: a 128 px job runs beside a 64 px batch (the stepper shares)."""
    slots = [slot("a", 2, admitted=2, active=2), slot("b", 1, size=128), slot("c", 1)]
    assert plan_admissions(slots, 8) == [Admission("b", 0, 1), Admission("c", 0, 1)]


def test_room_goes_to_owners_in_turn_fewest_in_the_engine_first() -> None:
    slots = [
        slot("a1", 2, owner="A", admitted=2, active=2),
        slot("a2", 2, owner="A"),
        slot("a3", 2, owner="A"),
        slot("b1", 1, owner="B"),
        slot("b2", 1, owner="B"),
    ]
    # B holds nothing in the engine: it goes first although A's jobs were claimed earlier,
    # and keeps the turn while it holds fewer samples than A.
    assert plan_admissions(slots, 6) == [
        Admission("b1", 0, 1),
        Admission("b2", 0, 1),
        Admission("a2", 0, 2),
    ]
    # Alone, A's backlog is admitted in claim order.
    assert plan_admissions(slots[:3], 6) == [Admission("a2", 0, 2), Admission("a3", 0, 2)]


def test_joins_running_batch_and_fills_room_only() -> None:
    slots = [slot("a", 2, admitted=2, active=2), slot("b", 4)]
    assert plan_admissions(slots, 4) == [Admission("b", 0, 2)]
    slots[1] = replace(slots[1], admitted=2, active=2)
    assert plan_admissions(slots, 4) == []
    slots[0] = replace(slots[0], active=0, done=2)
    assert plan_admissions(slots, 4) == [Admission("b", 2, 2)]


def test_isolation_groups_run_alone() -> None:
    slots = [slot("a", 1, group=1), slot("b", 1, group=2), slot("c", 1)]
    assert plan_admissions(slots, 8) == [Admission("a", 0, 1)]
    slots[0] = replace(slots[0], admitted=1, active=1)
    assert plan_admissions(slots, 8) == []  # b (another group) and c (shared) wait
    running = [slot("x", 1, admitted=1, active=1), slot("y", 1, group=3), slot("z", 1)]
    assert plan_admissions(running, 8) == []  # an isolated job waits: the engine drains for it
    running[0] = replace(running[0], active=0, done=1)
    assert plan_admissions(running, 8) == [Admission("y", 0, 1)]


def test_cap_limits_samples_of_one_job() -> None:
    slots = [slot("a", 4, cap=2)]
    assert plan_admissions(slots, 8) == [Admission("a", 0, 2)]
    slots[0] = replace(slots[0], admitted=2, active=2)
    assert plan_admissions(slots, 8) == []


def test_claims_run_one_batch_ahead_at_most() -> None:
    assert should_dequeue([], 4)
    assert not should_dequeue([], 4, draining=True)
    assert should_dequeue([slot("a", 1)], 4)  # a small lookahead lets admission choose owners
    assert not should_dequeue([slot("a", 4)], 4)  # a whole batch already waits
    running = slot("a", 2, admitted=2, active=2)
    assert should_dequeue([running], 4)
    full = [slot("a", 4, admitted=4, active=4), slot("b", 3)]
    assert should_dequeue(full, 4)  # 4 running + 3 waiting < 8
    assert not should_dequeue([*full, slot("c", 1)], 4)
    assert running_samples(full) == 4


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


def test_fair_stepper_lets_a_cheap_group_through_between_expensive_steps() -> None:
    stepper = FairStepper()
    big, small = ("512",), ("64",)
    assert stepper.choose({big: 64.0}) == big  # alone, the big group just runs
    assert stepper.choose({big: 64.0}) == big
    # A small group arrives: it runs its steps before the next expensive one...
    order = [stepper.choose({big: 64.0, small: 1.0}) for _ in range(70)]
    assert order[:10] == [small] * 10
    # ...and over time each group gets an equal share of cost (device time), not of steps.
    assert order.count(big) == 1 and order.count(small) == 69
    spent = {big: 0.0, small: 0.0}
    costs = {big: 64.0, small: 1.0}
    for _ in range(2000):
        chosen = stepper.choose(costs)
        spent[chosen] += costs[chosen]
    assert abs(spent[big] - spent[small]) <= 64.0


def test_fair_stepper_gives_a_new_group_no_credit_for_idle_time() -> None:
    stepper = FairStepper()
    for _ in range(50):
        stepper.choose({"a": 1.0})
    order = [stepper.choose({"a": 1.0, "b": 1.0}) for _ in range(10)]
    assert order.count("a") == 5 and order.count("b") == 5  # b does not get 50 steps in a row
    with pytest.raises(ValueError):
        stepper.choose({})
