"""Shared test settings.

Real workload traces are read in place from ``VIOCLUSTER_TRACES`` (default: ``../shared/traces``
beside the checkout); tests that need them skip, saying why, where they are absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def traces_dir() -> Path:
    return Path(os.environ.get("VIOCLUSTER_TRACES", REPO.parent / "shared" / "traces"))


@pytest.fixture(scope="session")
def traces() -> Path:
    """The directory holding CTC-SP2.swf.gz and OSC-Clust.swf.gz, or skip."""
    path = traces_dir()
    needed = ("CTC-SP2.swf.gz", "OSC-Clust.swf.gz")
    absent = [name for name in needed if not (path / name).is_file()]
    if absent:
        pytest.skip(f"real traces {', '.join(absent)} not in {path}; set VIOCLUSTER_TRACES")
    return path


@pytest.fixture(scope="session")
def as_root() -> None:
    """Skip unless running as root (namespaces, TAPs, UML and nspawn need it)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: network namespaces, TAP devices and nspawn hosts")


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="module", autouse=True)
def host_left_as_found(request: pytest.FixtureRequest):
    """Each test module leaves this machine's /dev/net/tun, sysctls and /etc as it found them
    (removing what it added is not enough if it changed what was there)."""
    from hoststate import differences, snapshot

    before = snapshot()
    yield
    changed = differences(before, snapshot())
    if changed:
        pytest.fail(f"{request.node.nodeid} left this machine changed:\n  " + "\n  ".join(changed),
                    pytrace=False)
