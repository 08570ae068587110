"""What should run versus what does: the repair plan a broker carries out every interval.

Reconciliation is level-triggered: every interval (and once on start, before the API opens) the
broker observes what really runs - its scheduler's nodes with their state, its VMs and switch
peers through the probes, when it last heard from each peer - and :func:`plan` compares that
with the open contracts. :func:`plan` is pure: it takes the contracts, the observation, ``now``
and the :class:`Limits`, and returns the actions that bring the two back in line; the broker
carries them out. Rules:

* a borrowed scheduler node, a VM or a switch peer that no open contract accounts for is an
  orphan: remove it;
* a node of ours drained as lent with no open contract lending it: put it back in service;
  one an open lender contract lends but that is not drained: drain it again;
* ``provisioning`` when the broker starts: the playbook was cut off; roll back, mark failed;
* ``agreed`` on the borrower when the broker starts: nothing was provisioned yet; provision;
* ``proposed`` when the broker starts, or older than the offer's validity: nobody will answer
  it now; drop it (a refused attempt, counted per peer);
* ``reclaiming``: finish the reclaim (nodes out, VMs killed, peer told);
* ``active`` on the borrower but a node is gone from the scheduler: the VM died; end it;
* ``active`` on the borrower and a node down or not responding for ``node_down_grace_s``, or
  declared dead by the scheduler (down and not responding: its jobs were requeued), at once:
  the VM (or its lender's host) is dead or cut off; end it (node down, deleted; lender told);
* ``active`` on the lender and one of its VMs gone (VM probe) for ``node_down_grace_s``: end
  it and tell the borrower;
* ``agreed``, ``provisioning`` or ``active`` on the lender and nothing heard from the borrower
  for ``peer_lost_timeout_s``: stop its VMs and take the hosts back (immediate reclamation).

A contract some step of this process is working on (``busy``), or that changed after the
observation began, is left alone this interval: the observation may predate the change.

:func:`peer_view` handles the other half of being level-triggered: the answer to a heartbeat
lists every contract the peer holds with us; an open contract of ours that the peer holds
closed, failed or not at all is over, and we end our side of it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from broker.negotiation.contracts import Contract, ContractState, Role

S = ContractState
HOLDS_RESOURCES = (S.AGREED, S.PROVISIONING, S.ACTIVE, S.RECLAIMING)
# States in which both brokers certainly hold the contract: the borrower makes it before it
# asks, the lender before it offers, and neither agrees before the other has it.
BOTH_HOLD = (S.AGREED, S.PROVISIONING, S.ACTIVE)


@dataclass(frozen=True)
class Limits:
    """How long a fault may last before the broker acts on it (seconds)."""

    node_down_grace_s: float = 20.0
    peer_lost_timeout_s: float = 120.0
    offer_ttl_s: float = 60.0


@dataclass(frozen=True)
class Observed:
    """What really runs. ``None`` for a part this broker cannot see (no probe configured, or
    the probe failed this time).

    ``unhealthy_since`` maps a borrowed node that is down or not responding to the time it
    was first seen so (see :func:`track`); ``vm_missing_since`` the same for a VM of an open
    lender contract that the VM probe did not list. ``peer_heard`` is the last time each
    peer was heard from (a message from it, or an answer to ours); ``at`` is when this
    observation began.
    """

    at: float
    borrowed_nodes: frozenset[str]
    lent_nodes: frozenset[str]
    vms: frozenset[str] | None = None
    switch_peers: frozenset[str] | None = None  # runtime peers, by lending host name
    unhealthy_since: Mapping[str, float] = field(default_factory=dict)
    dead_nodes: frozenset[str] = frozenset()  # borrowed nodes the scheduler declared dead
    vm_missing_since: Mapping[str, float] = field(default_factory=dict)
    peer_heard: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, order=True)
class Action:
    kind: str  # remove_node, unlend, relend, kill_vm, remove_peer, rollback, provision,
    #            expire, finish_reclaim, vanished, node_down, vm_gone, peer_lost, peer_closed
    target: str
    contract_id: str = ""
    why: str = field(default="", compare=False)

    def __str__(self) -> str:
        suffix = f" (contract {self.contract_id})" if self.contract_id else ""
        why = f": {self.why}" if self.why else ""
        return f"{self.kind} {self.target}{suffix}{why}"


def track(previous: Mapping[str, float], now_seen: Iterable[str], now: float) -> dict[str, float]:
    """Since when each name in ``now_seen`` has been seen (the earliest time of an unbroken
    run of observations); names no longer seen are forgotten."""
    return {name: previous.get(name, now) for name in now_seen}


def plan(
    contracts: Iterable[Contract],
    observed: Observed,
    starting: bool = True,
    now: float | None = None,
    limits: Limits = Limits(),
    busy: frozenset[str] = frozenset(),
) -> list[Action]:
    """The repairs, in a safe order: scheduler first, then VMs, then switch peers, then the
    contracts.

    Switch peers are named by lending host (``violinctl peers add HOST ADDRESS``); the switch
    probe must list only the peers added at run time, never the domain's permanent members.
    ``starting``: the broker has just started, so nothing is in flight in this process.
    ``now`` defaults to the observation's time.
    """
    now = observed.at if now is None else now
    actions: list[Action] = []
    contracts = list(contracts)
    open_ = [c for c in contracts if not c.state.final]
    holding = [c for c in open_ if c.state in HOLDS_RESOURCES]

    vm_names = {n for c in holding for n in c.node_names}
    borrowed_ok = {n for c in holding if c.role is Role.BORROWER for n in c.node_names}
    lent_ok = {h for c in holding if c.role is Role.LENDER for h in c.host_names}
    peers_ok = {h for c in holding if c.role is Role.BORROWER for h in c.host_names}

    def settled(c: Contract) -> bool:
        """Nothing works on it, and it was in its state before the observation began."""
        return c.id not in busy and c.updated_at <= observed.at

    for node in sorted(observed.borrowed_nodes - borrowed_ok):
        actions.append(Action("remove_node", node))
    for node in sorted(observed.lent_nodes - lent_ok):
        actions.append(Action("unlend", node))
    for c in holding:
        if c.role is Role.LENDER and c.state in BOTH_HOLD and settled(c):
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
        if c.id in busy:
            continue
        if c.state is S.PROPOSED:
            if starting:
                actions.append(Action("expire", c.id, c.id, "broker restarted before agreement"))
            elif now - c.created_at > limits.offer_ttl_s:
                actions.append(Action("expire", c.id, c.id, "expired without agreement"))
        elif c.state is S.PROVISIONING and starting and c.role is Role.BORROWER:
            actions.append(Action("rollback", c.id, c.id))
        elif c.state is S.AGREED and c.role is Role.BORROWER and starting:
            actions.append(Action("provision", c.id, c.id))
        elif c.state is S.RECLAIMING:
            actions.append(Action("finish_reclaim", c.id, c.id))
        elif not settled(c):
            continue
        elif c.state is S.ACTIVE and c.role is Role.BORROWER:
            missing = [n for n in c.node_names if n not in observed.borrowed_nodes]
            down = [n for n in c.node_names if n in observed.unhealthy_since
                    and now - observed.unhealthy_since[n] >= limits.node_down_grace_s]
            dead = [n for n in c.node_names if n in observed.dead_nodes]
            if missing:
                actions.append(Action("vanished", ",".join(missing), c.id,
                                      f"node(s) {', '.join(missing)} vanished from the scheduler"))
            elif dead:
                # The scheduler gave up on it already and requeued its jobs; the VM fenced
                # itself before that (docs/broker.md, "Fencing"): no grace is left to wait.
                actions.append(Action(
                    "node_down", ",".join(dead), c.id,
                    f"node(s) {', '.join(dead)} declared dead by the scheduler (down, not "
                    "responding)"))
            elif down:
                actions.append(Action(
                    "node_down", ",".join(down), c.id,
                    f"node(s) {', '.join(down)} down or not responding for "
                    f"{limits.node_down_grace_s:g} s or more"))
        elif c.role is Role.LENDER and c.state in BOTH_HOLD:
            heard = max(observed.peer_heard.get(c.peer, c.updated_at), c.updated_at)
            gone = [n for n in c.node_names if n in observed.vm_missing_since
                    and now - observed.vm_missing_since[n] >= limits.node_down_grace_s]
            if now - heard >= limits.peer_lost_timeout_s:
                actions.append(Action(
                    "peer_lost", c.peer, c.id,
                    f"borrower {c.peer} not heard from for {now - heard:.0f} s "
                    f"(peer_lost_timeout_s {limits.peer_lost_timeout_s:g})"))
            elif c.state is S.ACTIVE and observed.vms is not None and gone:
                actions.append(Action("vm_gone", ",".join(gone), c.id,
                                      f"VM(s) {', '.join(gone)} gone from the lending host"))
    return actions


def missing_vms(contracts: Iterable[Contract], vms: frozenset[str] | None) -> set[str]:
    """VMs that active lender contracts hold and the VM probe did not list."""
    if vms is None:
        return set()
    return {n for c in contracts if c.role is Role.LENDER and c.state is S.ACTIVE
            for n in c.node_names if n not in vms}


def peer_view(
    contracts: Iterable[Contract],
    peer: str,
    asked: Mapping[str, float],
    view: Mapping[str, str],
    busy: frozenset[str] = frozenset(),
) -> list[Action]:
    """What to end after a peer answered a heartbeat with ``view``, every contract it holds
    with us (id -> state; closed ones included until it compacts them).

    ``asked`` maps the contracts our heartbeat listed to the time of their state when it was
    sent: only those are judged (a contract that moved since, or that the peer may not have
    had when it answered, waits for the next heartbeat). Of those, one both sides must hold
    (``agreed``, ``provisioning``, ``active``) that the peer holds closed, failed or not at
    all is over on the peer's side: ``peer_closed``.
    """
    actions = []
    for c in contracts:
        if c.peer != peer or c.id not in asked or c.id in busy or c.state not in BOTH_HOLD:
            continue
        if c.updated_at > asked[c.id]:
            continue
        theirs = view.get(c.id)
        if theirs is None:
            actions.append(Action("peer_closed", c.id, c.id, f"{peer} holds no such contract"))
        elif theirs in (S.CLOSED.value, S.FAILED.value):
            actions.append(Action("peer_closed", c.id, c.id, f"{peer}'s side is {theirs}"))
    return actions
