"""The lab's plan from its inventory, and molecule's names: pure code, no root, no hosts."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from broker.lab import molecule_hosts, topology
from broker.lab.rootfs import parse_packages, rootfs_for

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def lab_inventory() -> dict:
    exe = Path(sys.executable).parent / "ansible-inventory"
    out = subprocess.run([str(exe), "-i", str(REPO / "inventories" / "lab"), "--list"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def test_pbs_lab_inventory_plans_two_slurm_and_a_pbs_domain_behind_a_router() -> None:
    exe = Path(sys.executable).parent / "ansible-inventory"
    out = subprocess.run([str(exe), "-i", str(REPO / "inventories" / "lab-pbs"), "--list"],
                         capture_output=True, text=True, check=True).stdout
    plan = topology.plan_from_inventory(json.loads(out), rootfs="/nonexistent")
    assert [b.name for b in plan.bridges] == ["vlabbr-a", "vlabbr-b", "vlabbr-c"]
    assert sorted(h.name for h in plan.hosts) == [
        "a-head", "a-node1", "a-node2", "b-head", "b-node1", "b-node2",
        "c-head", "c-node1", "c-node2"]
    assert sorted(plan.links[0].routes_a) == [("10.203.1.0/24", "10.203.0.2"),
                                              ("10.203.2.0/24", "10.203.0.2"),
                                              ("10.203.3.0/24", "10.203.0.2")]
    hostvars = json.loads(out)["_meta"]["hostvars"]
    assert hostvars["c-head"]["viocluster_scheduler"] == "pbs"
    assert "viocluster_scheduler" not in hostvars["a-head"]
    # every domain trusts the other two
    assert {d: hostvars[f"{d}-head"]["viocluster_peers"] for d in "abc"} == {
        "a": ["b", "c"], "b": ["a", "c"], "c": ["a", "b"]}
    # no two domains share a subnet or a VM pool
    for key in ("viocluster_physical_subnet", "viocluster_virtual_subnet", "viocluster_vm_pool",
                "viocluster_network_id"):
        assert len({hostvars[f"{d}-head"][key] for d in "abc"}) == 3, key


def test_lab_inventory_plans_two_domains_behind_a_router(lab_inventory: dict) -> None:
    plan = topology.plan_from_inventory(lab_inventory, rootfs="/nonexistent")
    assert [b.name for b in plan.bridges] == ["vlabbr-a", "vlabbr-b"]
    assert all(b.netns == topology.ROUTER_NETNS for b in plan.bridges)
    assert [b.address for b in plan.bridges] == ["10.203.1.1/24", "10.203.2.1/24"]
    assert sorted(h.name for h in plan.hosts) == [
        "a-head", "a-node1", "a-node2", "b-head", "b-node1", "b-node2"]
    assert all(h.machine == f"vlab-{h.name}" for h in plan.hosts)
    assert all(len(h.port) <= 15 for h in plan.hosts)
    a_node = next(h for h in plan.hosts if h.name == "a-node1")
    assert (a_node.address, a_node.gateway) == ("10.203.1.11/24", "10.203.1.1")
    # the control node reaches both physical networks through the router
    assert sorted(plan.links[0].routes_a) == [("10.203.1.0/24", "10.203.0.2"),
                                              ("10.203.2.0/24", "10.203.0.2")]
    # one shared directory per domain, at the same path on every host of it
    homes = {h.name: h.binds[0].source for h in plan.hosts}
    assert homes["a-head"] == homes["a-node2"] != homes["b-head"]


def _break(inventory: dict, host: str, **changes) -> dict:
    broken = copy.deepcopy(inventory)
    broken["_meta"]["hostvars"][host].update(changes)
    return broken


@pytest.mark.parametrize(
    ("host", "changes", "message"),
    [
        ("a-node1", {"ansible_host": "10.203.2.50"}, "must be a host address of 10.203.1.0/24"),
        ("a-node1", {"ansible_host": "10.203.1.1"}, "other than 10.203.1.1 (the router)"),
        ("a-node1", {"ansible_host": "10.203.1.12"}, "given to two hosts"),
        ("a-node1", {"viocluster_physical_subnet": "192.168.0.0/24"}, "must lie in 10.203.0.0/16"),
        ("a-head", {"viocluster_virtual_subnet": "10.9.0.0/24"}, "must lie in 10.210.0.0/16"),
        ("b-head", {"viocluster_domain": "Bad Name"}, "must be 1-6 lower case"),
        ("a-node1", {"viocluster_head_node": "a-node2"}, "two different settings"),
        ("a-node1", {"ansible_ssh_private_key_file": "/root/.ssh/id_rsa"}, "the lab's own key"),
    ],
)
def test_lab_inventory_mistakes_are_named(lab_inventory: dict, host: str, changes: dict,
                                          message: str) -> None:
    with pytest.raises(topology.LabInventoryError) as err:
        topology.plan_from_inventory(_break(lab_inventory, host, **changes), rootfs="")
    assert message in str(err.value)


def test_inventory_without_domains_is_refused() -> None:
    with pytest.raises(topology.LabInventoryError, match="no host with viocluster_domain"):
        topology.plan_from_inventory({"_meta": {"hostvars": {"x": {}}}}, rootfs="")


def test_molecule_names_fit_interfaces_and_differ_per_scenario() -> None:
    tags = {molecule_hosts.short_tag(s) for s in ("violin_switch", "violin_tap", "slurm", "nfs")}
    assert len(tags) == 4
    assert all(len(t) <= 8 for t in tags)
    plan = molecule_hosts.plan_for("violin_switch", [{"name": "n1"}, {"name": "n2"}],
                                   IPv4Network("10.205.7.0/24"), "/r")
    names = [plan.bridges[0].name] + [h.port for h in plan.hosts]
    assert all(len(n) <= 15 for n in names)
    assert [h.address for h in plan.hosts] == ["10.205.7.11/24", "10.205.7.12/24"]


def test_molecule_subnet_skips_taken_ones() -> None:
    first = molecule_hosts.pick_subnet("x", set())
    second = molecule_hosts.pick_subnet("x", {first})
    assert first != second and second.subnet_of(molecule_hosts.MOLECULE_RANGE)


@pytest.mark.parametrize(
    ("platforms", "message"),
    [
        ([], "lists no platforms"),
        ([{"name": "Node_1"}], "must be a host name"),
        ([{"name": "n1"}, {"name": "n1"}], "listed twice"),
        ([{"name": "n1", "lab_dirs": ["relative"]}], "list of absolute paths"),
    ],
)
def test_molecule_platform_mistakes_are_named(platforms: list, message: str) -> None:
    with pytest.raises(molecule_hosts.ScenarioError) as err:
        molecule_hosts.plan_for("s", platforms, IPv4Network("10.205.9.0/24"), "/r")
    assert message in str(err.value)


def test_package_list_parsing_and_cache_key(tmp_path: Path) -> None:
    text = "a b  # comment\n# only a comment\n c\n"
    assert parse_packages(text) == ("a", "b", "c")
    one = rootfs_for(text, cache_dir=tmp_path)
    assert one.path.parent == tmp_path
    assert rootfs_for("c b a\n", cache_dir=tmp_path).key == one.key  # order does not matter
    assert rootfs_for(text + "d\n", cache_dir=tmp_path).key != one.key
    needed = {"openssh-server", "systemd", "python3", "slurmd", "munge", "nfs-ganesha"}
    assert needed <= set(rootfs_for().packages)
