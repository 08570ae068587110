"""The progress of a playbook run from ansible-runner's events (broker/lab/progress.py, no I/O),
and one real run of a small playbook on this machine through ansible-runner (playrun.py).

The recorded events keep the shape ansible-runner 2.4 gives an ``event_handler`` with
ansible-core 2.19: ``event``, ``counter``, ``stdout`` (``\\r\\n`` line ends), ``start_line``,
``end_line``, ``created`` and ``event_data`` (``play``, ``play_pattern``, ``task``, ``host``,
``res``, ``ignore_errors``). A handler starts with ``playbook_on_task_start`` too.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.lab.progress import Line, Progress, duration, failure_message
from broker.lab.playrun import count_plays, run_playbook

REPO = Path(__file__).resolve().parents[2]
PLAYBOOK = "/srv/site.yml"


class Recorder:
    """Events as ansible-runner emits them, numbered, each at a given second."""

    def __init__(self) -> None:
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.line = 0
        self.play: dict[str, str] = {}
        self.task = ""

    def _emit(self, at: float, kind: str, stdout: str = "", **data: Any) -> None:
        lines = stdout.count("\r\n") + 1 if stdout else 0
        event = {
            "uuid": f"uuid-{len(self.events) + 1}", "counter": len(self.events) + 1,
            "stdout": stdout, "start_line": self.line, "end_line": self.line + lines,
            "runner_ident": "site", "event": kind, "pid": 4242,
            "created": f"2026-01-01T00:00:{at:09.6f}+00:00",
            "event_data": {"playbook": PLAYBOOK, "playbook_uuid": "pb", **self.play, **data},
        }
        self.line += lines
        self.events.append((at, event))

    def start(self, at: float) -> None:
        self._emit(at, "playbook_on_start")

    def play_start(self, at: float, name: str, pattern: str) -> None:
        self.play = {"play": name, "play_uuid": f"play-{name}", "play_pattern": pattern}
        self._emit(at, "playbook_on_play_start", f"\r\nPLAY [{name}] {'*' * 20}",
                   name=name, pattern=pattern)

    def task_start(self, at: float, task: str, handler: bool = False) -> None:
        self.task = task
        head = "RUNNING HANDLER" if handler else "TASK"
        self._emit(at, "playbook_on_task_start", f"\r\n{head} [{task}] {'*' * 20}", task=task,
                   name=task, task_action="ansible.builtin.command", task_path=f"{PLAYBOOK}:9")

    def host_start(self, at: float, host: str) -> None:
        self._emit(at, "runner_on_start", task=self.task, host=host)

    def ok(self, at: float, host: str, changed: bool = False) -> None:
        self._emit(at, "runner_on_ok", f"{'changed' if changed else 'ok'}: [{host}]",
                   task=self.task, host=host, remote_addr=host,
                   res={"changed": changed, "rc": 0, "stdout": ""})

    def skipped(self, at: float, host: str) -> None:
        self._emit(at, "runner_on_skipped", f"skipping: [{host}]", task=self.task, host=host)

    def failed(self, at: float, host: str, res: dict[str, Any], ignore: bool = False) -> None:
        self._emit(at, "runner_on_failed", f"fatal: [{host}]: FAILED! => {{...}}",
                   task=self.task, host=host, remote_addr=host, res=res,
                   ignore_errors=True if ignore else None)

    def unreachable(self, at: float, host: str, msg: str) -> None:
        self._emit(at, "runner_on_unreachable", f"fatal: [{host}]: UNREACHABLE! => {{...}}",
                   task=self.task, host=host,
                   res={"unreachable": True, "msg": msg, "changed": False})

    def retry(self, at: float, host: str, attempts: int, retries: int) -> None:
        self._emit(at, "runner_retry", f"FAILED - RETRYING: [{host}]: {self.task} ", task=self.task,
                   host=host, res={"attempts": attempts, "retries": retries})

    def stats(self, at: float, **stats: dict[str, int]) -> None:
        self.play = {}
        full = {key: stats.get(key, {}) for key in
                ("changed", "dark", "failures", "ignored", "ok", "processed", "rescued", "skipped")}
        self._emit(at, "playbook_on_stats", f"\r\nPLAY RECAP {'*' * 20}\r\n...", **full,
                   artifact_data={})


def _site_run() -> Recorder:
    """Two plays on a small cluster: a change, a skip, a handler, a failure ignored, then a
    failure on one head node."""
    r = Recorder()
    r.start(0.0)
    r.play_start(0.1, "Virtual network on every host", "heads:computes")
    r.task_start(0.2, "Gathering Facts")
    for h in ("a-head", "a-node1", "b-head"):
        r.host_start(0.2, h)
    r.ok(2.0, "a-head")
    r.ok(2.1, "a-node1")
    r.ok(2.5, "b-head")
    r.task_start(2.6, "violin_tap : Create the TAP")
    for h in ("a-head", "a-node1", "b-head"):
        r.host_start(2.6, h)
    r.ok(3.0, "a-head", changed=True)
    r.skipped(3.1, "a-node1")
    r.failed(3.2, "b-head", {"msg": "non-zero return code", "rc": 1, "stderr": ""}, ignore=True)
    r.task_start(3.3, "violin_tap : Restart the switch", handler=True)
    r.host_start(3.3, "a-head")
    r.ok(4.0, "a-head", changed=True)
    r.play_start(4.1, "Slurm controller on each head node", "heads")
    r.task_start(4.2, "slurm : Wait for slurmctld")
    r.host_start(4.2, "a-head")
    r.host_start(4.2, "b-head")
    r.retry(10.0, "b-head", 1, 30)
    r.ok(11.0, "a-head", changed=True)
    r.failed(75.0, "b-head", {"msg": "non-zero return code", "rc": 1,
                              "stderr": "slurmctld: error: Unable to bind\nlisten port 6817"})
    r.stats(75.5, changed={"a-head": 3}, failures={"b-head": 1}, ignored={"b-head": 1},
            ok={"a-head": 4, "a-node1": 1, "b-head": 1}, skipped={"a-node1": 1},
            processed={"a-head": 1, "a-node1": 1, "b-head": 1})
    return r


def _feed(model: Progress, recorder: Recorder) -> list[Line]:
    out: list[Line] = []
    for at, event in recorder.events:
        out.extend(model.feed(event, at))
    return out


def test_plain_lines_name_each_play_and_task_and_every_failure():
    model = Progress("site.yml", plays_total=2, tty=False)
    lines = _feed(model, _site_run())
    assert all(not line.transient for line in lines)
    assert [line.text for line in lines] == [
        "play 1/2 Virtual network on every host [heads:computes]",
        "  - Gathering Facts",
        "  - violin_tap : Create the TAP",
        "  - handler violin_tap : Restart the switch",
        "  play 1: 3/3 hosts done, 2 changed, 4 s",
        "play 2/2 Slurm controller on each head node [heads]",
        "  - slurm : Wait for slurmctld",
        "  FAILED b-head: slurm : Wait for slurmctld: non-zero return code (rc 1): "
        "slurmctld: error: Unable to bind listen port 6817",
        "  play 2: 1/2 hosts done, 1 changed, 1 min 11 s; failed on b-head",
        "recap: 2 of 2 plays, 4 tasks in 1 min 16 s; 3 changed on 1/3 hosts; failed: b-head",
        "  a-head   changed   3  failed 0",
        "  a-node1  changed   0  failed 0",
        "  b-head   changed   0  failed 1  ignored 1",
    ]
    assert model.changed == {"a-head": 3}
    assert [(f.host, f.task) for f in model.failures] == [("b-head", "slurm : Wait for slurmctld")]
    assert model.finish(76.0, "failed") == []


def test_on_a_terminal_one_status_line_and_one_lasting_line_per_play():
    model = Progress("site.yml", plays_total=2, tty=True)
    lines = _feed(model, _site_run())
    lasting = [line.text for line in lines if not line.transient]
    assert lasting[:3] == [
        "play 1/2 Virtual network on every host [heads:computes]: 3/3 hosts done, 2 changed, 4 s",
        "  FAILED b-head: slurm : Wait for slurmctld: non-zero return code (rc 1): "
        "slurmctld: error: Unable to bind listen port 6817",
        "play 2/2 Slurm controller on each head node [heads]: 1/2 hosts done, 1 changed, "
        "1 min 11 s; failed on b-head",
    ]
    assert lasting[3].startswith("recap: 2 of 2 plays, 4 tasks in 1 min 16 s")
    status = [line.text for line in lines if line.transient]
    assert ("play 1/2 [heads:computes] 3/3 hosts 2 s: Gathering Facts - "
            "Virtual network on every host") in status
    assert "play 2/2 [heads] 0/2 hosts 6 s (retry 1/30 on b-head): slurm : Wait for slurmctld - " \
           "Slurm controller on each head node" in status
    # between events the status line keeps counting the task's seconds
    model2 = Progress("site.yml", plays_total=2, tty=True)
    recorder = _site_run()
    for at, event in recorder.events:
        if at > 11.0:
            break
        model2.feed(event, at)
    assert model2.tick(40.0) == [Line("play 2/2 [heads] 1/2 hosts 36 s: slurm : Wait for "
                                      "slurmctld - Slurm controller on each head node", True)]


def test_plain_mode_says_still_on_a_long_task_once_a_minute():
    model = Progress("site.yml", tty=False, still_every_s=60.0)
    recorder = _site_run()
    for at, event in recorder.events:
        if at > 11.0:
            break
        model.feed(event, at)
    assert model.tick(30.0) == []
    assert model.tick(64.3) == [Line("    still on slurm : Wait for slurmctld: 1/2 hosts done, "
                                     "1 min 00 s on it")]
    assert model.tick(100.0) == []
    assert model.tick(124.4) != []


def test_unreachable_hosts_and_loop_failures_name_host_task_and_message():
    r = Recorder()
    r.play_start(0.0, "Lending hosts", "lending_hosts")
    r.task_start(0.1, "Gathering Facts")
    r.host_start(0.1, "b-node1")
    r.host_start(0.1, "b-node2")
    r.unreachable(0.5, "b-node2", "Task failed: Failed to connect to the host via ssh: ssh: "
                                  "connect to host 10.203.2.12 port 22: Connection refused")
    r.ok(1.0, "b-node1")
    r.task_start(1.1, "lending_host : Copy the base image")
    r.host_start(1.1, "b-node1")
    r.failed(2.0, "b-node1", {"msg": "One or more items failed", "changed": False, "results": [
        {"changed": False, "item": "node", "_ansible_item_label": "node"},
        {"failed": True, "msg": "Destination /var/lib/vm not writable", "item": "swap",
         "_ansible_item_label": "swap"}]})
    model = Progress("site.yml", tty=False)
    texts = [line.text for line in _feed(model, r)]
    assert ("  UNREACHABLE b-node2: Gathering Facts: Failed to connect to the host via ssh: ssh: "
            "connect to host 10.203.2.12 port 22: Connection refused") in texts
    assert ("  FAILED b-node1: lending_host : Copy the base image: item swap: Destination "
            "/var/lib/vm not writable") in texts
    # the task after the unreachable host counts only the host left
    assert model._hosts_done() == "1/1"
    end = [line.text for line in model.finish(3.0, "failed")]
    assert end == ["  play 1: 0/2 hosts done, 0 changed, 3 s; failed on b-node1, b-node2",
                   "site.yml stopped (failed) after 3 s"]


def test_failure_messages_keep_what_helps():
    assert failure_message({"msg": "MODULE FAILURE\nSee stdout/stderr for the exact error",
                            "module_stderr": "Traceback ...\nImportError: no module named apt\n",
                            "rc": 1}) == (
        "MODULE FAILURE See stdout/stderr for the exact error (rc 1): Traceback ... "
        "ImportError: no module named apt")
    assert failure_message({"msg": "Task failed: Could not find the requested service munge"}) == (
        "Could not find the requested service munge")
    assert failure_message({"rc": 2, "stdout": "", "stderr": ""}) == "failed (rc 2)"
    assert len(failure_message({"msg": "x" * 1000})) == 300


def test_errors_of_the_run_itself_are_shown():
    model = Progress("site.yml")
    error = "[ERROR]: the playbook: site.yml could not be found"
    lines = model.feed({"event": "verbose", "stdout": error, "event_data": {}}, 0.0)
    assert lines == [Line("  error: [ERROR]: the playbook: site.yml could not be found")]
    warning = {"event": "verbose", "stdout": "[WARNING]: a warning", "event_data": {}}
    assert model.feed(warning, 0.1) == []
    origin = {"event": "verbose", "stdout": "Origin: /srv/roles/munge/meta/main.yml:41:7",
              "event_data": {}}
    assert model.feed(origin, 0.2) == []  # not after an error
    parse = "[ERROR]: YAML parsing failed: could not find expected ':'."
    assert model.feed({"event": "verbose", "stdout": parse, "event_data": {}}, 0.3) == [
        Line(f"  error: {parse}")]
    assert model.feed(origin, 0.4) == [Line("    Origin: /srv/roles/munge/meta/main.yml:41:7")]
    assert model.errors == [error, f"{parse} (Origin: /srv/roles/munge/meta/main.yml:41:7)"]
    assert model.finish(1.0, "failed") == [Line("site.yml stopped (failed) after 1 s")]


def test_durations():
    assert [duration(s) for s in (0.2, 59.4, 60, 192.6, 3600)] == [
        "0 s", "59 s", "1 min 00 s", "3 min 13 s", "60 min 00 s"]


def test_plays_are_counted_through_imports(tmp_path: Path):
    (tmp_path / "inner.yml").write_text("- hosts: a\n  tasks: []\n- hosts: b\n  tasks: []\n")
    (tmp_path / "outer.yml").write_text("- import_playbook: inner.yml\n- hosts: c\n  tasks: []\n")
    assert count_plays(tmp_path / "outer.yml") == 3
    assert count_plays(tmp_path / "missing.yml") is None
    (tmp_path / "fqcn.yml").write_text("- ansible.builtin.import_playbook: outer.yml\n")
    assert count_plays(tmp_path / "fqcn.yml") == 3
    site = REPO / "playbooks" / "site.yml"
    own = [entry for entry in yaml.safe_load(site.read_text()) if "hosts" in entry]
    assert count_plays(site) >= len(own) > 0


TINY = """\
- name: Two local hosts
  hosts: all
  gather_facts: false
  tasks:
    - name: Say hello
      ansible.builtin.command: echo hello
    - name: Break on h2
      ansible.builtin.command: sh -c 'echo no disk >&2; exit 3'
      when: inventory_hostname == 'h2'
    - name: After
      ansible.builtin.debug:
        msg: after
