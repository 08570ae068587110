"""A mixed federation of three domains in the one-machine lab (inventories/lab-pbs): a and b on
Slurm, c on OpenPBS, each trusting the other two. The PBS domain trades both ways with a Slurm
domain, with the demo's checks on each: c borrows from b (b reclaims: the requeue is in PBS), and
in the three-domain demo a borrows a host of b and one of c at once, then c reclaims its own (the
requeue is in a's Slurm, off a VM on c's PBS host) while b's loan to a stays.

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


def test_pbs_domain_borrows_from_slurm_domain(pbs_site, tmp_path) -> None:
    """The demo's trade with the PBS domain c borrowing from the Slurm domain b: c's job runs on
    the VM booted on b's host (a pbs-node VM whose MoM joins c's PBS server), and b's reclaim
    requeues the job on it, which then finishes on c's own nodes. (The reverse, a Slurm domain
    borrowing from c with a job on c's VM and a requeue on c's reclaim, is the three-domain
    demo's reclaimed trade below.)"""
    from broker.lab.demo import DemoSettings, demo

    borrower, lender = "c", "b"
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


def test_one_borrower_takes_hosts_from_two_lenders_and_one_reclaims(pbs_site, tmp_path) -> None:
    """The three-domain demo: a burst on the Slurm domain a takes one host of b (Slurm) and one
    of c (PBS), each lending at most one; a's jobs run on a VM of each. Then c's burst reclaims
    c's host: a's job on that VM (a node VM on c's PBS host, in a's Slurm) is requeued and
    finishes on a's own nodes or b's VM, while the contract with b stays active. Then every
    job finishes, both contracts close, and no borrowed node or VM is left."""
    from broker.lab.demo3 import ThreeDomainSettings, three_domain_demo

    started = time.monotonic()
    result = three_domain_demo(ThreeDomainSettings(inventory=INVENTORY, out=tmp_path / "demo3",
                                                   borrower="a", lenders=("b", "c"),
                                                   reclaimer="c"))
    pbs_site["times"]["demo3 a from b+c, c reclaims"] = time.monotonic() - started
    for key, value in result["figures"].items():
        print(f"demo3: {key:28} {value if value is None else round(value, 2)}")
    print(f"demo3: VMs {result['vms']}, jobs finished on them {result['jobs_done_on']}, "
          f"requeued {result['requeued']}")
    assert result["schedulers"] == {"a": "slurm", "b": "slurm", "c": "pbs"}
    assert result["problems"] == []
    assert set(result["vms"]) == {"b", "c"}
    assert result["jobs_done_on"]["b"] and result["jobs_done_on"]["c"], result
    assert result["requeued"] and set(result["requeued"].values()) <= {
        "a-node1", "a-node2", *result["vms"]["b"]}
