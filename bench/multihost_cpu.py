"""CPU accounting for the multi-host lab (bench/multihost.py): clock ticks per process from
/proc/<pid>/stat and for the whole machine from /proc/stat, and `CpuMeter`, which splits an
interval's CPU into what the lab's namespace hosts (and the orchestrator with its children) used
and what everything else on the machine used meanwhile, in cores."""

from __future__ import annotations

import contextlib
import os
import resource
import time
from pathlib import Path
from typing import Any

from bench.netns import NetnsLab, pids_in


def _proc_cpu_ticks(pid: int) -> int:
    with contextlib.suppress(OSError, IndexError, ValueError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime (fields 14, 15)
    return 0


def _machine_ticks() -> tuple[int, int]:
    """(busy, niced) clock ticks of all CPUs since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]
    return user + nice + system + irq + softirq + steal, nice


class CpuMeter:
    """CPU used during an interval: by the lab (its namespaces' processes, the orchestrator and
    its children) and by everything else (`others`; `niced` is the nice > 0 part of the whole
    machine). In cores (1.0 = one core busy for the whole interval)."""

    def __init__(self, lab: NetnsLab) -> None:
        self.lab = lab
        self.tick = os.sysconf("SC_CLK_TCK")

    def _ours(self) -> dict[str, dict[int, int]]:
        """host -> {pid: CPU ticks} of the processes in each lab namespace."""
        return {name: {pid: _proc_cpu_ticks(pid) for pid in pids_in(host.namespace)}
                for name, host in self.lab.hosts.items()}  # fmt: skip

    def _children_seconds(self) -> float:
        """CPU of this process and its reaped children (the client runs, `ip` commands)."""
        me = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.machine0 = _machine_ticks()
        self.ours0 = self._ours()
        self.self0 = self._children_seconds()
        self.load0 = os.getloadavg()

    def stop(self) -> dict[str, Any]:
        elapsed = max(1e-6, time.monotonic() - self.t0)
        busy1, nice1 = _machine_ticks()
        ours1 = self._ours()
        hosts = {}
        for name, pids in ours1.items():
            before = self.ours0.get(name, {})
            ticks = sum(t - before.get(pid, 0) for pid, t in pids.items())
            hosts[name] = ticks / self.tick
        # the client program runs to completion inside a measurement: it shows up here
        hosts["client"] = hosts.get("client", 0.0) + self._children_seconds() - self.self0
        ours = sum(hosts.values())
        busy = (busy1 - self.machine0[0]) / self.tick
        niced = (nice1 - self.machine0[1]) / self.tick
        return {
            "elapsed_s": round(elapsed, 2),
            "busy_cores": round(busy / elapsed, 2),
            "lab_cores": round(ours / elapsed, 2),
            "others_cores": round(max(0.0, busy - ours) / elapsed, 2),
            "niced_cores": round(niced / elapsed, 2),
            "loadavg_1m_before": round(self.load0[0], 2),
            "loadavg_1m_after": round(os.getloadavg()[0], 2),
            "host_cores": {name: round(v / elapsed, 2) for name, v in hosts.items() if v > 0},
        }
