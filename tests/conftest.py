"""Shared test settings.

Real workload traces are read in place from ``VIOCLUSTER_TRACES`` (default: ``../shared/traces``
beside the checkout); tests that need them skip, saying why, where they are absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_HOST_BEFORE = pytest.StashKey[dict]()

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



# This machine as the tests found it --------------------------------------------------------
# No test may leave /dev/net/tun, the sysctls or /etc changed: a fresh machine has none of an
# earlier run's changes. /dev is checked after each module (no fixture has a reason to change
# it, so the module is named); /etc and sysctls once every fixture, session-wide ones included
# (accounts held for a whole session), is torn down.

def pytest_sessionstart(session: pytest.Session) -> None:
    from hoststate import snapshot

    session.config.stash[_HOST_BEFORE] = snapshot()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    from hoststate import differences, snapshot

    before = session.config.stash.get(_HOST_BEFORE, None)
    if before is None:
        return
    changed = differences(before, snapshot())
    if changed:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        text = "the tests left this machine changed:\n  " + "\n  ".join(changed)
        if reporter is not None:
            reporter.write_sep("=", "machine changed", red=True)
            reporter.write_line(text)
        else:
            print(text)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="module", autouse=True)
def dev_left_as_found(request: pytest.FixtureRequest):
    """Each test module leaves /dev/net/tun (and the other device nodes checked) as it found it."""
    from hoststate import differences, snapshot_dev

    before = snapshot_dev()
    yield
    changed = differences(before, snapshot_dev())
    if changed:
        pytest.fail(f"{request.node.nodeid} left this machine's /dev changed:\n  "
                    + "\n  ".join(changed), pytrace=False)
