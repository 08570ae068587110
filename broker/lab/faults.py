"""Faults on the lab: a host's power cut and its return, domains cut apart, a cable pulled.

What the broker must notice, fence and recover from, made on purpose:

- **crash**: every process of a host killed at once (:func:`broker.lab.hosts.power_cut`), as by
  a power cut; its network namespace and bridge port stay, as a dead machine stays plugged
  in, with its ``eth0`` down (no carrier): the address answers nothing, not even ARP.
- **start**: the same host boots again from its persistent private layer, as when power
  comes back; the services enabled in it start at boot.
- **partition**: the router drops whatever it would forward between two domains' physical
  networks (a ``blackhole`` policy rule each way in the router namespace); each domain still
  works inside.
- **cut**: one host's bridge port goes down, as a pulled cable; it runs on, unreachable.
- **heal**: every partition and cut is undone (crashed hosts stay down until started).

The faults in force are recorded in the lab's state file (:class:`broker.lab.hosts.Plan`).
The decisions (which host, which rules, which port) are pure functions of the plan; the rest
runs ``ip`` and the host functions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from ipaddress import IPv4Interface

from broker.errors import UserError
from broker.lab import hosts as labhosts
from broker.lab.hosts import Bridge, Host, Plan

#: Priority of the partition rules in the router's policy routing (before the main table).
RULE_PRIORITY = 500


class FaultError(UserError):
    """A fault cannot be made or undone as asked."""


@dataclass(frozen=True)
class Rule:
    """One ``ip rule`` in a namespace: what is sent from ``source`` to ``destination`` is
    dropped instead of routed."""

    netns: str | None
    source: str
    destination: str
    priority: int = RULE_PRIORITY

    def selector(self) -> list[str]:
        return ["from", self.source, "to", self.destination, "priority", str(self.priority)]


@dataclass(frozen=True)
class HostFault:
    """What status shows of one host."""

    name: str
    ip: str
    state: str  # running | crashed | stopped (down, not by a fault)
    cut: bool


# ---------------------------------------------------------------------------------------------
# decisions (pure)


def domains(plan: Plan) -> dict[str, Bridge]:
    """The plan's domains and the bridge of each one's physical network."""
    return {b.domain: b for b in plan.bridges if b.domain and b.address}


def find_host(plan: Plan, name: str) -> Host:
    for host in plan.hosts:
        if host.name == name:
            return host
    known = ", ".join(h.name for h in plan.hosts)
    raise FaultError(f"no lab host {name!r}; the lab's hosts are {known}")


def partition_pair(plan: Plan, first: str, second: str) -> tuple[str, str]:
    """The two domains, checked and in a stable order."""
    known = domains(plan)
    for name in (first, second):
        if name not in known:
            if not known:
                raise FaultError("the lab's state names no domains (it was brought up by an "
                                 "older version); take it down and up again")
            raise FaultError(f"no lab domain {name!r}; the lab's domains are "
                             f"{', '.join(sorted(known))}")
    if first == second:
        raise FaultError(f"a domain cannot be partitioned from itself ({first}); name two domains")
    a, b = sorted((first, second))
    return a, b


def partition_rules(plan: Plan, first: str, second: str) -> list[Rule]:
    """The router's rules that cut two domains' physical networks apart, both ways."""
    a, b = partition_pair(plan, first, second)
    bridges = domains(plan)
    net_a = str(IPv4Interface(bridges[a].address).network)
    net_b = str(IPv4Interface(bridges[b].address).network)
    netns = bridges[a].netns
    if netns != bridges[b].netns:
        raise FaultError(f"domains {a} and {b} are not joined by one router; "
                         "the plan cannot partition them")
    return [Rule(netns, net_a, net_b), Rule(netns, net_b, net_a)]


def active_rules(plan: Plan) -> list[Rule]:
    return [rule for a, b in plan.partitions for rule in partition_rules(plan, a, b)]


def host_port(plan: Plan, host: Host) -> tuple[str | None, str]:
    """The namespace and name of the host's bridge port: its cable."""
    for br in plan.bridges:
        if br.name == host.bridge:
            return br.netns, host.port
    raise FaultError(f"host {host.name} is on bridge {host.bridge}, which the plan does not make")


