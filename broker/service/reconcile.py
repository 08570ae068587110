"""What should run versus what does: the repair plan a broker carries out on start.

:func:`plan` is pure: it takes the contracts and what was observed (scheduler nodes, VMs,
switch peers) and returns the actions that bring them back in line. The broker carries them
out. Rules:

* a borrowed scheduler node, a VM or a switch peer that no open contract accounts for is an
  orphan: remove it;
* a node of ours drained as lent with no open contract lending it: put it back in service;
  one an open lender contract lends but that is not drained: drain it again;
* ``provisioning`` when the broker starts: the playbook was cut off; roll back, mark failed;
* ``agreed`` on the borrower: nothing was provisioned yet; provision now;
* ``proposed``: an offer or request nobody will answer now; close it;
* ``reclaiming``: finish the reclaim (nodes out, VMs killed, peer told);
* ``active`` on the borrower but a node is gone from the scheduler: the VM died; reclaim it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from broker.negotiation.contracts import Contract, ContractState, Role

S = ContractState
HOLDS_RESOURCES = (S.AGREED, S.PROVISIONING, S.ACTIVE, S.RECLAIMING)


@dataclass(frozen=True)
class Observed:
    """What really runs. ``None`` for a part this broker cannot see (no probe configured)."""

    borrowed_nodes: frozenset[str]
    lent_nodes: frozenset[str]
    vms: frozenset[str] | None = None
    switch_peers: frozenset[str] | None = None  # runtime peers, by lending host name


@dataclass(frozen=True, order=True)
class Action:
    kind: str  # remove_node, unlend, relend, kill_vm, remove_peer, rollback, provision,
    #            expire, finish_reclaim, vanished
    target: str
    contract_id: str = ""

    def __str__(self) -> str:
        suffix = f" (contract {self.contract_id})" if self.contract_id else ""
        return f"{self.kind} {self.target}{suffix}"


def plan(
    contracts: Iterable[Contract],
    observed: Observed,
    starting: bool = True,
) -> list[Action]:
    """The repairs, in a safe order: scheduler first, then VMs, then switch peers.

    Switch peers are named by lending host (``violinctl peers add HOST ADDRESS``); the switch
    probe must list only the peers added at run time, never the domain's permanent members.
    ``starting``: the broker has just started, so nothing is in flight in this process.
    """
    actions: list[Action] = []
    open_ = [c for c in contracts if not c.state.final]
    holding = [c for c in open_ if c.state in HOLDS_RESOURCES]

    vm_names = {n for c in holding for n in c.node_names}
    borrowed_ok = {n for c in holding if c.role is Role.BORROWER for n in c.node_names}
    lent_ok = {h for c in holding if c.role is Role.LENDER for h in c.host_names}
    peers_ok = {h for c in holding if c.role is Role.BORROWER for h in c.host_names}

    for node in sorted(observed.borrowed_nodes - borrowed_ok):
        actions.append(Action("remove_node", node))
    for node in sorted(observed.lent_nodes - lent_ok):
        actions.append(Action("unlend", node))
    for c in holding:
        if c.role is Role.LENDER and c.state in (S.AGREED, S.PROVISIONING, S.ACTIVE):
            for host in c.host_names:
                if host not in observed.lent_nodes:
                    actions.append(Action("relend", host, c.id))
    if observed.vms is not None:
        for vm in sorted(observed.vms - vm_names):
            actions.append(Action("kill_vm", vm))
    if observed.switch_peers is not None:
        for peer in sorted(observed.switch_peers - peers_ok):
            actions.append(Action("remove_peer", peer))

    for c in open_:
        if c.state is S.PROPOSED and starting:
            actions.append(Action("expire", c.id, c.id))
        elif c.state is S.PROVISIONING and starting and c.role is Role.BORROWER:
            actions.append(Action("rollback", c.id, c.id))
        elif c.state is S.AGREED and c.role is Role.BORROWER and starting:
            actions.append(Action("provision", c.id, c.id))
        elif c.state is S.RECLAIMING:
            actions.append(Action("finish_reclaim", c.id, c.id))
        elif c.state is S.ACTIVE and c.role is Role.BORROWER:
            missing = [n for n in c.node_names if n not in observed.borrowed_nodes]
            if missing:
                actions.append(Action("vanished", ",".join(missing), c.id))
    return actions
