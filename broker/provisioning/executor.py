"""Runs the broker's playbooks through ansible-runner.

Each run gets the contract's variables as extra vars, streams every task event into the
broker's log (``broker.provisioning``), and keeps its artifacts under
``<state_dir>/runner/artifacts/<ident>``. :meth:`Executor.provision` runs the borrow playbook
and, if it fails, the reclaim playbook with the same variables plus ``trade_rollback: true`` to
undo what the first run did; the caller then marks the contract failed.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ansible_runner

from broker.errors import UserError

log = logging.getLogger("broker.provisioning")


class PlaybookMissing(UserError):
    """A playbook the broker is configured to run does not exist."""


@dataclass
class RunResult:
    playbook: str
    ident: str
    ok: bool
    status: str
    rc: int | None
    seconds: float
    failed_tasks: list[str] = field(default_factory=list)
    rolled_back: bool | None = None  # None: no rollback was needed

    def summary(self) -> str:
        text = f"{self.playbook} {self.status} (rc={self.rc}) in {self.seconds:.1f} s"
        if self.failed_tasks:
            text += "; failed: " + "; ".join(self.failed_tasks)
        if self.rolled_back is not None:
            text += "; rolled back" if self.rolled_back else "; ROLLBACK FAILED"
        return text


def ansible_playbook() -> str:
    """The ansible-playbook beside this Python (the broker's venv), else the one on PATH."""
    beside = Path(sys.executable).parent / "ansible-playbook"
    if beside.is_file():
        return str(beside)
    found = shutil.which("ansible-playbook")
    if found is None:
        raise PlaybookMissing("ansible-playbook not found; install ansible-core beside the broker")
    return found


class Executor:
    """Playbook runner of one broker."""

    def __init__(
        self,
        playbook_dir: Path,
        private_dir: Path,
        borrow_playbook: str = "borrow.yml",
        reclaim_playbook: str = "reclaim.yml",
        inventory: str | None = None,
        extravars: Mapping[str, Any] | None = None,
        timeout_s: float = 300.0,
    ) -> None:
        self.playbook_dir = Path(playbook_dir)
        self.private_dir = Path(private_dir)
        self.borrow_playbook = borrow_playbook
        self.reclaim_playbook = reclaim_playbook
        self.inventory = inventory
        self.extravars = dict(extravars or {})
        self.timeout_s = timeout_s

    def _envvars(self) -> dict[str, str]:
        """Point Ansible at the bundle's roles, modules and plugins beside the playbooks."""
        root = self.playbook_dir.parent
        bindir = str(Path(ansible_playbook()).parent)
        env = {
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_RETRY_FILES_ENABLED": "0",
            # Ansible's own files in the broker's state, not in a home directory: the broker's
            # account may have none it can write (a service account, a read-only system).
            "ANSIBLE_LOCAL_TEMP": str(self.private_dir / "tmp"),
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(self.private_dir / "cp"),
            "PATH": f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        }
        for var, sub in (
            ("ANSIBLE_ROLES_PATH", "roles"),
            ("ANSIBLE_LIBRARY", "library"),
            ("ANSIBLE_MODULE_UTILS", "module_utils"),
            ("ANSIBLE_FILTER_PLUGINS", "filter_plugins"),
        ):
            if (root / sub).is_dir():
                env[var] = str(root / sub)
        if (root / "ansible.cfg").is_file():
            env["ANSIBLE_CONFIG"] = str(root / "ansible.cfg")
        return env

    def run(self, playbook: str, variables: Mapping[str, Any], ident: str) -> RunResult:
        """Run one playbook to its end; never raises for a failed play (see ``ok``)."""
        path = self.playbook_dir / playbook
        if not path.is_file():
            raise PlaybookMissing(
                f"playbook {path} does not exist; set executor.playbook_dir in the broker config"
            )
        failed: list[str] = []

        def on_event(event: dict[str, Any]) -> bool:
            data = event.get("event_data", {})
            kind = event.get("event", "")
            host = data.get("host", "")
            task = data.get("task", "")
            if kind == "playbook_on_task_start":
                log.info("[%s] TASK %s", ident, task)
            elif kind == "runner_on_ok":
                changed = data.get("res", {}).get("changed")
                log.info("[%s] %s: %s %s", ident, "changed" if changed else "ok", host, task)
            elif kind in ("runner_on_failed", "runner_on_unreachable"):
                res = data.get("res", {})
                msg = res.get("msg") or res.get("stderr") or ""
                if kind == "runner_on_unreachable" or not data.get("ignore_errors"):
                    failed.append(f"{host}: {task}: {str(msg).strip()[:300]}")
                log.warning("[%s] FAILED %s %s: %s", ident, host, task, str(msg).strip()[:300])
            elif kind == "runner_on_skipped":
                log.debug("[%s] skipped %s %s", ident, host, task)
            elif kind == "playbook_on_stats":
                log.info("[%s] stats ok=%s changed=%s failures=%s", ident, data.get("ok"),
                         data.get("changed"), data.get("failures"))
            return True

        extravars = {**self.extravars, **variables}
        log.info("[%s] running %s", ident, playbook)
        start = time.monotonic()
        self.private_dir.mkdir(parents=True, exist_ok=True)
        runner = ansible_runner.run(
            private_data_dir=str(self.private_dir),
            playbook=str(path),
            inventory=self.inventory,
            extravars=extravars,
            ident=ident,
            envvars=self._envvars(),
            event_handler=on_event,
            quiet=True,
            rotate_artifacts=50,
            timeout=int(self.timeout_s),
        )
        result = RunResult(
            playbook=playbook,
            ident=ident,
            ok=runner.status == "successful" and runner.rc == 0,
            status=str(runner.status),
            rc=runner.rc,
            seconds=time.monotonic() - start,
            failed_tasks=failed,
        )
        (log.info if result.ok else log.error)("[%s] %s", ident, result.summary())
        return result

    def provision(self, variables: Mapping[str, Any], ident: str) -> RunResult:
        """Borrow playbook; on failure the reclaim playbook undoes it (``trade_rollback``)."""
        result = self.run(self.borrow_playbook, variables, f"{ident}-borrow")
        if not result.ok:
            undo = self.run(
                self.reclaim_playbook, {**variables, "trade_rollback": True}, f"{ident}-rollback"
            )
            result.rolled_back = undo.ok
        return result

    def reclaim(self, variables: Mapping[str, Any], ident: str) -> RunResult:
        return self.run(self.reclaim_playbook, variables, f"{ident}-reclaim")
