"""The executor runs real playbooks through ansible-runner against localhost."""

from __future__ import annotations

import logging

import pytest

from broker.provisioning import Executor, PlaybookMissing

BORROW = """\
- name: Borrow (test)
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Write the contract's marker
      ansible.builtin.copy:
        dest: "{{ out }}/borrowed-{{ trade_contract_id }}"
        content: "{{ trade_nodes | join(',') }}"
        mode: "0644"
    - name: Fail when told to
      ansible.builtin.fail:
        msg: "boot failed on purpose"
      when: fail_here | default(false) | bool
"""
RECLAIM = """\
- name: Reclaim (test)
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Undo the marker
      ansible.builtin.file:
        path: "{{ out }}/borrowed-{{ trade_contract_id }}"
        state: absent
    - name: Note a rollback
      ansible.builtin.copy:
        dest: "{{ out }}/rolled-back-{{ trade_contract_id }}"
        content: "yes"
        mode: "0644"
      when: trade_rollback | default(false) | bool
"""


@pytest.fixture
def executor(tmp_path):
    books = tmp_path / "playbooks"
    books.mkdir()
    (books / "borrow.yml").write_text(BORROW)
    (books / "reclaim.yml").write_text(RECLAIM)
    inventory = tmp_path / "hosts"
    inventory.write_text("localhost ansible_connection=local ansible_python_interpreter={{ ansible_playbook_python }}\n")
    out = tmp_path / "out"
    out.mkdir()
    ex = Executor(books, tmp_path / "runner", inventory=str(inventory), extravars={"out": str(out)}, timeout_s=120)
    return ex, out


def test_a_borrow_run_streams_its_events_to_the_log(executor, caplog):
    ex, out = executor
    caplog.set_level(logging.INFO, logger="broker.provisioning")
    result = ex.provision({"trade_contract_id": "a-c1", "trade_nodes": ["a-v1", "a-v2"]}, "a-c1")
    assert result.ok and result.rolled_back is None, result.summary()
    assert (out / "borrowed-a-c1").read_text() == "a-v1,a-v2"
    lines = [r.getMessage() for r in caplog.records if r.name == "broker.provisioning"]
    assert any("TASK Write the contract's marker" in line for line in lines)
    assert any(line.startswith("[a-c1-borrow] changed: localhost Write the contract's marker") for line in lines)
    assert any("stats ok=" in line for line in lines)


def test_a_failed_borrow_is_rolled_back(executor, caplog):
    ex, out = executor
    caplog.set_level(logging.INFO, logger="broker.provisioning")
    result = ex.provision({"trade_contract_id": "a-c2", "trade_nodes": ["a-v3"], "fail_here": True}, "a-c2")
    assert not result.ok and result.rolled_back is True
    assert "boot failed on purpose" in result.failed_tasks[0]
    assert not (out / "borrowed-a-c2").exists()
    assert (out / "rolled-back-a-c2").read_text() == "yes"
    assert any("FAILED localhost Fail when told to" in r.getMessage() for r in caplog.records)


def test_a_missing_playbook_is_a_clear_error(tmp_path):
    ex = Executor(tmp_path / "nowhere", tmp_path / "runner")
    with pytest.raises(PlaybookMissing, match="executor.playbook_dir"):
        ex.provision({}, "x")