def host_state(host: Host, running: bool) -> str:
    if running:
        return "running"
    return "crashed" if host.crashed else "stopped"


# ---------------------------------------------------------------------------------------------
# on the machine


def _ip(netns: str | None, *args: str, check: bool = True) -> str:
    return labhosts._ip(netns, *args, check=check).stdout


def crash(plan: Plan, name: str) -> Host:
    """Power-cut one host; its network namespace and port stay, its NIC goes dark."""
    host = find_host(plan, name)
    if not labhosts.host_running(host):
        raise FaultError(f"host {name} is not running; `viocluster lab start {name}` boots it")
    labhosts.power_cut(host)
    # The namespace's own stack would still answer ARP, ping and TCP resets for the dead host:
    # with its eth0 down there is no carrier on its bridge port, as with a powered-off machine.
    if labhosts.link_exists("eth0", host.machine):
        _ip(host.machine, "link", "set", "eth0", "down")
    host.pid = None
    host.crashed = True
    plan.save()
    return host


def start(plan: Plan, name: str, ssh_timeout: float = 90.0) -> Host:
    """Boot a crashed (or stopped) host again; return once it answers SSH."""
    host = find_host(plan, name)
    if labhosts.host_running(host):
        raise FaultError(f"host {name} is running; `viocluster lab crash {name}` first")
    labhosts.boot(plan, host, ssh_timeout=ssh_timeout)
    return host


def partition(plan: Plan, first: str, second: str) -> list[Rule]:
    """Cut two domains apart at the router; return the rules now in force."""
    pair = partition_pair(plan, first, second)
    rules = partition_rules(plan, *pair)
    for rule in rules:
        _ip(rule.netns, "rule", "del", *rule.selector(), "blackhole", check=False)
        _ip(rule.netns, "rule", "add", *rule.selector(), "blackhole")
    if pair not in plan.partitions:
        plan.partitions.append(pair)
        plan.save()
    return rules


def cut(plan: Plan, name: str) -> Host:
    """Pull one host's cable: its bridge port goes down, the host runs on."""
    host = find_host(plan, name)
    netns, port = host_port(plan, host)
    _ip(netns, "link", "set", port, "down")
    if name not in plan.cut:
        plan.cut.append(name)
        plan.save()
    return host


def heal(plan: Plan) -> list[str]:
    """Undo every partition and cut; return what was undone."""
    healed: list[str] = []
    for rule in active_rules(plan):
        _ip(rule.netns, "rule", "del", *rule.selector(), "blackhole", check=False)
    for netns in {b.netns for b in domains(plan).values()}:
        for rule in installed_rules(netns):  # any left by a partition the state lost
            _ip(netns, "rule", "del", *rule.selector(), "blackhole", check=False)
    healed += [f"partition {a} | {b}" for a, b in plan.partitions]
    for name in plan.cut:
        host = find_host(plan, name)
        netns, port = host_port(plan, host)
        if labhosts.link_exists(port, netns):
            _ip(netns, "link", "set", port, "up")
        healed.append(f"cut {name}")
    plan.partitions = []
    plan.cut = []
    plan.save()
    return healed


def installed_rules(netns: str | None) -> list[Rule]:
    """The partition rules the namespace holds now."""
    if netns is not None and not labhosts.netns_exists(netns):
        return []
    try:
        raw = json.loads(_ip(netns, "-json", "rule", "show", check=False) or "[]")
    except ValueError:
        return []
    found = []
    for entry in raw:
        if entry.get("priority") == RULE_PRIORITY and entry.get("type") == "blackhole":
            src = f"{entry.get('src')}/{entry.get('srclen', 32)}"
            dst = f"{entry.get('dst')}/{entry.get('dstlen', 32)}"
            found.append(Rule(netns, src, dst))
    return found


def host_faults(plan: Plan) -> list[HostFault]:
    return [HostFault(h.name, h.ip, host_state(h, labhosts.host_running(h)), h.name in plan.cut)
            for h in plan.hosts]
