"""Fixtures of the broker tests: a real Slurm in a namespace, certificates, free ports."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

from tests.broker import slurm_cluster


def _cluster(name: str):
    if os.geteuid() != 0:
        pytest.skip("needs root: network namespace and Slurm daemons")
    missing = [t for t in ("munged", "slurmctld", "slurmd", "squeue", "nsenter") if not shutil.which(t)]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (see packaging/apt-packages.txt)")
    cluster = slurm_cluster.start(name=name)
    try:
        yield cluster
    finally:
        slurm_cluster.stop(cluster)


@pytest.fixture(scope="session")
def slurm():
    """Domain A's Slurm: munged + slurmctld + slurmd n1, n2 in a namespace of its own."""
    yield from _cluster("slurma")


@pytest.fixture(scope="session")
def slurm_b():
    """Domain B's Slurm, a second independent cluster in another namespace."""
    yield from _cluster("slurmb")


def reset(cluster) -> None:
    """Cancel every job, resume drained nodes, delete dynamic ones."""
    cluster.run("scancel", "--full", "-u", "root", check=False)
    for node in ("n1", "n2"):
        if cluster.node_state(node) not in ("idle", "allocated", "mixed"):
            cluster.run("scontrol", "update", f"nodename={node}", "state=resume", check=False)
    cluster.wait("empty queue", lambda: not cluster.run("squeue", "-h").strip(), 30)


@pytest.fixture
def clean_queue(slurm):
    yield slurm
    reset(slurm)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def vbk_tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("vbk")
