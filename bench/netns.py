"""Many hosts on one machine: a network namespace per host, all wired to one bridge.

`NetnsLab` builds a private layer-2 network out of Linux network namespaces: one "switch"
namespace holds a bridge, and every host is a namespace with one veth (`eth0`) whose other end is
a port of that bridge. Nothing is created in the caller's namespace (the veth pairs are made in
the switch namespace with their host end placed straight into the host's), so every address of
the chosen /24 exists inside the namespaces only and no packet can leave the machine; deleting
the namespaces removes every interface and the bridge with them.

Processes run in a host with `ip netns exec` (which execs, so the child's PID is the process's).
A host can be killed as a whole (SIGKILL to every PID in its namespace), have its link set down,
or be cut off at the switch (its bridge port taken out of the bridge: frames are dropped without
any error on the host, as in a real partition) and healed.

Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN for the netns mounts); `unsupported_reason()` says
why a machine cannot do it. Names carry the creating PID, so `sweep_stale()` can remove what a
killed run left behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "ldmmh"
NAME = re.compile(rf"^{PREFIX}-(\d+)-[0-9a-f]+-")


def ip(*args: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """Run `ip ARGS...`; CalledProcessError (with stderr) when it fails and `check`."""
    result = subprocess.run(
        ["ip", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise subprocess.CalledProcessError(
            result.returncode, result.args, result.stdout, result.stderr
        )
    return result


def unsupported_reason() -> str | None:
    """Why this machine cannot build a lab (None: it can): not root, no `ip`, or the kernel or a
    container refuses network namespaces, veth pairs or bridges."""
    if os.geteuid() != 0:
        return "needs root: network namespaces, veth pairs and a bridge (ip netns add)"
    if shutil.which("ip") is None:
        return "iproute2 is not installed (apt-get install -y iproute2)"
    probe = f"{PREFIX}-{os.getpid()}-{uuid.uuid4().hex[:6]}-probe"
    try:
        added = ip("netns", "add", probe, check=False)
        if added.returncode != 0:
            return f"`ip netns add` is not permitted here: {added.stderr.strip()}"
        for args in (
            ("-n", probe, "link", "add", "br0", "type", "bridge"),
            ("-n", probe, "link", "add", "va", "type", "veth", "peer", "name", "vb"),
            ("-n", probe, "link", "set", "va", "master", "br0"),
        ):
            step = ip(*args, check=False)
            if step.returncode != 0:
                return f"`ip {' '.join(args)}` failed: {step.stderr.strip()}"
        probed = subprocess.run(["ip", "netns", "exec", probe, "true"], capture_output=True,
                                text=True, timeout=20, check=False)  # fmt: skip
        if probed.returncode != 0:
            return f"`ip netns exec` failed: {probed.stderr.strip()}"
        return None
    except (OSError, subprocess.SubprocessError) as exc:
        return f"network namespaces unavailable: {exc}"
    finally:
        ip("netns", "del", probe, check=False)


def namespaces() -> list[str]:
    """Names of every network namespace `ip netns` knows."""
    out = ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def pids_in(namespace: str) -> list[int]:
    """PIDs of the processes inside a namespace."""
    out = ip("netns", "pids", namespace, check=False).stdout
    return [int(word) for word in out.split() if word.isdigit()]


def kill_all_in(namespace: str) -> list[int]:
    """SIGKILL every process in a namespace (a host losing power); returns their PIDs."""
    pids = pids_in(namespace)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale() -> list[str]:
    """Delete lab namespaces whose creating process is gone (a run killed before its cleanup)."""
    removed = []
    for name in namespaces():
        match = NAME.match(name)
        if match and not _pid_alive(int(match.group(1))):
            kill_all_in(name)
            ip("netns", "del", name, check=False)
            removed.append(name)
    return removed


@dataclass
class Host:
    """One namespace: its name in the lab, its namespace, address and switch port."""

    name: str
    namespace: str
    address: str
    port: str  # the bridge-side veth, in the switch namespace
    processes: list[tuple[str, subprocess.Popen[bytes], Path]] = field(default_factory=list)


class NetnsLab:
    """Hosts on a private /24 behind one bridge, all inside network namespaces.

    `subnet` is the /24's first three octets; a host's address is `subnet.<octet>`. Use as a
    context manager, or call `destroy()` (idempotent, also after a partial `create()`).
    """

    def __init__(self, workdir: Path, subnet: str = "10.77.13") -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.subnet = subnet
        self.run_id = f"{PREFIX}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.switch = f"{self.run_id}-switch"
        self.hosts: dict[str, Host] = {}
        self.created: list[str] = []  # namespaces, in creation order
        self.destroyed = False

    def __enter__(self) -> NetnsLab:
        self.create()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.destroy()

    # --- topology --------------------------------------------------------------------------------

    def create(self) -> None:
        """The switch namespace with its bridge (no address: it only forwards frames)."""
        sweep_stale()
        self._add_namespace(self.switch)
        ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        ip("-n", self.switch, "link", "set", "br0", "up")

    def add_host(self, name: str, octet: int) -> Host:
        """A namespace `name` with loopback and `eth0` = subnet.octet/24 on the bridge."""
        assert name not in self.hosts, name
        assert len(f"p-{name}") <= 15, "interface names are at most 15 characters"
        namespace = f"{self.run_id}-{name}"
        self._add_namespace(namespace)
        port = f"p-{name}"
        ip("-n", self.switch, "link", "add", port, "type", "veth",
           "peer", "name", "eth0", "netns", namespace)  # fmt: skip
        ip("-n", self.switch, "link", "set", port, "master", "br0")
        ip("-n", self.switch, "link", "set", port, "up")
        address = f"{self.subnet}.{octet}"
        ip("-n", namespace, "addr", "add", f"{address}/24", "dev", "eth0")
        ip("-n", namespace, "link", "set", "lo", "up")
        ip("-n", namespace, "link", "set", "eth0", "up")
        host = Host(name, namespace, address, port)
        self.hosts[name] = host
        return host

    def _add_namespace(self, namespace: str) -> None:
        ip("netns", "add", namespace)
        self.created.append(namespace)

    # --- processes -------------------------------------------------------------------------------

    def spawn(self, host: Host, name: str, argv: Sequence[str], env: Mapping[str, str],
              cwd: Path) -> subprocess.Popen[bytes]:  # fmt: skip
        """Start `argv` inside the host; stdout and stderr go to <workdir>/<host>-<name>.log."""
        log_path = self.workdir / f"{host.name}-{name}.log"
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                ["ip", "netns", "exec", host.namespace, *argv], cwd=cwd, env=dict(env),
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        host.processes.append((name, process, log_path))
        return process

    def run(self, host: Host, argv: Sequence[str], env: Mapping[str, str], cwd: Path,
            timeout: float) -> subprocess.CompletedProcess[str]:  # fmt: skip
        """Run `argv` inside the host to completion and capture its output."""
        return subprocess.run(
            ["ip", "netns", "exec", host.namespace, *argv], cwd=cwd, env=dict(env),
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip

    def kill_host(self, host: Host) -> list[int]:
        """SIGKILL every process of the host (all at once, as a power loss) and reap ours."""
        pids = kill_all_in(host.namespace)
        for _, process, _ in host.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
        return pids

    # --- faults ----------------------------------------------------------------------------------

    def set_link(self, host: Host, up: bool) -> None:
        """The host's own `eth0` up or down (inside its namespace)."""
        ip("-n", host.namespace, "link", "set", "eth0", "up" if up else "down")

    def cut(self, host: Host) -> None:
        """Partition: take the host's port out of the bridge. The host keeps its link and
        addresses; every frame to or from it is dropped silently (no error, no RST)."""
        ip("-n", self.switch, "link", "set", host.port, "nomaster")

    def heal(self, host: Host) -> None:
        """End a partition: the port rejoins the bridge (forwarding at once: STP is off)."""
        ip("-n", self.switch, "link", "set", host.port, "master", "br0")
        ip("-n", self.switch, "link", "set", host.port, "up")

    # --- cleanup ---------------------------------------------------------------------------------

    def destroy(self) -> list[str]:
        """Kill every process in every lab namespace, then delete the namespaces (which removes
        the veths and the bridge). Idempotent; returns what it could not remove."""
        problems = []
        for namespace in reversed(self.created):
            kill_all_in(namespace)
        for host in self.hosts.values():
            for name, process, _ in host.processes:
                if process.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    problems.append(f"{host.name}/{name} pid {process.pid} did not exit")
        deadline = time.monotonic() + 10
        for namespace in reversed(self.created):
            while pids_in(namespace) and time.monotonic() < deadline:
                kill_all_in(namespace)
                time.sleep(0.1)
            result = ip("netns", "del", namespace, check=False)
            if result.returncode != 0 and namespace in namespaces():
                problems.append(f"netns {namespace}: {result.stderr.strip()}")
        self.destroyed = True
        return problems

    def leftovers(self) -> list[str]:
        """Lab namespaces of this run that still exist (empty after a clean destroy)."""
        return [name for name in namespaces() if name.startswith(self.run_id)]
