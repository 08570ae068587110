"""filter_plugins/violin_net.py: stable, collision-free addresses and MACs per domain."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from ansible.errors import AnsibleFilterError
from netaddr import EUI, IPNetwork

PLUGIN = Path(__file__).resolve().parents[2] / "filter_plugins" / "violin_net.py"
spec = importlib.util.spec_from_file_location("violin_net", PLUGIN)
violin_net = importlib.util.module_from_spec(spec)
spec.loader.exec_module(violin_net)

HOSTS = [f"node{i}" for i in range(40)]


def test_addresses_are_unique_inside_the_subnet_and_skip_reserved():
    addrs = [violin_net.violin_address(h, "10.201.40.0/26", HOSTS) for h in HOSTS]
    assert len(set(addrs)) == len(HOSTS)
    net = IPNetwork("10.201.40.0/26")
    for a in addrs:
        assert a in net and a not in (str(net.network), str(net.broadcast), str(net.network + 1))


def test_addresses_are_stable_when_a_host_joins_without_collision():
    before = {h: violin_net.violin_address(h, "10.201.40.0/24", HOSTS[:10]) for h in HOSTS[:10]}
    after = {h: violin_net.violin_address(h, "10.201.40.0/24", HOSTS[:11]) for h in HOSTS[:10]}
    moved = [h for h in before if before[h] != after[h]]
    assert len(moved) <= 1  # only if the new host took a slot someone had probed onto
    assert violin_net.violin_address("node3", "10.201.40.0/24", HOSTS[:10]) == before["node3"]


def test_a_full_subnet_is_an_error():
    with pytest.raises(AnsibleFilterError, match="larger subnet"):
        violin_net.violin_address("node0", "10.201.40.0/29", HOSTS[:10])
    with pytest.raises(AnsibleFilterError, match="not a subnet"):
        violin_net.violin_address("node0", "nonsense", HOSTS)


def test_cidr_and_prefix():
    cidr = violin_net.violin_cidr("node1", "10.201.40.0/24", HOSTS)
    assert cidr.endswith("/24") and violin_net.violin_prefix("10.201.40.0/24") == 24


def test_macs_are_unicast_locally_administered_unique_and_per_domain():
    macs = [violin_net.violin_mac(h, "a", HOSTS) for h in HOSTS]
    assert len(set(macs)) == len(HOSTS)
    for mac in macs:
        first = EUI(mac).words[0]
        assert first & 1 == 0 and first & 2 == 2
    assert violin_net.violin_mac("node1", "a", HOSTS) != violin_net.violin_mac("node1", "b", HOSTS)
    assert violin_net.violin_mac("node1", "a", HOSTS) == violin_net.violin_mac("node1", "a", HOSTS)


def test_tap_names_fit_15_characters():
    assert violin_net.violin_tap_name("a") == "vio-a"
    long = violin_net.violin_tap_name("a-very-long-domain-name")
    assert len(long) <= 15 and long.startswith("vio-")
    assert long != violin_net.violin_tap_name("a-very-long-domain-namf")


def test_peers_are_the_other_members():
    hostvars = {"n1": {"ansible_host": "10.201.0.1"}, "n2": {"violin_switch_listen": "10.201.0.22",
                                                             "ansible_host": "10.201.0.2"}, "n3": {}}
    peers = violin_net.violin_peers(["n2", "n1"], hostvars, "n1", 5300)
    assert peers == [{"name": "n2", "address": "10.201.0.22", "port": 5300}]
    with pytest.raises(AnsibleFilterError, match="n3 has no IPv4 address"):
        violin_net.violin_peers(["n2", "n1", "n3"], hostvars, "n1", 5300)
