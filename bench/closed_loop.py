"""Closed-loop HTTP clients for bench.load: each loops {submit; poll until terminal; fetch image}.

Also the request every client sends (`Params`, `PROMPTS`), shared with the direct run.
"""

from __future__ import annotations

import contextlib
import datetime
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

TERMINAL = {"succeeded", "failed", "canceled", "expired"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Captions in the style of the default model's shapes dataset; request i uses PROMPTS[i % len].
PROMPTS = [
    "a large red circle on the left, on a white background",
    "a small blue square at the top, on a black background",
    "a green triangle in the center, on a white background",
    "a yellow star at the bottom right, on a gray background",
    "a purple circle above an orange square, on a white background",
    "a cyan triangle on the right, on a black background",
    "two red squares, on a white background",
    "a large white circle in the center, on a blue background",
]


@dataclass
class Params:
    """The request every client sends (prompt and seed vary per request)."""

    width: int
    height: int
    steps: int
    guidance: float
    sampler: str

    def body(self, index: int) -> dict[str, object]:
        return {"prompt": PROMPTS[index % len(PROMPTS)], "seed": 1000 + index,
                "width": self.width, "height": self.height, "steps": self.steps,
                "guidance_scale": self.guidance, "sampler": self.sampler,
                "num_images": 1, "output_format": "png"}  # fmt: skip


@dataclass
class Outcome:
    client: int
    submitted: float
    done: float
    ok: bool
    error: str = ""
    timings: dict[str, float] = field(default_factory=dict)  # the job's server-side timings


def poll_delay(poll: str, view: dict[str, object]) -> float:
    """Seconds to wait before the next GET: a fixed interval, or with `--poll eta` the job's
    remaining time extrapolated from its progress and start time (0.05..1 s; 0.25 s until the
    job has progress)."""
    if poll != "eta":
        return float(poll)
    progress = view.get("progress") or {}
    step, total = progress.get("step") or 0, progress.get("total") or 0  # type: ignore[union-attr]
    started = view.get("started_at")
    if view.get("status") != "running" or not step or not total or not started:
        return 0.25
    elapsed = time.time() - datetime.datetime.fromisoformat(str(started)).timestamp()
    remaining = elapsed * (total - step) / step
    return min(max(remaining, 0.05), 1.0)


def submit(
    client: httpx.Client, body: dict[str, object], deadline: float,
    on_refused: Callable[[], None] | None = None,
) -> httpx.Response | None:  # fmt: skip
    """POST /v1/txt2img. With `on_refused`, a 429/503 is reported to it and the submission is
    retried after the response's Retry-After (as a polite client does); None if the deadline
    passes while backing off."""
    while True:
        response = client.post("/v1/txt2img", json=body)
        if on_refused is None or response.status_code not in (429, 503):
            return response
        on_refused()
        try:
            wait = float(response.headers.get("Retry-After", "1"))
        except ValueError:
            wait = 1.0
        if time.monotonic() + wait >= deadline:
            time.sleep(max(0.0, deadline - time.monotonic()))
            return None
        time.sleep(wait)


def one_request(
    client: httpx.Client, index: int, params: Params, poll: str, deadline: float,
    on_refused: Callable[[], None] | None = None,
) -> tuple[bool, str, str | None, dict[str, float]]:  # fmt: skip
    """Submit (backing off on 429/503 when `on_refused` is given), poll until terminal, fetch
    image 0.

    Returns (ok, error, job id if cut off at the deadline, the job's timings); ok False with no
    error and no job id: the deadline passed while backing off."""
    response = submit(client, params.body(index), deadline, on_refused)
    if response is None:
        return False, "", None, {}
    if response.status_code != 202:
        return False, f"submit {response.status_code}", None, {}
    view = response.json()
    job_id = view["id"]
    while True:
        if time.monotonic() >= deadline:
            return False, "", job_id, {}
        time.sleep(poll_delay(poll, view))
        job = client.get(f"/v1/jobs/{job_id}")
        if job.status_code != 200:
            return False, f"poll {job.status_code}", None, {}
        view = job.json()
        if view["status"] in TERMINAL:
            break
    timings = {k: float(v) for k, v in (view.get("timings") or {}).items() if v is not None}
    if view["status"] != "succeeded":
        return False, f"job {view['status']}", None, timings
    image = client.get(f"/v1/jobs/{job_id}/images/0")
    if image.status_code != 200 or not image.content.startswith(PNG_MAGIC):
        return False, f"image {image.status_code}", None, timings
    return True, "", None, timings


Probe = Callable[[], dict[str, float]]


@dataclass
class Drive:
    """What one closed-loop run returns."""

    outcomes: list[Outcome]
    unfinished: int  # requests cut off at the deadline (canceled)
    start: float
    refused: int = 0  # 429/503 answers backed off from (with `backoff`)
    # (monotonic time, probe()) when every client had finished its first request, and at the end
    steady: tuple[float, dict[str, float]] | None = None
    end: tuple[float, dict[str, float]] | None = None


def drive(url: str, clients: int, params: Params, poll: str, seconds: float, requests: int,
          first_index: int = 0, probe: Probe | None = None,
          headers: dict[str, str] | None = None, backoff: bool = False) -> Drive:  # fmt: skip
    """Run the client threads until the time (or request) budget is spent; `probe` (the worker's
    metrics) is sampled when the steady state begins and at the deadline. `headers` go with
    every request (e.g. Authorization); with `backoff` a 429/503 on submit waits its Retry-After
    and retries instead of counting as a failure (counted in `Drive.refused`)."""
    counter = iter(range(first_index, first_index + (requests or 10**9)))
    lock = threading.Lock()
    result = Drive([], 0, time.monotonic())
    unfinished: list[str] = []
    first_done: set[int] = set()
    deadline = result.start + seconds

    def sample() -> tuple[float, dict[str, float]] | None:
        if probe is None:
            return None
        with contextlib.suppress(httpx.HTTPError):
            return time.monotonic(), probe()
        return None

    def at_deadline() -> None:
        result.end = sample()

    def refused() -> None:
        with lock:
            result.refused += 1

    def loop(client_id: int) -> None:
        with httpx.Client(base_url=url, timeout=30, headers=headers) as client:
            while time.monotonic() < deadline:
                with lock:
                    index = next(counter, None)
                if index is None:
                    return
                submitted = time.monotonic()
                try:
                    ok, error, pending, timings = one_request(
                        client, index, params, poll, deadline, refused if backoff else None
                    )
                except httpx.HTTPError as exc:
                    ok, error, pending, timings = False, type(exc).__name__, None, {}
                done = time.monotonic()
                if not ok and not error and pending is None:
                    return  # the deadline passed while backing off: nothing was submitted
                with lock:
                    if pending is not None:
                        unfinished.append(pending)
                    else:
                        result.outcomes.append(
                            Outcome(client_id, submitted, done, ok, error, timings)
                        )
                    now_steady = ok and client_id not in first_done
                    if now_steady:
                        first_done.add(client_id)
                        now_steady = len(first_done) == clients
                if now_steady:
                    result.steady = sample()
                if error:
                    time.sleep(0.2)  # do not hammer a failing service

    timer = threading.Timer(seconds, at_deadline)
    timer.daemon = True
    timer.start()
    threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + 120)
    timer.cancel()
    if result.end is None:  # --requests finished before the deadline
        result.end = sample()
    with httpx.Client(base_url=url, timeout=10, headers=headers) as client:  # free the worker
        for job_id in unfinished:
            with contextlib.suppress(httpx.HTTPError):
                client.delete(f"/v1/jobs/{job_id}")
    result.unfinished = len(unfinished)
    return result
