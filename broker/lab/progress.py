"""What a playbook run is doing, from ansible-runner's events: a plain model, no I/O.

Fed the events of one ``ansible-playbook`` run (ansible-runner's ``event_handler`` dicts:
``event`` and ``event_data`` with ``play``, ``task``, ``host``, ``res``) and the time, it
returns the lines to show:

- on a terminal (``tty=True``), one *transient* status line the caller redraws in place
  (play, task, hosts done, seconds on the task) and one lasting line per play when it ends:
  ``play 3/10 Slurm controller on each head node [heads]: 2/2 hosts done, 5 changed, 12 s``;
- elsewhere (a log, a pipe), plain lines: the play when it starts, each task when it starts,
  the play's outcome when it ends, and ``still on ...`` when a task runs long;
- in both, a line at once for every failure naming the host, the task and the message, and a
  recap at the end: changed and failed counts per host and the time the run took.

The caller keeps the run's full output (each event's ``stdout``) elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

TASK_STARTS = ("playbook_on_task_start", "playbook_on_handler_task_start")
RESULTS = ("runner_on_ok", "runner_on_skipped", "runner_on_failed", "runner_on_unreachable")
STATS = ("ok", "changed", "failures", "dark", "skipped", "rescued", "ignored", "processed")
MESSAGE_CHARS = 300


@dataclass(frozen=True)
class Line:
    text: str
    transient: bool = False  # a status line: the next line (of either kind) replaces it


@dataclass(frozen=True)
class Failure:
    host: str
    task: str
    message: str
    unreachable: bool = False

    def __str__(self) -> str:
        what = "UNREACHABLE" if self.unreachable else "FAILED"
        return f"{what} {self.host}: {self.task}: {self.message}"


def duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes} min {rest:02d} s"


def _count(shown: str, n: int, noun: str) -> str:
    return f"{shown} {noun}" + ("" if n == 1 else "s")


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


def failure_message(res: Mapping[str, Any]) -> str:
    """The useful part of a failed or unreachable result, on one line."""
    results = res.get("results")
    if isinstance(results, list):  # a loop: the first item that failed says why
        for item in results:
            if isinstance(item, Mapping) and (item.get("failed") or item.get("unreachable")):
                label = item.get("_ansible_item_label", item.get("item"))
                return _one_line(f"item {label}: {failure_message(item)}")[:MESSAGE_CHARS]
    msg = _one_line(res.get("msg") or "")
    if msg.startswith("Task failed: "):
        msg = msg[len("Task failed: "):]
    details = [_one_line(res.get(key) or "") for key in ("module_stderr", "stderr", "stdout")]
    detail = next((d for d in details if d), "")
    rc = res.get("rc")
    if not msg or msg == "non-zero return code" or msg.startswith("MODULE FAILURE"):
        head = msg or "failed"
        if rc not in (None, 0):
            head += f" (rc {rc})"
        msg = f"{head}: {detail}" if detail else head
    return msg[:MESSAGE_CHARS] or "failed (no message)"


@dataclass
class _Play:
    index: int
    name: str
    pattern: str
    started: float
    hosts: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    changed: int = 0
    tasks: int = 0


@dataclass
class _Task:
    name: str
    started: float
    hosts: set[str] = field(default_factory=set)
    done: set[str] = field(default_factory=set)
    retry: str = ""


class Progress:
    """One playbook run's progress; ``feed`` each event, ``tick`` now and then, ``finish``."""

    def __init__(self, name: str = "the playbook", plays_total: int | None = None,
                 tty: bool = False, still_every_s: float = 60.0) -> None:
        self.name = name
        self.plays_total = plays_total
        self.tty = tty
        self.still_every_s = still_every_s
        self.started: float | None = None
        self.play: _Play | None = None
        self.task: _Task | None = None
        self.plays = 0
        self.tasks = 0
        self.failures: list[Failure] = []
        self.errors: list[str] = []
        self.ignored = 0
        self.stats: dict[str, dict[str, int]] | None = None
        self._last_plain = 0.0
        self._after_error = False

    # --- what the caller asks --------------------------------------------------------------

    @property
    def changed(self) -> dict[str, int]:
        """Hosts the run changed something on, with the count (from the final recap)."""
        return {h: n for h, n in (self.stats or {}).get("changed", {}).items() if n}

    def feed(self, event: Mapping[str, Any], now: float) -> list[Line]:
        kind = str(event.get("event", ""))
        data: Mapping[str, Any] = event.get("event_data") or {}
        if self.started is None:
            self.started = now
        if kind == "playbook_on_play_start":
            return self._start_play(data, now)
        if kind in TASK_STARTS:  # a handler's start comes as a task's, its output says which
            handler = kind == TASK_STARTS[1] or "RUNNING HANDLER" in str(event.get("stdout") or "")
            return self._start_task(data, now, handler)
        if kind == "runner_on_start":
            host = str(data.get("host", ""))
            if self.task is not None:
                self.task.hosts.add(host)
            if self.play is not None:
                self.play.hosts.add(host)
            return self._status(now)
        if kind in RESULTS:
            return self._result(kind, data, now)
        if kind == "runner_retry":
            res = data.get("res") or {}
            if self.task is not None:
                self.task.retry = (f"retry {res.get('attempts', '?')}/{res.get('retries', '?')} "
                                   f"on {data.get('host', '?')}")
            return self._status(now)
        if kind == "playbook_on_no_hosts_remaining":
            return [Line("  no hosts left to run on: the playbook stops")]
        if kind == "playbook_on_stats":
            return self._recap(data, now)
        if kind == "verbose":
            return self._verbose(str(event.get("stdout") or "").strip())
        return []

    def tick(self, now: float) -> list[Line]:
        """Between events: the status line again (a terminal), or a ``still on`` line after a
        long silence (elsewhere)."""
        if self.task is None:
            return []
        if self.tty:
            return self._status(now)
        if now - self._last_plain < self.still_every_s:
            return []
        self._last_plain = now
        return [Line(f"    still on {self.task.name}: {self._hosts_done()} hosts done, "
                     f"{duration(now - self.task.started)} on it")]

    def finish(self, now: float, status: str = "") -> list[Line]:
        """The end of the run: nothing more to say when the recap came, else why it stopped."""
        if self.stats is not None:
            return []
        lines = self._end_play(now)
        started = self.started if self.started is not None else now
        lines.append(Line(f"{self.name} stopped ({status or 'no recap'}) after "
                          f"{duration(now - started)}"))
        return lines

    # --- events ----------------------------------------------------------------------------

    def _verbose(self, text: str) -> list[Line]:
        """Output outside the callback: errors of the run itself, and the file they point at."""
        after_error, self._after_error = self._after_error, False
        if text.startswith(("[ERROR]", "ERROR!")):
            self.errors.append(text)
            self._after_error = True
            return [Line(f"  error: {text}")]
        if after_error and text.startswith("Origin:"):
            self.errors[-1] += f" ({text})"
            return [Line(f"    {text}")]
        return []

    def _plain(self, text: str, now: float) -> Line:
        self._last_plain = now
        return Line(text)

    def _play_title(self, play: _Play) -> str:
        total = f"/{self.plays_total}" if self.plays_total else ""
        return f"play {play.index}{total} {play.name} [{play.pattern}]"

    def _start_play(self, data: Mapping[str, Any], now: float) -> list[Line]:
        lines = self._end_play(now)
        self.plays += 1
        self.play = _Play(self.plays, str(data.get("play") or data.get("name") or "(unnamed)"),
                          str(data.get("play_pattern") or data.get("pattern") or "?"), now)
        if self.tty:
            return lines + self._status(now)
        return lines + [self._plain(self._play_title(self.play), now)]

    def _start_task(self, data: Mapping[str, Any], now: float, handler: bool) -> list[Line]:
        self.tasks += 1
        name = str(data.get("task") or data.get("name") or "(unnamed)")
        if handler:
            name = f"handler {name}"
        self.task = _Task(name, now)
        if self.play is not None:
            self.play.tasks += 1
        if self.tty:
            return self._status(now)
        return [self._plain(f"  - {self.task.name}", now)]

    def _result(self, kind: str, data: Mapping[str, Any], now: float) -> list[Line]:
        host = str(data.get("host", "?"))
        res: Mapping[str, Any] = data.get("res") or {}
        task = str(data.get("task") or (self.task.name if self.task else "?"))
        if self.task is not None:
            self.task.hosts.add(host)
            self.task.done.add(host)
            self.task.retry = ""
        if self.play is not None:
            self.play.hosts.add(host)
        if kind == "runner_on_ok":
            if res.get("changed") and self.play is not None:
                self.play.changed += 1
            return self._status(now)
        if kind == "runner_on_skipped":
            return self._status(now)
        if kind == "runner_on_failed" and data.get("ignore_errors"):
            self.ignored += 1
            return self._status(now)
        failure = Failure(host, task, failure_message(res), kind == "runner_on_unreachable")
        self.failures.append(failure)
        if self.play is not None:
            self.play.failed.add(host)
        return [self._plain(f"  {failure}", now)] + self._status(now)

    def _hosts_done(self) -> str:
        task = self.task
        if task is None:
            return "0/0"
        active = (self.play.hosts - self.play.failed) if self.play is not None else set()
        total = len(task.hosts | active)
        return f"{len(task.done)}/{total}"

    def _status(self, now: float) -> list[Line]:
        if not self.tty or self.play is None:
            return []
        play = self.play
        total = f"/{self.plays_total}" if self.plays_total else ""
        if self.task is None or play.tasks == 0:
            return [Line(f"play {play.index}{total} [{play.pattern}] starting: {play.name}", True)]
        task = self.task
        retry = f" ({task.retry})" if task.retry else ""
        return [Line(f"play {play.index}{total} [{play.pattern}] {self._hosts_done()} hosts "
                     f"{duration(now - task.started)}{retry}: {task.name} - {play.name}", True)]

    def _end_play(self, now: float) -> list[Line]:
        play, self.play, self.task = self.play, None, None
        if play is None:
            return []
        total = len(play.hosts)
        if total == 0:
            outcome = "no host ran a task"
        else:
            outcome = (f"{total - len(play.failed)}/{total} hosts done, {play.changed} changed, "
                       f"{duration(now - play.started)}")
            if play.failed:
                outcome += f"; failed on {', '.join(sorted(play.failed))}"
        if self.tty:
            return [Line(f"{self._play_title(play)}: {outcome}")]
        return [self._plain(f"  play {play.index}: {outcome}", now)]

    def _recap(self, data: Mapping[str, Any], now: float) -> list[Line]:
        lines = self._end_play(now)
        self.stats = {key: dict(data.get(key) or {}) for key in STATS}
        hosts = sorted(set().union(*(set(v) for v in self.stats.values())))
        started = self.started if self.started is not None else now
        failed = sorted(h for h in hosts
                        if self.stats["failures"].get(h) or self.stats["dark"].get(h))
        changes = sum(self.stats["changed"].values())
        plays = f"{self.plays} of {self.plays_total}" if self.plays_total else f"{self.plays}"
        lines.append(Line(f"recap: {_count(plays, self.plays_total or self.plays, 'play')}, "
                          f"{_count(str(self.tasks), self.tasks, 'task')} in "
                          f"{duration(now - started)}; {changes} changed on "
                          f"{len(self.changed)}/{len(hosts)} hosts; "
                          f"failed: {', '.join(failed) if failed else 'none'}"))
        width = max((len(h) for h in hosts), default=0)
        for host in hosts:
            counts = {key: self.stats[key].get(host, 0) for key in self.stats}
            text = f"  {host:<{width}}  changed {counts['changed']:>3}  failed {counts['failures']}"
            if counts["dark"]:
                text += f"  unreachable {counts['dark']}"
            if counts["rescued"]:
                text += f"  rescued {counts['rescued']}"
            if counts["ignored"]:
                text += f"  ignored {counts['ignored']}"
            lines.append(Line(text))
        return lines
