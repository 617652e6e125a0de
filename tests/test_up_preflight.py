"""`ldm-serve up` refusing what would fail anyway, at once and in one line (an API or metrics port
in use, a model path that holds no model), and its supervisor's restart policy."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from cli.supervise import MAX_QUICK_DEATHS, Child, Supervisor, restart_delay
from tests.conftest import free_port
from tests.test_cli import ldm_serve


def test_up_names_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
        result = ldm_serve("up", "--port", str(port), "--data-dir", str(tmp_path), env=env)
    assert result.returncode == 1
    assert f"cannot listen on http://127.0.0.1:{port}: Address already in use" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("setting", "what"),
    [("LDM_METRICS_PORT", "the worker's"), ("LDM_WEBHOOK_METRICS_PORT", "the webhook deliverer's")],
)
def test_up_names_a_metrics_port_in_use(tmp_path: Path, setting: str, what: str) -> None:
    """A second `up` on another --port: its deliverer could not bind 9102, died at each start, and
    the supervisor gave up on the whole stack after a minute of restarts."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
               "LDM_METRICS_PORT": str(free_port()), "LDM_WEBHOOK_METRICS_PORT": str(free_port()),
               setting: str(port)}  # fmt: skip
        result = ldm_serve("up", "--port", str(free_port()), "--data-dir", str(tmp_path), env=env)
    assert result.returncode == 1, result.stderr
    assert result.stderr == (f"ldm-serve up: {what} metrics port {port} is taken (Address already "
                             f"in use): set {setting} to a free port, or 0 for none; is another "
                             "`ldm-serve up` running?\n")  # fmt: skip


@pytest.mark.slow  # starts Redis, the API and a worker: seconds
def test_up_stops_at_once_naming_a_model_path_that_holds_no_model(tmp_path: Path) -> None:
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not weights")
    env = {
        **os.environ,
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "LDM_MODEL": str(junk),
        "LDM_METRICS_PORT": str(free_port()),
        "LDM_WEBHOOK_METRICS_PORT": str(free_port()),
    }
    started = time.monotonic()
    result = ldm_serve("up", "--port", str(free_port()), "--data-dir", str(tmp_path), env=env)
    assert result.returncode == 1
    assert "junk.safetensors is not a readable safetensors file" in result.stderr
    assert "worker exited with 2: its configuration is wrong" in result.stderr
    assert "restarting it in" not in result.stderr and "Traceback" not in result.stderr
    assert time.monotonic() - started < 60  # five restarts took 31 s of back-off alone


class Exits:
    """A child process that has exited with `code` (Popen's poll/terminate/wait)."""

    def __init__(self, code: int) -> None:
        self.code = code

    def poll(self) -> int:
        return self.code


def test_supervisor_restarts_with_backoff_and_gives_up_on_a_crash_loop() -> None:
    starts: list[float] = []
    supervisor = Supervisor()
    child = Child("redis", lambda: Exits(-9))  # type: ignore[arg-type, return-value]
    supervisor.add(child, now=0.0)
    now, gave_up = 100.0, None  # it ran 100 s: a crash, not a loop; restarted after 1 s
    while gave_up is None:
        gave_up = supervisor.tend(now)
        if child.process is None:
            starts.append(child.restart_at - now)
            now = child.restart_at
        else:
            now += 0.5  # each restart dies half a second in: a crash loop
    assert starts == [restart_delay(n) for n in range(MAX_QUICK_DEATHS)] == [1, 2, 4, 8, 16]
    assert gave_up is child


def test_supervisor_gives_up_at_once_on_a_configuration_error() -> None:
    """Exit code 2 (a worker whose model path holds no model, a usage error) fails the same way
    at every restart: five of them only delayed `up`'s exit by half a minute."""
    supervisor = Supervisor()
    child = Child("worker", lambda: Exits(2))  # type: ignore[arg-type, return-value]
    supervisor.add(child, now=0.0)
    assert supervisor.tend(0.5) is child
