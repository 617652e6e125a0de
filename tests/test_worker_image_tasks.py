"""txt2img, img2img and inpainting jobs in one worker: their samples share UNet forwards (the
batch-size metric) and each image is the one the job gives alone; lost inputs fail the job."""

from __future__ import annotations

import io
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import redis
from PIL import Image

from jobs.record import JobRecord
from jobs.schema import JobStatus, ResolvedRequest
from jobs.store import JobStore
from tests.api_harness import encode_png
from tests.conftest import RedisServer
from tests.worker_harness import WorkerProcess, done, tiny_model

__all__ = ["tiny_model"]
pytestmark = pytest.mark.slow
DB = 14
SIZE = 32


def init_image() -> Image.Image:
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    array = np.stack([x * 8, y * 8, (x + y) * 4], axis=-1).clip(0, 255).astype(np.uint8)
    return Image.fromarray(array)


def mask_image() -> Image.Image:
    array = np.zeros((SIZE, SIZE), dtype=np.uint8)
    array[:, : SIZE // 2] = 255
    return Image.fromarray(array)


JOBS = {  # name: (request fields, inputs)
    "txt2img": ({"seed": 5}, {}),
    "img2img": ({"seed": 6, "task": "img2img", "strength": 0.5},
                {"init_image": encode_png(init_image())}),
    "inpaint": ({"seed": 7, "task": "inpaint", "strength": 1.0},
                {"init_image": encode_png(init_image()), "mask_image": encode_png(mask_image())}),
}  # fmt: skip


def create(store: JobStore, fields: dict, inputs: dict[str, bytes]) -> str:
    """A queued job as the API makes it, uploads stored beside the record."""
    request = ResolvedRequest.model_validate({
        "prompt": "a red square", "width": SIZE, "height": SIZE, "steps": 8,
        "guidance_scale": 5.0, "sampler": "ddim", "model": "default", **fields,
    })  # fmt: skip
    job_id = uuid.uuid4().hex
    record = JobRecord(id=job_id, status=JobStatus.queued, owner="test", request=request,
                       created_at=time.time(), progress_total=request.steps)  # fmt: skip
    store.create(record, inputs=inputs)
    return job_id


def pixels(store: JobStore, job_id: str) -> np.ndarray:
    record = done(store, job_id, timeout=120)
    assert record.status == JobStatus.succeeded, record
    data = store.get_image(job_id, 0)
    assert data is not None
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int16)


def test_three_tasks_share_forwards_and_match_their_solo_images(
    redis_server: RedisServer, tiny_model: Path, tmp_path: Path
) -> None:
    url = redis_server.fresh_db(DB)
    store = JobStore(redis.Redis.from_url(url), result_ttl=300, job_timeout=120)
    together = {name: create(store, *job) for name, job in JOBS.items()}  # queued before start
    worker = WorkerProcess(url, tiny_model, tmp_path, {"LDM_MAX_BATCH": "8"}).start()
    try:
        mixed = {name: pixels(store, job_id) for name, job_id in together.items()}
        metrics = worker.metrics()
        forwards = metrics['ldm_worker_batch_size_count{model="default"}']
        samples = metrics['ldm_worker_batch_size_sum{model="default"}']
        # 8 + 4 + 8 sample-steps; shared forwards make fewer forwards than that
        assert samples == 20 and forwards < samples, metrics
        for task in JOBS:  # images are counted by task
            key = f'ldm_worker_images_generated_total{{model="default",task="{task}"}}'
            assert metrics[key] == 1, metrics
        alone = {name: pixels(store, create(store, *job)) for name, job in JOBS.items()}
    finally:
        worker.stop()
    for name in JOBS:
        assert np.abs(mixed[name] - alone[name]).max() == 0, name
    assert np.abs(mixed["img2img"] - mixed["txt2img"]).mean() > 1  # different tasks, images


def test_a_job_whose_inputs_expired_fails_with_a_clear_reason(
    redis_server: RedisServer, tiny_model: Path, tmp_path: Path
) -> None:
    url = redis_server.fresh_db(DB)
    client = redis.Redis.from_url(url)
    store = JobStore(client, result_ttl=300, job_timeout=120)
    job_id = create(store, *JOBS["img2img"])
    client.delete(f"ldm:job:{job_id}:input:init_image")  # as if its TTL ran out
    worker = WorkerProcess(url, tiny_model, tmp_path, {}).start()
    try:
        record = done(store, job_id, timeout=60)
        after = create(store, *JOBS["txt2img"])  # the worker lives on
        assert done(store, after, timeout=60).status == JobStatus.succeeded
    finally:
        worker.stop()
    assert record.status == JobStatus.failed and record.error is not None
    assert record.error.type == "invalid-input" and "init_image" in record.error.message


def test_keep_unmasked_returns_the_init_images_pixels_outside_the_mask(
    redis_server: RedisServer, tiny_model: Path, tmp_path: Path
) -> None:
    """The API's inpainting default: outside the mask the result is the init image, exactly."""
    url = redis_server.fresh_db(DB)
    store = JobStore(redis.Redis.from_url(url), result_ttl=300, job_timeout=120)
    fields, inputs = JOBS["inpaint"]
    kept = create(store, {**fields, "keep_unmasked": True}, inputs)
    decoded = create(store, fields, inputs)
    worker = WorkerProcess(url, tiny_model, tmp_path, {}).start()
    try:
        kept_image, decoded_image = pixels(store, kept), pixels(store, decoded)
    finally:
        worker.stop()
    init = np.asarray(init_image()).astype(np.int16)
    half = SIZE // 2
    assert np.array_equal(kept_image[:, half:], init[:, half:])  # unmasked: the init image
    assert np.array_equal(kept_image[:, :half], decoded_image[:, :half])  # masked: generated
    assert np.abs(decoded_image[:, half:] - init[:, half:]).max() > 0  # a VAE round trip
