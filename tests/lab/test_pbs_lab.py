"""A mixed federation in the one-machine lab: domain c on OpenPBS beside the Slurm domain b
(inventories/lab-pbs), trading both ways with the demo's checks.

Real parts throughout: nspawn hosts, SSH, site.yml (OpenPBS server, scheduler, datastore and
MoMs from this machine's OpenPBS build; Slurm and munge for b), the brokers as systemd services,
UML VMs of the pbs-node and node images. OpenPBS is built from its source tarball
(``VIOCLUSTER_VENDOR``, default ``../shared/vendor``; built once and cached by the tarball's
hash): without it the module skips, saying why. Each phase's time is printed at the end.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from broker.lab import cli as labcli
from broker.lab import hosts as labhosts
from broker.lab import pbs_build, topology
from broker.lab.rootfs import ensure_rootfs

import test_lab  # tests/lab: run_site

REPO = Path(__file__).resolve().parents[2]
INVENTORY = REPO / "inventories" / "lab-pbs"

pytestmark = [pytest.mark.lab, pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(2400)]


@pytest.fixture(scope="module")
def pbs_site(as_root: None, request: pytest.FixtureRequest,
             tmp_path_factory: pytest.TempPathFactory):
    try:
        pbs_build.find_source()
    except pbs_build.PbsBuildError as exc:
        pytest.skip(f"the PBS domain needs OpenPBS built from its source: {exc}")
    if labhosts.Plan.load(topology.STATE_DIR) is not None:
        pytest.fail(f"a lab is already up (state in {topology.STATE_DIR}); `viocluster lab down`")
    times: dict[str, float] = {}
    tmp = tmp_path_factory.mktemp("lab-pbs")
    started = time.monotonic()
    ensure_rootfs()
    times["rootfs"] = time.monotonic() - started
    started = time.monotonic()
    try:
        labcli.up(INVENTORY)
        times["lab up"] = time.monotonic() - started
        plan = labhosts.Plan.load(topology.STATE_DIR)
        assert plan is not None
        started = time.monotonic()
        test_lab.run_site(tmp, "pbs-first", inventory=INVENTORY)
        times["site.yml"] = time.monotonic() - started
        yield {"plan": plan, "times": times}
    finally:
        started = time.monotonic()
        saved = labhosts.Plan.load(topology.STATE_DIR)
        labcli.down()
        times["lab down"] = time.monotonic() - started
        capture = request.config.pluginmanager.getplugin("capturemanager")
        with capture.global_and_fixture_disabled():
            print()
            for phase, secs in times.items():
                print(f"lab-pbs phase {phase:28} {secs:7.1f} s")
        if saved is not None:
            left = labhosts.leftovers(saved)
            assert not left, f"lab down left behind: {left}"


@pytest.mark.parametrize("borrower, lender", [("c", "b"), ("b", "c")],
                         ids=["pbs-borrows-from-slurm", "slurm-borrows-from-pbs"])
def test_pbs_and_slurm_domains_trade_both_ways(pbs_site, tmp_path, borrower: str,
                                               lender: str) -> None:
    """The demo's trade between the PBS domain c and the Slurm domain b, each way: the
    borrower's job runs on the VM booted on the lender's host (a pbs-node VM whose MoM joins c's
    PBS server, or a node VM whose slurmd joins b's Slurm), and the lender's reclaim requeues the
    job on it, which then finishes on the borrower's own nodes."""
    from broker.lab.demo import DemoSettings, demo

    started = time.monotonic()
    result = demo(DemoSettings(inventory=INVENTORY, out=tmp_path / "demo", run_site=False,
                               borrower=borrower, lender=lender),
                  up=labcli.up, build_wheels=labcli.build_wheels)
    pbs_site["times"][f"demo {borrower} borrows from {lender}"] = time.monotonic() - started
    assert result["schedulers"] == {"b": "slurm", "c": "pbs"}
    assert result["problems"] == []
    assert result["jobs_on_borrowed"], result
    assert result["requeued"] and set(result["requeued"].values()) <= {
        f"{borrower}-node1", f"{borrower}-node2"}
    for key, secs in result["figures"].items():
        print(f"demo {borrower} from {lender}: {key:24} {secs if secs is None else round(secs, 2)}")
