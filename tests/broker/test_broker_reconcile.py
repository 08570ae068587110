"""The reconciliation plan (pure): what runs versus what the contracts say, every interval."""

from __future__ import annotations

from dataclasses import replace

from broker.negotiation.contracts import Contract, ContractState, Role
from broker.negotiation.messages import HostOffer, Needs, Terms
from broker.service.reconcile import Limits, Observed, missing_vms, peer_view, plan, track

S = ContractState
HOST = HostOffer("h1", "10.204.1.1", "vbka", 1, 256, 1, "site-b")
LIMITS = Limits(node_down_grace_s=30, peer_lost_timeout_s=120, offer_ttl_s=60)


def _c(cid, role, state, node="a-v1-0", at=1.0):
    c, _ = Contract.propose(cid, role, "a", "b", 1, Needs(), Terms(), at)
    return replace(c, state=state, offered=(HOST,), nodes=(("h1", node),), updated_at=at)


def _seen(at=100.0, borrowed=(), lent=(), **kw):
    return Observed(at=at, borrowed_nodes=frozenset(borrowed), lent_nodes=frozenset(lent), **kw)


def _kinds(actions):
    return sorted((a.kind, a.target) for a in actions)


def _run(contracts, seen, now=None, **kw):
    return plan(contracts, seen, starting=False, now=now, limits=LIMITS, **kw)


# ---------------------------------------------------------------------- orphans, on start and always


def test_orphans_are_removed_and_accounted_things_kept():
    contracts = [_c("a-1", Role.BORROWER, S.ACTIVE, "a-v1-0")]
    seen = _seen(borrowed={"a-v1-0", "a-vx-0"}, lent={"n2"},
                 vms=frozenset({"a-v1-0", "a-vy-0"}), switch_peers=frozenset({"h1", "h9"}))
    for starting in (True, False):
        assert _kinds(plan(contracts, seen, starting=starting, limits=LIMITS)) == [
            ("kill_vm", "a-vy-0"), ("remove_node", "a-vx-0"), ("remove_peer", "h9"),
            ("unlend", "n2"),
        ]


def test_each_state_on_restart():
    contracts = [
        _c("p", Role.BORROWER, S.PROPOSED), _c("g", Role.BORROWER, S.AGREED, "g0"),
        _c("v", Role.BORROWER, S.PROVISIONING, "v0"), _c("r", Role.LENDER, S.RECLAIMING, "r0"),
        _c("x", Role.BORROWER, S.ACTIVE, "x0"), _c("l", Role.LENDER, S.ACTIVE, "l0"),
        _c("c", Role.BORROWER, S.CLOSED, "c0"), _c("f", Role.BORROWER, S.FAILED, "f0"),
    ]
    seen = _seen(borrowed={"v0"}, lent={"h1"})
    got = {(a.kind, a.contract_id) for a in plan(contracts, seen, limits=LIMITS) if a.contract_id}
    assert got == {("expire", "p"), ("provision", "g"), ("rollback", "v"),
                   ("finish_reclaim", "r"), ("vanished", "x")}


def test_the_start_only_rules_do_not_fire_during_the_run():
    """Provisioning and agreed contracts are being worked on by the running broker."""
    contracts = [_c("g", Role.BORROWER, S.AGREED, "g0"), _c("v", Role.BORROWER, S.PROVISIONING, "v0"),
                 _c("p", Role.BORROWER, S.PROPOSED, at=90.0)]
    assert _run(contracts, _seen(borrowed={"g0", "v0"})) == []


def test_a_proposal_is_dropped_once_the_offer_would_have_expired():
    contracts = [_c("p", Role.LENDER, S.PROPOSED, at=10.0)]
    assert _run(contracts, _seen(at=69.0)) == []
    [a] = _run(contracts, _seen(at=71.0))
    assert (a.kind, a.contract_id, a.why) == ("expire", "p", "expired without agreement")


def test_a_lent_node_that_lost_its_drain_is_drained_again():
    contracts = [_c("l", Role.LENDER, S.ACTIVE)]
    acts = plan(contracts, _seen(), limits=LIMITS)
    assert [(a.kind, a.target) for a in acts] == [("relend", "h1")]


def test_parts_without_a_probe_are_left_alone():
    assert plan([], _seen(vms=None, switch_peers=None), limits=LIMITS) == []


# ---------------------------------------------------------------------- borrower: node down or gone


def test_a_borrowed_node_down_past_the_grace_ends_the_contract():
    c = _c("x", Role.BORROWER, S.ACTIVE, "x0")
    down_at = {"x0": 70.0}
    # down 29 s: within the grace (the VM may still come back), nothing
    assert _run([c], _seen(at=99.0, borrowed={"x0"}, unhealthy_since=down_at)) == []
    [a] = _run([c], _seen(at=100.0, borrowed={"x0"}, unhealthy_since=down_at))
    assert (a.kind, a.target, a.contract_id) == ("node_down", "x0", "x")
    assert "down or not responding for 30 s" in a.why


def test_a_borrowed_node_the_scheduler_declared_dead_ends_the_contract_without_a_grace():
    c = _c("x", Role.BORROWER, S.ACTIVE, "x0")
    # first seen unhealthy just now, but Slurm already set it down for not responding
    [a] = _run([c], _seen(at=100.0, borrowed={"x0"}, unhealthy_since={"x0": 100.0},
                          dead_nodes=frozenset({"x0"})))
    assert (a.kind, a.target, a.contract_id) == ("node_down", "x0", "x")
    assert "declared dead by the scheduler" in a.why


