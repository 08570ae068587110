"""Running a scheduler's command-line tools, with an optional prefix and environment."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from broker.errors import ConfigError
from broker.scheduler.base import Node, SchedulerAdapter, SchedulerError


@dataclass(frozen=True)
class CommandRunner:
    """``prefix`` goes before every command (for example ``ssh head`` or ``nsenter --net=...``);
    ``env`` is added to the broker's environment (for example ``SLURM_CONF``)."""

    prefix: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    timeout: float = 30.0

    def run(self, *args: str, check: bool = True) -> str:
        argv = [*self.prefix, *args]
        try:
            proc = subprocess.run(
                argv,
                env=dict(os.environ, **self.env),
                capture_output=True,
                text=True,
                timeout=self.timeout,
                stdin=subprocess.DEVNULL,
            )
        except FileNotFoundError:
            raise SchedulerError(
                f"{argv[0]}: command not found; install the scheduler's client tools on the "
                "broker's host or set scheduler.command_prefix"
            ) from None
        except subprocess.TimeoutExpired:
            raise SchedulerError(f"{' '.join(args)}: no answer in {self.timeout:g} s") from None
        if check and proc.returncode != 0:
            said = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
            raise SchedulerError(
                f"{' '.join(args)} failed (status {proc.returncode}): "
                f"{said[-1] if said else 'no message'}"
            )
        return proc.stdout


def runner_from_options(options: dict[str, Any], source: str) -> CommandRunner:
    """Pop ``command_prefix``, ``env`` and ``timeout_s`` from ``options``, checking them."""
    prefix = options.pop("command_prefix", [])
    if not isinstance(prefix, list) or not all(isinstance(p, str) for p in prefix):
        raise ConfigError(f"{source}.command_prefix: expected a list of strings, got {prefix!r}")
    env = options.pop("env", {})
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise ConfigError(f"{source}.env: expected a mapping of strings to strings")
    timeout = options.pop("timeout_s", 30)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ConfigError(f"{source}.timeout_s: expected a number > 0, got {timeout!r}")
    return CommandRunner(tuple(prefix), env, float(timeout))


def reject_unknown(options: dict[str, Any], source: str, allowed: Sequence[str]) -> None:
    extra = sorted(set(options) - set(allowed))
    if extra:
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(extra)}; allowed: "
            f"kind, command_prefix, env, timeout_s, {', '.join(allowed)}"
        )


class CommandAdapter(SchedulerAdapter):
    """A scheduler driven through its command-line tools: the runner and the options every
    such adapter shares (the feature marking borrowed nodes, the reason marking lent ones)."""

    default_poll_s = 0.1

    def __init__(
        self,
        runner: CommandRunner | None = None,
        borrowed_feature: str = "borrowed",
        lent_reason: str = "viocluster-lent",
        poll_s: float | None = None,
    ) -> None:
        self.run = (runner or CommandRunner()).run
        self.borrowed_feature = borrowed_feature
        self.lent_reason = lent_reason
        self.poll_s = self.default_poll_s if poll_s is None else poll_s

    @classmethod
    def from_options(cls, options: dict[str, Any], source: str) -> "CommandAdapter":
        options = dict(options)
        runner = runner_from_options(options, source)
        reject_unknown(options, source, ("borrowed_feature", "lent_reason"))
        return cls(
            runner,
            borrowed_feature=str(options.get("borrowed_feature", "borrowed")),
            lent_reason=str(options.get("lent_reason", "viocluster-lent")),
        )

    # What each adapter reads of one node; remove() below is built on them.
    def _node(self, name: str) -> Node | None:
        raise NotImplementedError

    def _jobs_on(self, name: str) -> tuple[str, ...]:
        raise NotImplementedError

    def _wait_then_delete(self, node: str, timeout: float, taken_off_by: str,
                          delete: Sequence[str]) -> None:
        """The last steps of a removal: wait until no job runs on ``node`` (``taken_off_by``
        requeued them), then run ``delete`` until the scheduler no longer knows the node (it
        refuses while a job is still leaving). Both within ``timeout`` seconds from now."""
        deadline = time.monotonic() + timeout
        while self._jobs_on(node):
            if time.monotonic() > deadline:
                raise SchedulerError(f"jobs still run on {node} {timeout:g} s after {taken_off_by}")
            time.sleep(self.poll_s)
        while True:
            out = self.run(*delete, check=False)
            if self._node(node) is None:
                return
            if time.monotonic() > deadline:
                raise SchedulerError(f"{' '.join(delete)} refused: {out.strip() or 'busy'}")
            time.sleep(self.poll_s)
