"""The lab's shape, read from its Ansible inventory (inventories/lab/).

The inventory is the single source: every host with ``viocluster_domain`` and ``ansible_host``
becomes an nspawn host of that domain; each domain's ``viocluster_physical_subnet`` becomes a
bridge in the router namespace, whose first address is the domain's gateway; the router
forwards between the domains' physical networks, as between departments. The control node
reaches every network through one veth into the router.

Pure code: :func:`plan_from_inventory` turns ``ansible-inventory --list`` output into a
:class:`broker.lab.hosts.Plan` without touching the machine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, ip_address
from pathlib import Path

from broker.errors import ConfigError
from broker.lab.hosts import Bind, Bridge, Host, Link, Plan

PHYSICAL_RANGE = IPv4Network("10.203.0.0/16")
VIRTUAL_RANGE = IPv4Network("10.210.0.0/16")
STATE_DIR = Path("/var/tmp/vlab")
ROUTER_NETNS = "vlab-rtr"
CONTROL_LINK = "vlab-ctl"
CONTROL_NET = IPv4Network("10.203.0.0/30")  # .1 control node, .2 router
#: Where each domain's users' directories live: exported by the head node, the same path on
#: every member (the head node's copy sits on the real filesystem, not the overlay).
SHARED_PATH = "/home"
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
_DOMAIN = re.compile(r"^[a-z][a-z0-9]{0,5}$")


class LabInventoryError(ConfigError):
    """inventories/lab/ describes a lab that cannot be built."""


@dataclass
class Domain:
    name: str
    physical: IPv4Network
    virtual: IPv4Network | None
    head: str
    hosts: list[str] = field(default_factory=list)

    @property
    def gateway(self) -> IPv4Address:
        return self.physical.network_address + 1

    @property
    def bridge(self) -> str:
        return f"vlabbr-{self.name}"


def domains_from_inventory(inventory: dict) -> tuple[list[Domain], dict[str, dict]]:
    hostvars: dict[str, dict] = inventory.get("_meta", {}).get("hostvars", {})
    domains: dict[str, Domain] = {}
    for name, hv in sorted(hostvars.items()):
        dom = hv.get("viocluster_domain")
        if dom is None:
            continue
        where = f"inventory host {name}"
        if not _NAME.match(name):
            raise LabInventoryError(
                f"{where}: a lab host name is lower case letters, digits and '-', "
                "starting with a letter, at most 31 characters"
            )
        if not isinstance(dom, str) or not _DOMAIN.match(dom):
            raise LabInventoryError(
                f"{where}: viocluster_domain {dom!r} must be 1-6 lower case letters or digits"
            )
        try:
            physical = IPv4Network(str(hv["viocluster_physical_subnet"]))
            virtual = (IPv4Network(str(hv["viocluster_virtual_subnet"]))
                       if hv.get("viocluster_virtual_subnet") else None)
            addr = ip_address(str(hv["ansible_host"]))
        except KeyError as exc:
            raise LabInventoryError(f"{where}: {exc.args[0]} is not set") from exc
        except ValueError as exc:
            raise LabInventoryError(f"{where}: {exc}") from exc
        if not physical.subnet_of(PHYSICAL_RANGE) or physical.overlaps(CONTROL_NET):
            raise LabInventoryError(
                f"{where}: viocluster_physical_subnet {physical} must lie in {PHYSICAL_RANGE} "
                f"and not overlap {CONTROL_NET} (the control link)"
            )
        if virtual is not None and not virtual.subnet_of(VIRTUAL_RANGE):
            raise LabInventoryError(
                f"{where}: viocluster_virtual_subnet {virtual} must lie in {VIRTUAL_RANGE}"
            )
        if addr not in physical or addr in (physical.network_address,
                                            physical.network_address + 1,
                                            physical.broadcast_address):
            raise LabInventoryError(
                f"{where}: ansible_host {addr} must be a host address of {physical} other than "
                f"{physical.network_address + 1} (the router)"
            )
        head = hv.get("viocluster_head_node")
        if not head:
            raise LabInventoryError(f"{where}: viocluster_head_node is not set")
        domain = domains.setdefault(dom, Domain(dom, physical, virtual, head))
        if (domain.physical, domain.virtual, domain.head) != (physical, virtual, head):
            raise LabInventoryError(
                f"{where}: domain {dom} has two different settings of subnets or head node; "
                "set them once, in group_vars of the domain's group"
            )
        domain.hosts.append(name)
    if not domains:
        raise LabInventoryError(
            "the inventory has no host with viocluster_domain set; see inventories/lab/hosts.yml"
        )
    nets = sorted(domains.values(), key=lambda d: d.name)
    for i, a in enumerate(nets):
        if a.head not in a.hosts:
            raise LabInventoryError(
                f"domain {a.name}: viocluster_head_node {a.head} is not a host of the domain"
            )
        for b in nets[i + 1:]:
            if a.physical.overlaps(b.physical) or (
                a.virtual and b.virtual and a.virtual.overlaps(b.virtual)
            ):
                raise LabInventoryError(f"domains {a.name} and {b.name} have overlapping subnets")
    addrs = [hostvars[h]["ansible_host"] for d in nets for h in d.hosts]
    dup = {a for a in addrs if addrs.count(a) > 1}
    if dup:
        raise LabInventoryError(f"address {', '.join(sorted(dup))} is given to two hosts")
    return nets, hostvars


def plan_from_inventory(inventory: dict, rootfs: str, state_dir: Path = STATE_DIR) -> Plan:
    domains, hostvars = domains_from_inventory(inventory)
    key = str(state_dir / "id_ed25519")
    for d in domains:
        for h in d.hosts:
            given = hostvars[h].get("ansible_ssh_private_key_file")
            if given != key:
                raise LabInventoryError(
                    f"inventory host {h}: ansible_ssh_private_key_file must be {key} "
                    f"(the lab's own key), not {given!r}"
                )
    ctl = list(CONTROL_NET.hosts())
    plan = Plan(
        name="lab",
        state_dir=str(state_dir),
        rootfs=rootfs,
        netns=[ROUTER_NETNS],
        sysctls=[(ROUTER_NETNS, "net.ipv4.ip_forward", "1")],
        links=[Link(
            name_a=CONTROL_LINK, netns_a=None, name_b="ctl0", netns_b=ROUTER_NETNS,
            address_a=f"{ctl[0]}/{CONTROL_NET.prefixlen}",
            address_b=f"{ctl[1]}/{CONTROL_NET.prefixlen}",
            routes_a=[(str(d.physical), str(ctl[1])) for d in domains],
        )],
    )
    index = 0
    for d in domains:
        plan.bridges.append(Bridge(d.bridge, ROUTER_NETNS, f"{d.gateway}/{d.physical.prefixlen}",
                                   domain=d.name))
        shared = state_dir / "shared" / d.name
        for h in d.hosts:
            index += 1
            # The head node exports SHARED_PATH from the real filesystem. This kernel has no NFS
            # client, so the lab lends the same directory to the domain's other hosts at the
            # same path, as a real cluster's NFS mount would show it.
            binds = [Bind(str(shared / SHARED_PATH.strip("/")), SHARED_PATH)]
            plan.hosts.append(Host(
                name=h,
                machine=f"vlab-{h}",
                address=f"{hostvars[h]['ansible_host']}/{d.physical.prefixlen}",
                gateway=str(d.gateway),
                bridge=d.bridge,
                port=f"vlab-h{index}",
                binds=binds,
            ))
    return plan
