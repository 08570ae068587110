"""A playbook run through ansible-runner that says how far it is, with its full output in a log.

The thin I/O around :class:`broker.lab.progress.Progress`: each event's ``stdout`` goes to the
log file as it comes (the same text ``ansible-playbook`` prints), the model's lines go to
``show``, and on a terminal its status line is redrawn in place, once a second between events.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, TextIO

import ansible_runner
import yaml

from broker.lab.progress import Failure, Line, Progress


@dataclass
class PlaybookRun:
    rc: int
    status: str
    seconds: float
    changed: dict[str, int]  # host -> tasks that changed something there
    failures: list[Failure] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # errors of the run itself (syntax, ...)

    @property
    def ok(self) -> bool:
        return self.rc == 0 and self.status == "successful"


def count_plays(playbook: Path) -> int | None:
    """How many plays the playbook has (following import_playbook), or None if unsure."""
    try:
        entries = yaml.safe_load(playbook.read_text())
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(entries, list):
        return None
    total = 0
    for entry in entries:
        if not isinstance(entry, dict):
            return None
        imported = entry.get("import_playbook") or entry.get("ansible.builtin.import_playbook")
        if imported is None:
            total += 1
            continue
        if "{{" in str(imported):
            return None
        inner = count_plays(playbook.parent / str(imported))
        if inner is None:
            return None
        total += inner
    return total


class Terminal:
    """Lasting lines through ``show``; transient ones redrawn in place on ``stream``."""

    def __init__(self, show: Callable[[str], None], stream: TextIO | None) -> None:
        self.show = show
        self.stream = stream
        self.pending = False

    def put(self, lines: list[Line]) -> None:
        for line in lines:
            if line.transient:
                if self.stream is None:
                    continue
                width = shutil.get_terminal_size((100, 24)).columns - 1
                self.stream.write("\r\x1b[K" + line.text[:width])
                self.stream.flush()
                self.pending = True
            else:
                self.clear()
                self.show(line.text)

    def clear(self) -> None:
        if self.pending and self.stream is not None:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
        self.pending = False


def run_playbook(playbook: Path, inventory: Path, logfile: Path, *, show: Callable[[str], None],
                 tty: TextIO | None = None, envvars: Mapping[str, str] | None = None,
                 project_dir: Path | None = None, name: str | None = None,
                 still_every_s: float = 60.0) -> PlaybookRun:
    """Run ``playbook`` and say how far it is; ``tty``: a terminal for the status line
    (None: plain lines only). Its output, as ``ansible-playbook`` prints it, goes to ``logfile``."""
    model = Progress(name or playbook.name, count_plays(playbook), tty=tty is not None,
                     still_every_s=still_every_s)
    term = Terminal(show, tty)
    lock = threading.Lock()
    done = threading.Event()
    logfile.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    with logfile.open("w") as log:
        def on_event(event: dict[str, Any]) -> bool:
            text = event.get("stdout")
            if text or event.get("end_line", 0) > event.get("start_line", 0):
                log.write(str(text or "").replace("\r\n", "\n") + "\n")
                log.flush()
            with lock:
                term.put(model.feed(event, time.monotonic()))
            return True

        def ticker() -> None:
            while not done.wait(1.0):
                with lock:
                    term.put(model.tick(time.monotonic()))

        thread = threading.Thread(target=ticker, name="playbook-progress", daemon=True)
        thread.start()
        private = tempfile.mkdtemp(prefix="vlab-runner-")
        try:
            runner = ansible_runner.run(
                private_data_dir=private,
                project_dir=str(project_dir) if project_dir else None,
                playbook=str(playbook),
                inventory=str(inventory),
                envvars=dict(envvars or {}),
                event_handler=on_event,
                quiet=True,
            )
        finally:
            done.set()
            thread.join(timeout=5)
            shutil.rmtree(private, ignore_errors=True)
        status, rc = str(runner.status), int(runner.rc if runner.rc is not None else -1)
        with lock:
            term.put(model.finish(time.monotonic(), status))
            term.clear()
    return PlaybookRun(rc=rc, status=status, seconds=time.monotonic() - started,
                       changed=model.changed, failures=list(model.failures),
                       errors=list(model.errors))


def stream_if_tty(stream: TextIO = sys.stdout) -> TextIO | None:
    return stream if stream.isatty() else None
