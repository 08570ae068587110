"""Contracts between a borrowing and a lending domain, and their state machine.

::

    proposed --> agreed --> provisioning --> active --> reclaiming --> closed
        |          |             |             |            |
        +----------+-------------+-------------+------------+--> failed
    proposed --> closed        (declined, or expired before agreement)
    agreed   --> closed        (cancelled before anything was provisioned)
    agreed, provisioning --> reclaiming   (taken back or given up before it was active:
                                           what may have been started is stopped)

``closed`` and ``failed`` are final. A contract is changed only through
:meth:`Contract.advance`, which returns the new contract and a :class:`Transition` record for
the log; an illegal step raises :class:`IllegalTransition` and changes nothing.
"""

from __future__ import annotations

import enum
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from typing import Any

from broker.errors import UserError
from broker.negotiation.messages import HostOffer, Needs, Terms


class ContractState(str, enum.Enum):
    PROPOSED = "proposed"
    AGREED = "agreed"
    PROVISIONING = "provisioning"
    ACTIVE = "active"
    RECLAIMING = "reclaiming"
    CLOSED = "closed"
    FAILED = "failed"

    @property
    def final(self) -> bool:
        return self in (ContractState.CLOSED, ContractState.FAILED)


class Role(str, enum.Enum):
    """Which side of the contract this broker is on."""

    BORROWER = "borrower"
    LENDER = "lender"


S = ContractState
ALLOWED: dict[ContractState, frozenset[ContractState]] = {
    S.PROPOSED: frozenset({S.AGREED, S.CLOSED, S.FAILED}),
    S.AGREED: frozenset({S.PROVISIONING, S.RECLAIMING, S.CLOSED, S.FAILED}),
    S.PROVISIONING: frozenset({S.ACTIVE, S.RECLAIMING, S.FAILED}),
    S.ACTIVE: frozenset({S.RECLAIMING, S.FAILED}),
    S.RECLAIMING: frozenset({S.CLOSED, S.FAILED}),
    S.CLOSED: frozenset(),
    S.FAILED: frozenset(),
}


class IllegalTransition(UserError):
    """A step the state machine does not allow (for example ``closed`` to ``active``)."""


@dataclass(frozen=True)
class Transition:
    """One line of a contract's log."""

    contract_id: str
    at: float
    from_state: ContractState | None
    to_state: ContractState
    reason: str


@dataclass(frozen=True)
class Contract:
    """A loan of ``len(hosts)`` machines from ``lender`` to ``borrower``.

    ``nodes`` maps each agreed lending host to the name the VM gets in the borrower's
    scheduler; it is filled when the contract is agreed. ``addresses`` maps each VM node name
    to its address in the borrower's virtual subnet (``"10.210.1.70/24"``); the borrower fills
    it from its VM address pool in the same step, and it stays empty without a pool (the
    playbook then derives the address) and on the lender's side.
    """

    id: str
    role: Role
    borrower: str
    lender: str
    state: ContractState
    created_at: float
    updated_at: float
    requested: int
    needs: Needs = field(default_factory=Needs)
    terms: Terms = field(default_factory=Terms)
    offered: tuple[HostOffer, ...] = ()
    nodes: tuple[tuple[str, str], ...] = ()
    reason: str = ""
    addresses: tuple[tuple[str, str], ...] = ()

    @property
    def peer(self) -> str:
        return self.lender if self.role is Role.BORROWER else self.borrower

    @property
    def node_names(self) -> tuple[str, ...]:
        return tuple(node for _host, node in self.nodes)

    @property
    def address_of(self) -> dict[str, str]:
        """VM node name -> its address (``"10.210.1.70/24"``), for the VMs that have one."""
        return dict(self.addresses)

    @property
    def host_names(self) -> tuple[str, ...]:
        return tuple(host for host, _node in self.nodes)

    @classmethod
    def propose(
        cls,
        contract_id: str,
        role: Role,
        borrower: str,
        lender: str,
        requested: int,
        needs: Needs,
        terms: Terms,
        now: float,
    ) -> tuple[Contract, Transition]:
        contract = cls(
            id=contract_id,
            role=role,
            borrower=borrower,
            lender=lender,
            state=S.PROPOSED,
            created_at=now,
            updated_at=now,
            requested=requested,
            needs=needs,
            terms=terms,
        )
        return contract, Transition(contract_id, now, None, S.PROPOSED, "proposed")

    def advance(
        self, to: ContractState, now: float, reason: str, **changes: Any
    ) -> tuple[Contract, Transition]:
        """The contract in state ``to``, with ``changes`` applied, and the log record."""
        if to not in ALLOWED[self.state]:
            raise IllegalTransition(
                f"contract {self.id}: cannot go from {self.state.value} to {to.value}"
            )
        new = replace(self, state=to, updated_at=now, reason=reason, **changes)
        return new, Transition(self.id, now, self.state, to, reason)


    def without(self, hosts: Collection[str], now: float, reason: str) -> tuple[Contract, Transition]:
        """The active contract with ``hosts`` taken back and the others still lent (a gradual
        reclaim), and the log record (a step from ``active`` to ``active``). ``updated_at``
        stays: the loan of the hosts left began when the contract became active (a lease
        counts from it). Taking back every host is ending the contract (``reclaiming``)."""
        if self.state is not S.ACTIVE:
            raise IllegalTransition(f"contract {self.id}: hosts are taken back one by one only "
                                    f"from an active contract, not a {self.state.value} one")
        gone = set(hosts)
        unknown = sorted(gone - set(self.host_names))
        if unknown:
            raise IllegalTransition(f"contract {self.id} has no host {', '.join(unknown)}")
        if gone >= set(self.host_names):
            raise IllegalTransition(f"contract {self.id}: taking back every host ends it "
                                    "(reclaiming), it does not shrink it")
        nodes = tuple((h, n) for h, n in self.nodes if h not in gone)
        kept = {n for _h, n in nodes}
        new = replace(self, nodes=nodes, reason=reason,
                      addresses=tuple((n, a) for n, a in self.addresses if n in kept))
        return new, Transition(self.id, now, S.ACTIVE, S.ACTIVE, reason)


def vm_node_name(borrower: str, contract_id: str, index: int) -> str:
    """The scheduler name of the ``index``-th VM of a contract: short, unique, DNS-safe."""
    tail = contract_id.rsplit("-", 1)[-1][:8]
    return f"{borrower}-v{tail}-{index}".lower().replace("_", "-").replace(".", "-")