"""


@pytest.mark.slow
def test_a_real_run_through_ansible_runner(tmp_path: Path):
    """A real ansible-playbook run on this machine (connection local): its output goes to the
    log file whole, the progress names the failure and ends with the recap."""
    (tmp_path / "tiny.yml").write_text(TINY)
    python = sys.executable
    (tmp_path / "hosts").write_text(
        f"h1 ansible_connection=local ansible_python_interpreter={python}\n"
        f"h2 ansible_connection=local ansible_python_interpreter={python}\n")
    shown: list[str] = []
    env = {"ANSIBLE_NOCOLOR": "1",
           "PATH": f"{Path(python).parent}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"}
    run = run_playbook(tmp_path / "tiny.yml", tmp_path / "hosts", tmp_path / "out" / "tiny.log",
                       show=shown.append, envvars=env, name="tiny.yml")
    assert not run.ok and run.rc != 0
    assert [(f.host, f.task, f.message) for f in run.failures] == [
        ("h2", "Break on h2", "non-zero return code (rc 3): no disk")]
    assert run.changed == {"h1": 1, "h2": 1}
    assert shown[:4] == ["play 1/1 Two local hosts [all]", "  - Say hello", "  - Break on h2",
                         "  FAILED h2: Break on h2: non-zero return code (rc 3): no disk"]
    assert shown[-3].startswith("recap: 1 of 1 play, 3 tasks in ")
    assert shown[-3].endswith("; 2 changed on 2/2 hosts; failed: h2")
    assert shown[-2:] == ["  h1  changed   1  failed 0", "  h2  changed   1  failed 1"]
    log = (tmp_path / "out" / "tiny.log").read_text()
    assert "PLAY [Two local hosts] **" in log and "TASK [Break on h2] **" in log
    assert "fatal: [h2]: FAILED!" in log and "PLAY RECAP **" in log and "\r" not in log