def test_only_down_and_not_responding_is_declared_dead():
    from broker.scheduler.base import Node

    assert Node("v", "down", responding=False).declared_dead
    assert not Node("v", "down", responding=True).declared_dead  # an administrator's down
    assert not Node("v", "idle", responding=False).declared_dead  # one missed ping: grace
    assert not Node("v", "allocated", responding=False).declared_dead


def test_a_borrowed_node_gone_from_the_scheduler_ends_the_contract_at_once():
    [a] = _run([_c("x", Role.BORROWER, S.ACTIVE, "x0")], _seen(borrowed=()))
    assert (a.kind, a.target) == ("vanished", "x0") and "vanished" in a.why


def test_a_contract_being_worked_on_or_changed_after_the_observation_is_left_alone():
    c = _c("x", Role.BORROWER, S.ACTIVE, "x0", at=50.0)
    assert _run([c], _seen(at=100.0), busy=frozenset({"x"})) == []
    # it became active after the observation began (admission just saw the node): next time
    assert _run([replace(c, updated_at=100.5)], _seen(at=100.0), now=101.0) == []
    assert [a.kind for a in _run([c], _seen(at=100.0))] == ["vanished"]


def test_track_keeps_the_first_time_of_an_unbroken_run():
    since = track({}, {"x0"}, 10.0)
    since = track(since, {"x0", "y0"}, 20.0)
    assert since == {"x0": 10.0, "y0": 20.0}
    since = track(since, {"y0"}, 30.0)  # x0 answered again: its clock starts over next time
    assert track(since, {"x0", "y0"}, 40.0) == {"x0": 40.0, "y0": 20.0}


# ---------------------------------------------------------------------- lender: VM gone, borrower lost


def test_a_lent_vm_gone_past_the_grace_ends_the_contract():
    c = _c("l", Role.LENDER, S.ACTIVE, "l0")
    assert missing_vms([c], frozenset()) == {"l0"} and missing_vms([c], None) == set()
    heard = {"a": 99.0}
    seen = _seen(at=100.0, lent={"h1"}, vms=frozenset(), vm_missing_since={"l0": 80.0},
                 peer_heard=heard)
    assert _run([c], seen) == []
    seen = replace(seen, vm_missing_since={"l0": 70.0})
    [a] = _run([c], seen)
    assert (a.kind, a.target, a.contract_id) == ("vm_gone", "l0", "l")
    # a VM probe that failed this time (None) decides nothing
    assert _run([c], replace(seen, vms=None)) == []


def test_a_borrower_not_heard_from_past_the_timeout_loses_its_hosts():
    for state in (S.AGREED, S.PROVISIONING, S.ACTIVE):
        c = _c("l", Role.LENDER, state, "l0", at=10.0)
        seen = _seen(at=200.0, lent={"h1"}, peer_heard={"a": 81.0})
        assert _run([c], seen) == []
        [a] = _run([c], replace(seen, peer_heard={"a": 80.0}))
        assert (a.kind, a.target, a.contract_id) == ("peer_lost", "a", "l")
        assert "not heard from for 120 s" in a.why
    # the clock starts with the contract: a borrower that agreed a moment ago is not lost
    fresh = _c("l", Role.LENDER, S.ACTIVE, "l0", at=190.0)
    assert _run([fresh], _seen(at=200.0, lent={"h1"}, peer_heard={"a": 0.0})) == []


def test_the_borrower_has_no_peer_lost_rule():
    """A borrower keeps a node that still answers its scheduler, whatever its lender says."""
    c = _c("x", Role.BORROWER, S.ACTIVE, "x0", at=10.0)
    assert _run([c], _seen(at=1000.0, borrowed={"x0"}, peer_heard={"b": 0.0})) == []


# ---------------------------------------------------------------------- the peer's view


def test_a_contract_the_peer_holds_closed_or_not_at_all_is_ended_on_our_side():
    mine = [_c("x", Role.BORROWER, S.ACTIVE, "x0", at=5.0),
            _c("y", Role.BORROWER, S.ACTIVE, "y0", at=5.0),
            _c("z", Role.BORROWER, S.ACTIVE, "z0", at=5.0),
            _c("p", Role.BORROWER, S.PROPOSED, at=5.0)]
    asked = {c.id: c.updated_at for c in mine}
    view = {"x": "active", "y": "closed"}  # z unknown to the peer (compacted, or never had it)
    got = peer_view(mine, "b", asked, view)
    assert [(a.kind, a.contract_id) for a in got] == [("peer_closed", "y"), ("peer_closed", "z")]
    assert "b's side is closed" in got[0].why and "no such contract" in got[1].why


def test_the_peer_view_judges_only_what_the_heartbeat_asked_about_unchanged():
    c = _c("y", Role.LENDER, S.ACTIVE, "y0", at=5.0)
    assert peer_view([c], "a", {}, {}) == []  # not in our heartbeat
    assert peer_view([replace(c, updated_at=6.0)], "a", {"y": 5.0}, {}) == []  # moved since
    assert peer_view([c], "a", {"y": 5.0}, {}, busy=frozenset({"y"})) == []
    assert peer_view([c], "b", {"y": 5.0}, {}) == []  # another peer's answer
    assert [a.kind for a in peer_view([c], "a", {"y": 5.0}, {"y": "failed"})] == ["peer_closed"]
