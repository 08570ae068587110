"""Fixtures of the PBS tests: a live OpenPBS domain on nspawn hosts (see pbs_domain.py)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import pbs_domain
from broker.errors import UserError
from broker.lab.pbs_build import build_for


@pytest.fixture(scope="session")
def pbs(tmp_path_factory: pytest.TempPathFactory):
    """The live domain: server, scheduler, comm, datastore and MoM ``head``, MoM ``node1``,
    and host ``vm1`` whose MoM stands in for a borrowed VM."""
    if os.geteuid() != 0:
        pytest.skip("needs root: nspawn hosts and network namespaces")
    missing = [t for t in ("systemd-nspawn", "nsenter", "ip", "debootstrap") if not shutil.which(t)]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (see packaging/apt-packages.txt)")
    try:
        build_for()
    except UserError as exc:
        pytest.skip(f"OpenPBS cannot be built here: {exc}")
    log = Path(tmp_path_factory.mktemp("pbs")) / "pbs-role.log"
    domain = pbs_domain.start(log)
    try:
        yield domain
    finally:
        left = pbs_domain.stop(domain)
        assert not left, f"the PBS test hosts left: {left}"


@pytest.fixture
def clean_queue(pbs):
    """An empty queue after the test, and no node left lent or borrowed."""
    yield pbs
    pbs.clear_queue()
    nodes = pbs.nodes()
    for name in nodes:
        if name not in ("head", "node1"):
            pbs.run("qmgr", "-c", f"delete node {name}", check=False)
    for name in ("head", "node1"):
        pbs.run("pbsnodes", "-r", "-C", "", name, check=False)
