"""The reconciliation plan (pure): what runs versus what the contracts say."""

from __future__ import annotations

from dataclasses import replace

from broker.negotiation.contracts import Contract, ContractState, Role
from broker.negotiation.messages import HostOffer, Needs, Terms
from broker.service.reconcile import Observed, plan

S = ContractState
HOST = HostOffer("h1", "10.204.1.1", "vbka", 1, 256, 1, "site-b")


def _c(cid, role, state, node="a-v1-0"):
    c, _ = Contract.propose(cid, role, "a", "b", 1, Needs(), Terms(), 1.0)
    return replace(c, state=state, offered=(HOST,), nodes=(("h1", node),))


def _kinds(actions):
    return sorted((a.kind, a.target) for a in actions)


def test_orphans_are_removed_and_accounted_things_kept():
    contracts = [_c("a-1", Role.BORROWER, S.ACTIVE, "a-v1-0")]
    seen = Observed(
        borrowed_nodes=frozenset({"a-v1-0", "a-vx-0"}), lent_nodes=frozenset({"n2"}),
        vms=frozenset({"a-v1-0", "a-vy-0"}), switch_peers=frozenset({"h1", "h9"}),
    )
    assert _kinds(plan(contracts, seen)) == [
        ("kill_vm", "a-vy-0"), ("remove_node", "a-vx-0"), ("remove_peer", "h9"), ("unlend", "n2"),
    ]


def test_each_state_on_restart():
    contracts = [
        _c("p", Role.BORROWER, S.PROPOSED), _c("g", Role.BORROWER, S.AGREED, "g0"),
        _c("v", Role.BORROWER, S.PROVISIONING, "v0"), _c("r", Role.LENDER, S.RECLAIMING, "r0"),
        _c("x", Role.BORROWER, S.ACTIVE, "x0"), _c("l", Role.LENDER, S.ACTIVE, "l0"),
        _c("c", Role.BORROWER, S.CLOSED, "c0"), _c("f", Role.BORROWER, S.FAILED, "f0"),
    ]
    seen = Observed(borrowed_nodes=frozenset({"v0"}), lent_nodes=frozenset({"h1"}))
    got = {(a.kind, a.contract_id) for a in plan(contracts, seen) if a.contract_id}
    assert got == {("expire", "p"), ("provision", "g"), ("rollback", "v"),
                   ("finish_reclaim", "r"), ("vanished", "x")}


def test_a_lent_node_that_lost_its_drain_is_drained_again():
    contracts = [_c("l", Role.LENDER, S.ACTIVE)]
    acts = plan(contracts, Observed(borrowed_nodes=frozenset(), lent_nodes=frozenset()))
    assert [(a.kind, a.target) for a in acts] == [("relend", "h1")]


def test_parts_without_a_probe_are_left_alone():
    acts = plan([], Observed(borrowed_nodes=frozenset(), lent_nodes=frozenset(), vms=None, switch_peers=None))
    assert acts == []
