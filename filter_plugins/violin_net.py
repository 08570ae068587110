"""Address, MAC and name derivation for VIOLIN virtual domains (netaddr).

Stable: a host keeps its address and MAC as long as its name and domain do. Collision-free per
domain: the members of a domain are given together, and a member whose hashed slot is taken
moves to the next free one (members are placed in the order of their hashed slot, then name,
so adding a host moves nobody unless it lands on a slot another host had probed onto).

    {{ inventory_hostname | violin_address('10.210.1.0/24', groups['domain_a']) }}
        -> 10.210.1.137
    {{ inventory_hostname | violin_cidr('10.210.1.0/24', groups['domain_a']) }}
        -> 10.210.1.137/24
    {{ inventory_hostname | violin_mac('a', groups['domain_a']) }}
        -> 02:5e:..:..:..:..  (locally administered unicast)
    {{ '10.210.1.0/24' | violin_prefix }}  -> 24
    {{ 'a' | violin_tap_name }}  -> vio-a
    {{ groups['domain_a'] | violin_peers(hostvars, inventory_hostname, 5300) }}
        -> [{name, address, port}, ...] (every member but this host)
"""

from __future__ import annotations

import hashlib
import re

from ansible.errors import AnsibleFilterError
from netaddr import EUI, AddrFormatError, IPAddress, IPNetwork, mac_unix_expanded


def _digest(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("\0".join(parts).encode()).digest()[:8], "big")


def _assign(members: list[str], slots: int, salt: str, reserved: set[int]) -> dict[str, int]:
    free = slots - len(reserved)
    unique = sorted(set(members))
    if len(unique) > free:
        raise AnsibleFilterError(f"{len(unique)} hosts do not fit the {free} free slots of {salt}; "
                                 "use a larger subnet")
    wanted = {m: _digest(salt, m) % slots for m in unique}
    taken = set(reserved)
    placed: dict[str, int] = {}
    for member in sorted(unique, key=lambda m: (wanted[m], m)):
        slot = wanted[member]
        while slot in taken:
            slot = (slot + 1) % slots
        taken.add(slot)
        placed[member] = slot
    return placed


def _network(subnet: str) -> IPNetwork:
    try:
        net = IPNetwork(str(subnet))
    except (AddrFormatError, ValueError, TypeError):
        raise AnsibleFilterError(f"violin: {subnet!r} is not a subnet (e.g. 10.210.1.0/24)") from None
    if net.version != 4 or net.prefixlen > 30:
        raise AnsibleFilterError(f"violin: {subnet} must be an IPv4 subnet of /30 or larger")
    return net


def violin_address(host: str, subnet: str, members: list[str] | None = None, reserved: int = 1) -> str:
    """The host's address in the domain subnet. The first ``reserved`` host addresses (default 1,
    e.g. a gateway) and the network/broadcast addresses are never given out."""
    net = _network(subnet)
    members = list(members or []) + [host]
    size = net.size - 2
    placed = _assign(members, size, f"{net.cidr}", set(range(int(reserved))))
    return str(net.network + 1 + placed[host])


def violin_cidr(host: str, subnet: str, members: list[str] | None = None, reserved: int = 1) -> str:
    return f"{violin_address(host, subnet, members, reserved)}/{_network(subnet).prefixlen}"


def violin_prefix(subnet: str) -> int:
    """The prefix length of a subnet: '10.210.1.0/24' -> 24."""
    return _network(subnet).prefixlen


def violin_mac(host: str, domain: str, members: list[str] | None = None) -> str:
    """A locally administered unicast MAC for the host's interface in ``domain``."""
    members = list(members or []) + [host]
    placed = _assign(members, 1 << 40, f"mac:{domain}", set())
    value = (0x02 << 40) | (_digest("mac-domain", str(domain)) & 0xFF) << 32 | (placed[host] & 0xFFFFFFFF)
    # 02:DD:xx:xx:xx:xx: locally administered, unicast, one byte of domain, 32 bits of host slot
    mac = EUI(value)
    mac.dialect = mac_unix_expanded
    return str(mac)


def violin_tap_name(domain: str, prefix: str = "vio-") -> str:
    """A TAP name for the domain: prefix + domain, or a hash when that passes 15 characters."""
    name = f"{prefix}{domain}"
    if len(name) <= 15 and re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        return name
    return f"{prefix}{_digest('tap', str(domain)) & 0xFFFFFFFF:08x}"[:15]


def violin_peers(members: list[str], hostvars, me: str, port: int = 5300,
                 address_var: str = "violin_switch_listen") -> list[dict]:
    """Peers of ``me`` in a domain: every other member with its physical address (its
    ``address_var`` if set, else ``ansible_host``, else its name if that is an address) and the
    domain's port."""
    peers = []
    for member in sorted(set(members)):
        if member == me:
            continue
        hv = hostvars[member] if member in hostvars else {}
        address = str(hv.get(address_var) or hv.get("ansible_host") or member)
        try:
            IPAddress(address, 4)
        except (AddrFormatError, ValueError):
            raise AnsibleFilterError(
                f"violin_peers: host {member} has no IPv4 address ({address!r}); set its "
                f"{address_var} or ansible_host") from None
        peers.append({"name": member, "address": address, "port": int(port)})
    return peers


class FilterModule:
    def filters(self):
        return {
            "violin_address": violin_address,
            "violin_cidr": violin_cidr,
            "violin_prefix": violin_prefix,
            "violin_mac": violin_mac,
            "violin_tap_name": violin_tap_name,
            "violin_peers": violin_peers,
        }
