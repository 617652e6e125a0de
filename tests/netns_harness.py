"""Namespace hosts for the multi-host tests: skip reasons and a cluster fixture that always
cleans up (bench/netns.py builds the network, bench/multihost_cluster.py runs the hosts)."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO


@functools.cache
def lab_unsupported() -> str | None:
    """Why this machine cannot host the lab (None: it can): not root, no iproute2, network
    namespaces refused (an unprivileged container or CI runner), or no redis-server."""
    from bench.netns import unsupported_reason
    from tests.conftest import redis_server_binary

    reason = unsupported_reason()
    if reason is None and redis_server_binary() is None:
        reason = "redis-server is not installed (apt-get install redis-server)"
    return reason


def skip_without_lab() -> None:
    """Skip the calling test (or fixture) with the reason, when the lab cannot be built."""
    reason = lab_unsupported()
    if reason:
        pytest.skip(f"multi-host lab unavailable: {reason}")


def tail(cluster: object, *names: tuple[str, str], chars: int = 3000) -> str:
    """The end of some hosts' logs, for an assertion message."""
    parts = []
    for host, process in names:
        text = cluster.log(host, process)  # type: ignore[attr-defined]
        parts.append(f"--- {host}/{process} ---\n{text[-chars:]}")
    return "\n".join(parts)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """Redis, API and client hosts (workers are started by each test), torn down afterwards:
    every process in the lab's namespaces SIGKILLed and the namespaces, veths and bridge
    deleted, also when the test or the start fails. Stale labs of killed runs are swept first."""
    skip_without_lab()
    pytest.importorskip("httpx")
    from bench.multihost_cluster import Cluster

    model = REPO / "models" / "default"
    if not (model / "model_index.json").exists():
        pytest.skip("the shipped model models/default is missing")
    workdir: Path = tmp_path_factory.mktemp("multihost")
    lab = Cluster(workdir, model)
    try:
        lab.start()
        yield lab
    finally:
        problems = lab.destroy()
        leftovers = lab.lab.leftovers()
        assert not problems and not leftovers, f"cleanup: {problems} {leftovers}"
