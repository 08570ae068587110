"""Fixtures of the broker tests: a real Slurm in a namespace, certificates, free ports."""

from __future__ import annotations

import os
import shutil

import pytest

import broker_slurm as slurm_cluster
from broker_slurm import reset


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


@pytest.fixture(scope="session")
def slurm_c():
    """Domain C's Slurm, for trades among three domains."""
    yield from _cluster("slurmc")


@pytest.fixture
def clean_queue(slurm):
    yield slurm
    reset(slurm)


