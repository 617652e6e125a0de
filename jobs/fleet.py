"""What workers say about their models and what the API reads of their queues, in Redis: the
tasks each model's workers run, the A1111 sampler names, live workers, the oldest queued job's age.
Workers write it as they start; the API, which imports no model code, reads it."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, cast

from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer
from rq.worker_registration import get_keys as worker_keys

from jobs import keys


def rq_queue(redis: Redis, model: str) -> Queue:
    """The rq queue (JSON serializer) of a model."""
    return Queue(keys.queue_name(model), connection=redis, serializer=JSONSerializer)


class Fleet:
    """The workers' published facts and their queues' state; one instance per JobStore."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    def queue(self, model: str) -> Queue:
        return rq_queue(self.redis, model)

    def publish_tasks(self, model: str, tasks: Sequence[str]) -> None:
        """Say which tasks this model's workers run (kept a week; every worker start renews)."""
        self.redis.set(keys.model_tasks(model), ",".join(tasks), ex=7 * 24 * 3600)

    def model_tasks(self, models: Sequence[str]) -> dict[str, list[str] | None]:
        """Each model's published tasks; None where no worker has said yet."""
        values = self.redis.mget([keys.model_tasks(model) for model in models])
        return {
            model: (value.decode() if isinstance(value, bytes) else value).split(",")
            if value
            else None
            for model, value in zip(models, values, strict=True)
        }

    def publish_sampler_names(self, names: Mapping[str, str]) -> None:
        """A1111 sampler_name -> ours ("<name>" or "<name> karras"), from a worker's registry."""
        self.redis.hset(keys.sampler_names(), mapping=cast("Mapping[Any, Any]", dict(names)))

    def sampler_names(self) -> dict[str, str]:
        """What `publish_sampler_names` wrote (empty before any worker started)."""
        raw = self.redis.hgetall(keys.sampler_names())
        return {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in raw.items()
        }

    def live_workers(self, model: str) -> int:
        """rq workers listening on the model's queue whose heartbeat key has not expired."""
        registered = sorted(worker_keys(queue=self.queue(model)))
        return sum(int(alive) for alive in self._exists_each(registered)) if registered else 0

    def oldest_queued_age(self, model: str) -> float:
        """Seconds the head of the model's queue has waited (0 when empty)."""
        head = self.redis.lindex(self.queue(model).key, 0)
        if head is None:
            return 0.0
        head_id = head.decode() if isinstance(head, bytes) else str(head)
        created = self.redis.hget(keys.job(head_id), "created_at")
        return max(0.0, time.time() - float(created)) if created else 0.0

    def _exists_each(self, names: Sequence[str]) -> list[int]:
        with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.exists(name)
            return list(pipe.execute())
