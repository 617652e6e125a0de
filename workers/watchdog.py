"""In-process watchdog: a busy worker that stops making step progress exits non-zero.

Docker never restarts a container for being unhealthy and rq's death penalty cannot interrupt a
native call that never returns, so a hung worker must kill itself; its claimed jobs then stop
heartbeating and rq's registry cleanup requeues them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

EXIT_STALLED = 70  # EX_SOFTWARE


class Watchdog(threading.Thread):
    """Exits the process when `busy()` and no `touch()` happened for `window` seconds."""

    def __init__(
        self,
        window: float,
        busy: Callable[[], bool],
        exit: Callable[[int], None] = os._exit,
    ) -> None:
        super().__init__(name="ldm-watchdog", daemon=True)
        self.window = window
        self.busy = busy
        self.exit = exit
        self.last_progress = time.monotonic()
        self.stopped = threading.Event()

    def touch(self) -> None:
        """Record progress (a UNet step, a decode, an admission)."""
        self.last_progress = time.monotonic()

    def run(self) -> None:
        """Poll a few times per window; never raises."""
        period = max(0.05, min(1.0, self.window / 4))
        while not self.stopped.wait(period):
            stalled = time.monotonic() - self.last_progress
            if stalled > self.window and self.busy():
                log.critical(
                    "watchdog: no step progress for %.1fs (window %.1fs); exiting %d",
                    stalled,
                    self.window,
                    EXIT_STALLED,
                )
                logging.shutdown()
                self.exit(EXIT_STALLED)
                return

    def stop(self) -> None:
        """Stop watching (clean exit)."""
        self.stopped.set()
