"""Keep `ldm-serve up`'s processes running, as compose's `restart: unless-stopped` does.

A child that exits is started again after a delay that doubles with each quick death in a row
(1 s after one that had run for a while, then 2, 4, 8, 16 s); the fifth quick death in a row is a
crash loop, and the supervisor gives up; on exit code 2 (a configuration error) it gives up at
once. Children stop in reverse order: the worker first, so it can finish or hand back its jobs
while Redis still runs.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

FIRST_DELAY_S = 1.0
MAX_DELAY_S = 30.0
STABLE_S = 10.0  # a run this long was no crash loop: the next restart waits FIRST_DELAY_S
MAX_QUICK_DEATHS = 5
EXIT_USAGE = 2  # argparse's usage error, a worker's model path that holds no model: never retried

log = logging.getLogger("ldm-serve.up")


@dataclass
class Child:
    """One supervised process: how to start it and how long it may take to stop."""

    name: str
    start: Callable[[], subprocess.Popen[bytes]]
    stop_grace_s: float = 15.0
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    quick_deaths: int = 0  # in a row
    restart_at: float = 0.0


def restart_delay(quick_deaths: int) -> float:
    """Seconds before the next start: 1 s, doubling per quick death in a row, at most 30 s."""
    return min(MAX_DELAY_S, FIRST_DELAY_S * 2**quick_deaths)


class Supervisor:
    """Starts, restarts and stops an ordered set of children."""

    def __init__(self) -> None:
        self.children: list[Child] = []

    def add(self, child: Child, now: float) -> subprocess.Popen[bytes]:
        """Start a child now and keep it running from then on."""
        self.children.append(child)
        self.launch(child, now)
        assert child.process is not None
        return child.process

    def launch(self, child: Child, now: float) -> None:
        """Start one child now."""
        child.process = child.start()
        child.started_at = now

    def tend(self, now: float) -> Child | None:
        """Restart the children that are due; returns one that is crash-looping (give up)."""
        for child in self.children:
            if child.process is None:
                if now < child.restart_at:
                    continue
                log.info("restarting %s", child.name)
                try:
                    self.launch(child, now)
                    continue
                except OSError as exc:  # its binary is gone, say: a death at birth
                    code: int | str | None = str(exc)
                    child.started_at = now
            else:
                code = child.process.poll()
                if code is None:
                    continue
            ran = now - child.started_at
            if code == EXIT_USAGE:  # its settings are wrong: a restart would fail the same way
                log.error("%s exited with %d: its configuration is wrong (its log says why); "
                          "not restarting", child.name, code)  # fmt: skip
                return child
            child.quick_deaths = 0 if ran >= STABLE_S else child.quick_deaths + 1
            if child.quick_deaths >= MAX_QUICK_DEATHS:
                log.error(
                    "%s exited with %s %d times in a row within %.0f s of starting; giving up",
                    child.name,
                    code,
                    child.quick_deaths,
                    STABLE_S,
                )
                return child
            delay = restart_delay(child.quick_deaths)
            log.warning(
                "%s exited with %s after %.1f s; restarting it in %.0f s",
                child.name,
                code,
                ran,
                delay,
            )
            child.process, child.restart_at = None, now + delay
        return None

    def stop(self) -> None:
        """SIGTERM each running child, last started first; SIGKILL one that outlives its grace."""
        for child in reversed(self.children):
            process = child.process
            if process is None:
                continue
            if process.poll() is None:
                process.terminate()
            try:
                process.wait(timeout=child.stop_grace_s)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop; killing it", child.name)
                process.kill()
                process.wait()
