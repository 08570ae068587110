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
