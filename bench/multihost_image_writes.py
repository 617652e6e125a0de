"""The orchestrator's count of image writes in the multi-host lab (bench/multihost.py): a
thread subscribed to Redis keyspace notifications that counts every SET of an image key, so a
fault scenario can check that each job's images were written exactly once."""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from typing import Any


class ImageWrites(threading.Thread):
    """Counts SETs of every image key (`ldm:job:<id>:image:<n>`) via keyspace notifications."""

    def __init__(self, client: Any) -> None:
        super().__init__(name="image-writes", daemon=True)
        self.pubsub = client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.psubscribe("__keyspace@0__:ldm:job:*:image:*")
        self.counts: Counter[str] = Counter()
        self.stopped = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        while not self.stopped.is_set():
            with contextlib.suppress(Exception):
                message = self.pubsub.get_message(timeout=0.5)
                if message and message.get("data") == b"set":
                    key = message["channel"].decode().split(":", 1)[1]
                    with self.lock:
                        self.counts[key] += 1

    def per_job(self) -> dict[str, int]:
        """job id -> image writes seen (each image key counts once per SET)."""
        out: Counter[str] = Counter()
        with self.lock:
            for key, count in self.counts.items():
                out[key.split(":")[2]] += count
        return dict(out)

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=5)
        with contextlib.suppress(Exception):
            self.pubsub.close()
