"""`workers.tasks.txt2img` runs under a stock rq SimpleWorker (JSON serializer, no batching)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import redis
from PIL import Image
from rq import SimpleWorker
from rq.serializers import JSONSerializer

from jobs.store import JobStore
from tests.worker_harness import submit, tiny_model

__all__ = ["tiny_model"]


def test_plain_simple_worker_runs_the_task(
    redis_url: str, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LDM_MODEL", str(tiny_model))
    monkeypatch.setenv("LDM_DEVICE", "cpu")
    store = JobStore(redis.Redis.from_url(redis_url), result_ttl=60)
    job_id = submit(store, "a plain job", width=32, height=32, steps=3, num_images=2)
    worker = SimpleWorker(
        [store.queue("default")], connection=store.redis, serializer=JSONSerializer
    )
    assert worker.work(burst=True, max_jobs=1)
    record = store.get(job_id)
    assert record is not None and record.status.value == "succeeded"
    images = [store.get_image(job_id, i) for i in range(2)]
    assert all(images)
    assert "Seed: 2," in Image.open(io.BytesIO(images[1] or b"")).text["parameters"]
