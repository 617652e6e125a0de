"""Which group of samples steps next: fair shares of device time across shape groups.

Samples of different latent shapes cannot share a UNet forward, so the engine holds one group
per shape and the worker steps one group at a time. Stepping every group in turn would make a
64x64 job wait for each step of a 512x512 one; stepping them FIFO would make it wait for the whole
job. Instead each group is charged the cost of its steps (UNet rows x latent pixels, which tracks
their time) and the group whose next step would finish first in that virtual time runs next:
finish-time fair queuing, the continuous form of deficit round robin (Shreedhar & Varghese 1996).
A cheap group therefore waits at most about one step of an expensive one, and over time every
busy group gets an equal share of the device.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

Group = TypeVar("Group", bound=Hashable)


@dataclass
class FairStepper:
    """Virtual time per group; pure (no torch, no Redis), so it is tested in milliseconds."""

    virtual: dict[Hashable, float] = field(default_factory=dict)

    def choose(self, costs: Mapping[Group, float]) -> Group:
        """The group to step now, given each pending group's step cost; charges it."""
        if not costs:
            raise ValueError("no group to step")
        self.virtual = {key: time for key, time in self.virtual.items() if key in costs}
        floor = min(self.virtual.values(), default=0.0)
        for key in costs:  # a new group starts level with the others: no credit for idling
            self.virtual.setdefault(key, floor)
        key = min(costs, key=lambda k: (self.virtual[k] + costs[k], str(k)))
        self.virtual[key] += costs[key]
        low = min(self.virtual.values())
        self.virtual = {k: time - low for k, time in self.virtual.items()}  # keep numbers small
        return key
