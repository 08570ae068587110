"""Test helper callback: writes every task result of a play as JSON to $TASK_RESULTS_FILE."""

from __future__ import annotations

import json
import os

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = r"""
name: task_results
type: aggregate
short_description: write task results as JSON to a file (tests)
description: Writes name, changed, failed and the module's result of each task to
  the file named by the TASK_RESULTS_FILE environment variable when the play ends.
requirements: [enable in ansible.cfg or ANSIBLE_CALLBACKS_ENABLED]
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "task_results"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self.results: list[dict] = []

    def _add(self, result, failed: bool) -> None:
        res = dict(result._result)
        res.pop("invocation", None)
        self.results.append({"name": result._task.get_name(), "failed": failed,
                             "changed": bool(res.get("changed")), "msg": str(res.get("msg", "")),
                             "res": res})

    def v2_runner_on_ok(self, result) -> None:
        self._add(result, False)

    def v2_runner_on_failed(self, result, ignore_errors=False) -> None:
        self._add(result, True)

    def v2_playbook_on_stats(self, stats) -> None:
        path = os.environ.get("TASK_RESULTS_FILE")
        if path:
            with open(path, "w") as f:
                json.dump(self.results, f, default=str)
