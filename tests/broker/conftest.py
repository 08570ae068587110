"""Fixtures of the broker tests: a real Slurm in a namespace, certificates, free ports."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

from tests.broker import slurm_cluster


@pytest.fixture(scope="session")
def slurm():
    """munged + slurmctld + slurmd n1, n2 in a network namespace made for this session."""
    if os.geteuid() != 0:
        pytest.skip("needs root: network namespace and Slurm daemons")
    missing = [t for t in ("munged", "slurmctld", "slurmd", "squeue", "nsenter") if not shutil.which(t)]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (see packaging/apt-packages.txt)")
    cluster = slurm_cluster.start()
    try:
        yield cluster
    finally:
        slurm_cluster.stop(cluster)


@pytest.fixture
def clean_queue(slurm):
    """Cancel every job and resume every node the test left behind."""
    yield slurm
    slurm.run("scancel", "--full", "-u", "root", check=False)
    for node in ("n1", "n2"):
        slurm.run("scontrol", "update", f"nodename={node}", "state=resume", check=False)
    slurm.wait("empty queue", lambda: not slurm.run("squeue", "-h").strip(), 30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def vbk_tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("vbk")
