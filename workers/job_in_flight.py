"""One claimed job as the loop holds it: rq claim, request, its samples in the engine and done.

The batching policy's `Slot` is derived from this record on demand, never kept beside it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from jobs.record import Usage
from jobs.schema import ResolvedRequest
from workers.batching import Slot, is_complete, job_progress
from workers.rq_bridge import Claim

if TYPE_CHECKING:
    from PIL import Image

    from model.engine import Sample, SampleSpec


@dataclass
class JobInFlight:
    """Everything the worker holds for one claimed job in this attempt."""

    claim: Claim
    request: ResolvedRequest
    owner: str = ""
    started: float | None = None  # monotonic time its first sample entered the engine
    timeout: float = 600.0  # from `started`: waiting for room does not count
    group: int | None = None  # isolation group after a batch failure; None = shares freely
    cap: int | None = None  # most samples in the engine at once (OOM backoff)
    active: dict[int, Sample] = field(default_factory=dict)  # image index -> denoising sample
    finished: dict[int, Sample] = field(default_factory=dict)  # image index -> finished sample
    # An image task's inputs, decoded and sized for the job: "init_image" (RGB), "mask_image" (L)
    inputs: dict[str, Image.Image] = field(default_factory=dict)
    usage: Usage | None = None  # tokens, once its images are decoded (workers/retire.py)

    @property
    def job_id(self) -> str:
        return self.claim.job.id

    @property
    def slot(self) -> Slot:
        """The batching policy's view of this job, computed from the samples held."""
        request = self.request
        return Slot(
            job_id=self.job_id,
            width=request.width,
            height=request.height,
            steps=request.steps,
            samples=request.num_images,
            owner=self.owner,
            admitted=len(self.active) + len(self.finished),
            active=len(self.active),
            done=len(self.finished),
            group=self.group,
            cap=self.cap,
        )

    def sample_spec(self, index: int) -> SampleSpec:
        """The engine's spec of image `index` (its seed is seed + index), with the job's inputs."""
        from model.engine import SampleSpec

        r = self.request
        return SampleSpec(
            prompt=r.prompt, negative_prompt=r.negative_prompt, seed=r.seed + index,
            width=r.width, height=r.height, steps=r.steps, guidance_scale=r.guidance_scale,
            sampler=r.sampler.value, eta=r.eta, karras=r.karras, strength=r.strength,
            init_image=self.inputs.get("init_image"), mask_image=self.inputs.get("mask_image"),
            keep_unmasked=r.keep_unmasked, low_res_image=self.inputs.get("image"),
            noise_level=r.noise_level, class_label=r.class_label,
        )  # fmt: skip

    @property
    def complete(self) -> bool:
        """Every image finished denoising: the job can be decoded and retired."""
        return is_complete(self.slot)

    def progress(self) -> tuple[int, int]:
        """(step, total) in grid steps, averaged over the job's images."""
        return job_progress(self.slot, [sample.steps_done for sample in self.active.values()])

    def running_seconds(self) -> float:
        """Seconds since its first sample entered the engine (0 while waiting)."""
        return time.monotonic() - self.started if self.started is not None else 0.0

    def overdue(self, now: float) -> bool:
        """Running longer than its timeout (a job still waiting for room is never overdue)."""
        return self.started is not None and now - self.started > self.timeout

    def restart(self, group: int | None, cap: int | None) -> None:
        """Forget this attempt's samples and rerun the job in an isolation group."""
        self.active.clear()
        self.finished.clear()
        self.group, self.cap = group, cap
