"""The contract state machine: every allowed step works, every other one is refused."""

from __future__ import annotations

import itertools

import pytest

from broker.negotiation.contracts import (
    ALLOWED,
    Contract,
    ContractState,
    IllegalTransition,
    Role,
    vm_node_name,
)
from broker.negotiation.messages import Needs, Terms

S = ContractState


def _contract(state: ContractState) -> Contract:
    c, _ = Contract.propose("a-c1", Role.BORROWER, "a", "b", 1, Needs(), Terms(), now=1.0)
    from dataclasses import replace

    return replace(c, state=state)


def test_the_happy_path_and_its_log():
    c, t = Contract.propose("a-c1", Role.BORROWER, "a", "b", 1, Needs(), Terms(), now=1.0)
    assert (c.state, t.from_state, t.to_state) == (S.PROPOSED, None, S.PROPOSED)
    steps = [S.AGREED, S.PROVISIONING, S.ACTIVE, S.RECLAIMING, S.CLOSED]
    for i, to in enumerate(steps):
        before = c.state
        c, t = c.advance(to, now=2.0 + i, reason=f"step {i}")
        assert (t.from_state, t.to_state, c.state, c.updated_at) == (before, to, to, 2.0 + i)
    assert c.state.final


@pytest.mark.parametrize(("frm", "to"), list(itertools.product(S, S)))
def test_only_allowed_steps_pass(frm, to):
    c = _contract(frm)
    if to in ALLOWED[frm]:
        assert c.advance(to, 5.0, "ok")[0].state is to
    else:
        with pytest.raises(IllegalTransition, match=f"from {frm.value} to {to.value}"):
            c.advance(to, 5.0, "no")


def test_every_open_state_can_fail():
    for state in S:
        if not state.final:
            assert S.FAILED in ALLOWED[state]


def test_vm_node_names_are_short_and_safe():
    name = vm_node_name("dom_A", "dom_A-c-0123456789abcdef", 3)
    assert name == "dom-a-v01234567-3"


def test_an_active_contract_shrinks_by_the_hosts_taken_back_and_keeps_its_start():
    from broker.negotiation.messages import HostOffer

    c, _ = Contract.propose("a-c1", Role.LENDER, "a", "b", 2, Needs(), Terms(), now=1.0)
    nodes = (("h1", "a-v1-0"), ("h2", "a-v1-1"))
    offered = tuple(HostOffer(h, h, "vpla", 1, 512, 1, "s") for h, _n in nodes)
    c, _ = c.advance(S.AGREED, 2.0, "agreed", nodes=nodes, offered=offered,
                     addresses=(("a-v1-0", "10.0.0.1/24"), ("a-v1-1", "10.0.0.2/24")))
    c, _ = c.advance(S.PROVISIONING, 3.0, "borrow.yml")
    c, _ = c.advance(S.ACTIVE, 4.0, "joined")
    new, t = c.without(["h1"], 9.0, "took back h1")
    assert (new.state, new.nodes, new.addresses) == (S.ACTIVE, (("h2", "a-v1-1"),),
                                                     (("a-v1-1", "10.0.0.2/24"),))
    assert (t.from_state, t.to_state, t.at, new.updated_at) == (S.ACTIVE, S.ACTIVE, 9.0, 4.0)
    with pytest.raises(IllegalTransition, match="ends it"):
        c.without(["h1", "h2"], 9.0, "all")
    with pytest.raises(IllegalTransition, match="no host h9"):
        c.without(["h9"], 9.0, "unknown")
    with pytest.raises(IllegalTransition, match="only from an active contract"):
        _contract(S.AGREED).without(["h1"], 9.0, "too early")
