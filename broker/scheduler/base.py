"""The interface every scheduler adapter implements, and the records it returns."""

from __future__ import annotations

import abc
from dataclasses import dataclass

from broker.errors import UserError
from broker.policy import DomainState


class SchedulerError(UserError):
    """The scheduler refused or failed a command; the message carries its own words."""


@dataclass(frozen=True)
class Job:
    id: str
    state: str  # pending, running, or another lower-case scheduler state
    nodes: int
    node_list: tuple[str, ...] = ()


@dataclass(frozen=True)
class Node:
    name: str
    state: str  # lower-case scheduler state (idle, allocated, mixed, down, drained, ...)
    features: tuple[str, ...] = ()
    cpus: int = 0
    memory_mb: int = 0
    free_memory_mb: int | None = None
    reason: str = ""
    responding: bool = True  # False: the controller has lost contact with its node daemon

    @property
    def down_or_not_responding(self) -> bool:
        """Down (by the scheduler or an administrator), failing, or not answering the
        controller: a borrowed node in this state for long has lost its VM."""
        return not self.responding or self.state.startswith(("down", "fail"))

    @property
    def declared_dead(self) -> bool:
        """The scheduler itself gave up on it: down after losing contact with its node daemon
        (Slurm's ``down*``). Its jobs were requeued when it did."""
        return not self.responding and self.state.startswith("down")

    @property
    def busy(self) -> bool:
        """Running a job (``draining``: taking no new job, but its job still runs)."""
        return self.state.startswith(("alloc", "mix", "comp", "draining"))

    @property
    def idle(self) -> bool:
        return self.state.startswith("idle")

    @property
    def joined(self) -> bool:
        """Registered and answering, idle or already running jobs: a borrowed VM in this state
        has joined. (The scheduler may start a waiting job on a new node before anyone sees it
        idle.)"""
        return self.responding and (self.idle or self.busy)

    @property
    def usable(self) -> bool:
        """In service: not down, drained, failing or a future slot."""
        return not self.state.startswith(("down", "drain", "fail", "future", "unk", "inval"))


@dataclass(frozen=True)
class Snapshot:
    """One look at the queue and the nodes, split the way the policy counts them."""

    jobs: tuple[Job, ...]
    nodes: tuple[Node, ...]
    borrowed_feature: str
    lent_reason: str

    def is_borrowed(self, node: Node) -> bool:
        return self.borrowed_feature in node.features

    def is_lent(self, node: Node) -> bool:
        return node.reason.startswith(self.lent_reason)

    @property
    def physical(self) -> tuple[Node, ...]:
        """Own nodes in service, or lent (a lent node is drained on purpose)."""
        return tuple(
            n for n in self.nodes if not self.is_borrowed(n) and (n.usable or self.is_lent(n))
        )

    @property
    def lent(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if not self.is_borrowed(n) and self.is_lent(n))

    @property
    def borrowed(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if self.is_borrowed(n))

    @property
    def idle_physical(self) -> tuple[Node, ...]:
        return tuple(n for n in self.physical if n.idle and not self.is_lent(n))

    @property
    def waiting_nodes(self) -> int:
        return sum(j.nodes for j in self.jobs if j.state == "pending")

    @property
    def running_nodes(self) -> int:
        return sum(j.nodes for j in self.jobs if j.state == "running")

    @property
    def demand(self) -> int:
        """d_a: nodes of the waiting and the running jobs."""
        return self.waiting_nodes + self.running_nodes

    def node(self, name: str) -> Node | None:
        for n in self.nodes:
            if n.name == name:
                return n
        return None

    def domain_state(self) -> DomainState:
        """The observation the policy objects take."""
        physical = self.physical
        lent = self.lent
        busy = [n for n in physical if n.busy and not self.is_lent(n)]
        borrowed = [n for n in self.borrowed if n.usable or n.busy]
        return DomainState(
            physical=len(physical),
            lent=len(lent),
            borrowed=len(borrowed),
            waiting_nodes=self.waiting_nodes,
            running_nodes=self.running_nodes,
            busy_physical=len(busy),
            idle_borrowed=sum(1 for n in borrowed if n.idle),
        )


@dataclass(frozen=True)
class RemoveResult:
    node: str
    requeued: tuple[str, ...] = ()
    existed: bool = True


class SchedulerAdapter(abc.ABC):
    """What the broker needs from a batch system."""

    borrowed_feature: str = "borrowed"
    lent_reason: str = "viocluster-lent"
    #: reason a borrowed node carries while its lender drains it (``viocluster-draining:<id>``)
    draining_reason: str = "viocluster-draining"

    @abc.abstractmethod
    def snapshot(self) -> Snapshot:
        """The queue and the nodes now."""

    @abc.abstractmethod
    def admit(self, node: str, timeout: float = 30.0) -> Node:
        """Wait until the borrowed VM's node daemon has joined as ``node`` (answering, idle or
        already running a job the scheduler placed on it at once), make sure it carries the
        borrowed feature, and return it. Raise on timeout."""

    @abc.abstractmethod
    def remove(self, node: str, reason: str, timeout: float = 30.0) -> RemoveResult:
        """Take a borrowed node out: mark it down (its jobs are requeued), then delete it.
        Only after this returns may its VM be stopped. A node that is absent is no error."""

    @abc.abstractmethod
    def lend(self, node: str, contract_id: str) -> None:
        """Take one of our own idle nodes out of service because it is lent."""

    @abc.abstractmethod
    def unlend(self, node: str) -> None:
        """Put a node we had lent back into service."""

    def hold(self, node: str, contract_id: str) -> None:
        """Keep new jobs off a borrowed node its lender drains; the job on it runs on."""
        raise SchedulerError(f"{type(self).__name__} cannot keep new jobs off {node}")

    def unhold(self, node: str) -> None:
        """Let a borrowed node held by :meth:`hold` take jobs again (no error when it is not
        held)."""
        raise SchedulerError(f"{type(self).__name__} cannot put {node} back in service")
