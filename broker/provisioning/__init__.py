"""Provisioning plane: the broker's playbooks run through ansible-runner.

:class:`~broker.provisioning.executor.Executor` runs playbooks/borrow.yml and
playbooks/reclaim.yml with a contract's variables, streams task events into the broker's log
and rolls a failed borrow back.
"""

from broker.provisioning.executor import Executor, PlaybookMissing, RunResult

__all__ = ["Executor", "PlaybookMissing", "RunResult"]
