"""Policy plane: demand, lending, borrowing and reclamation as plain objects.

No I/O and no clock: every call takes the observed state and ``now`` (epoch seconds) and
returns a decision. The live broker and the simulator call the same objects.

Public API
----------
``DomainState(physical, lent, borrowed, waiting_nodes, running_nodes, busy_physical,
idle_borrowed)``
    What the broker observes of its own domain (counts of nodes). ``.demand`` is d_a (nodes of
    waiting plus running jobs: the whole batch queue), ``.need`` is
    n_a = d_a - ((|P_a| - |L_a|) + |V_a|), ``.idle_physical`` the own nodes neither lent nor busy.
    ``demand(job_nodes)`` and ``need(d, physical, lent, borrowed)`` are the bare formulas.

``load_policy(path) -> DomainPolicy`` / ``parse_policy(mapping, source) -> DomainPolicy``
    Read an administrator's YAML file (docs/examples/policy.yml); a wrong key, type or value
    raises ``broker.errors.ConfigError`` naming ``section.key``, the value and what is allowed.

``DomainPolicy.intent(state, now) -> Intent(action, nodes)``
    The interval's decision from the sign of n_a: ``RECLAIM`` (own nodes lent and n_a > 0),
    ``BORROW`` (n_a > 0), ``RETURN`` (idle borrowed VMs, n_a < 0), ``LEND`` (offer up to
    ``nodes``), or ``HOLD``.

``LendingPolicy.offerable(state, now, peer=None, tz) -> int``
    Nodes that may be lent now: fraction_idle (paper: 1/2) of the idle nodes, keeping
    min_reserve, within max_lent, only to allowed peers, within the lending windows.

``BorrowingPolicy.wanted(state, now, tz) -> int``, ``.to_return(state) -> int``,
``.accepts(host: HostProperties, terms: Terms, borrowed, now, tz) -> Verdict``
    How many VMs to ask for; how many idle ones to give back; whether an offered host (CPUs,
    memory, disk) with the lender's reclamation terms is acceptable now (``Verdict.ok``,
    ``Verdict.reason``).

``ReclamationPolicy(Terms(mode, lease_s, per_interval))``
    ``.plan(loans, wanted, now) -> ReclaimPlan(now=ids, drain=ids)`` chooses which ``Loan``
    objects to take back (idle first, then the least work lost): immediate, gradual (at most
    per_interval a call), drain (busy ones drain, idle ones return), lease (nothing early);
    ``.expired(loans, now) -> ids`` lists the leases that ended.
"""

from broker.policy.borrowing import BorrowingPolicy, Verdict
from broker.policy.demand import DomainState, demand, need
from broker.policy.domain import Action, DomainPolicy, Intent
from broker.policy.hosts import HostProperties, Location, Requirements
from broker.policy.lending import LendingPolicy
from broker.policy.loader import load_policy, parse_policy
from broker.policy.reclamation import Loan, Mode, ReclaimPlan, ReclamationPolicy, Terms
from broker.policy.windows import TimeWindow, parse_window

__all__ = [
    "Action",
    "BorrowingPolicy",
    "DomainPolicy",
    "DomainState",
    "HostProperties",
    "Intent",
    "LendingPolicy",
    "Location",
    "Loan",
    "Mode",
    "ReclaimPlan",
    "ReclamationPolicy",
    "Requirements",
    "Terms",
    "TimeWindow",
    "Verdict",
    "demand",
    "load_policy",
    "need",
    "parse_policy",
    "parse_window",
]
