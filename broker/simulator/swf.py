"""Standard Workload Format (SWF) reader: .swf or .swf.gz, header and 18 fields a job.

Header lines start with ``;`` (``; MaxProcs: 338``); every other non-blank line is one job of
18 whitespace-separated numbers, -1 meaning unknown. A malformed line raises
:class:`broker.errors.TraceError` naming ``file:line`` and what was expected. A well-formed line
whose job cannot be replayed (no processor count, no submit time) is read all the same: the
workload (:func:`broker.simulator.workload.from_trace`) leaves it out, or refuses it.
"""

from __future__ import annotations

import gzip
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from broker.errors import TraceError

FIELDS = (
    "job_id", "submit", "wait", "runtime", "alloc_procs", "avg_cpu", "used_mem", "req_procs",
    "req_time", "req_mem", "status", "user", "group", "app", "queue", "partition",
    "prev_job", "think",
)
_HEADER = re.compile(r"^;\s*([A-Za-z][A-Za-z0-9 _-]*?)\s*:\s*(.*?)\s*$")
_LEADING_INT = re.compile(r"^\s*(-?\d+)")


@dataclass(frozen=True, slots=True)
class SwfJob:
    """One SWF job line; -1 where the log does not know."""

    job_id: int
    submit: int
    wait: int
    runtime: int
    alloc_procs: int
    avg_cpu: float
    used_mem: float
    req_procs: int
    req_time: int
    req_mem: float
    status: int
    user: int
    group: int
    app: int
    queue: int
    partition: int
    prev_job: int
    think: int

    @property
    def procs(self) -> int:
        """Processors the job used (allocated, else requested)."""
        return self.alloc_procs if self.alloc_procs > 0 else self.req_procs


class Trace:
    """A parsed SWF log: header keys, one row of 18 numbers a job (``data``, float64) and the
    line of the file each row came from (``lines``)."""

    def __init__(self, path: str, header: dict[str, str], data: np.ndarray,
                 lines: np.ndarray | None = None) -> None:
        self.path = path
        self.header = header
        self.data = data
        self.lines = lines if lines is not None else np.arange(1, len(data) + 1)

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def column(self, name: str) -> np.ndarray:
        return self.data[:, FIELDS.index(name)]

    @property
    def jobs(self) -> list[SwfJob]:
        """The jobs as records (built on demand; the simulator reads ``data`` directly)."""
        out = []
        for row in self.data.tolist():
            values = [v if i in (5, 6, 9) else int(v) for i, v in enumerate(row)]
            out.append(SwfJob(*values))
        return out

    @property
    def procs(self) -> np.ndarray:
        """Processors of each job: allocated (field 5), else requested (field 8)."""
        alloc = self.data[:, 4]
        return np.where(alloc > 0, alloc, self.data[:, 7]).astype(np.int64)

    def header_int(self, key: str) -> int | None:
        """The leading integer of a header value (``MaxNodes: 338 (batch ...)`` -> 338)."""
        value = self.header.get(key)
        match = _LEADING_INT.match(value) if value is not None else None
        if match and int(match.group(1)) > 0:
            return int(match.group(1))
        return None

    @property
    def max_procs(self) -> int | None:
        """Default capacity: header MaxProcs, else MaxNodes."""
        return self.header_int("MaxProcs") or self.header_int("MaxNodes")

    @property
    def largest_job(self) -> int:
        return int(self.procs.max()) if len(self) else 0

    @property
    def unix_start(self) -> int:
        return self.header_int("UnixStartTime") or 0


_INT_FIELDS = frozenset(range(18)) - {5, 6, 9}


def _number(text: str, index: int) -> int | float:
    if index in _INT_FIELDS:
        try:
            return int(text)
        except ValueError:
            value = float(text)  # some logs write 12.0 for integers
            if value != int(value):
                raise
            return int(value)
    return float(text)


def _check_line(line: str, lineno: int, path: str) -> None:
    """Raise the TraceError that says what is wrong with one job line (or nothing)."""
    parts = line.split()
    if len(parts) != 18:
        raise TraceError(
            f"{path}:{lineno}: expected 18 whitespace-separated SWF fields, found "
            f"{len(parts)}: {line.strip()[:80]!r}"
        )
    for i, p in enumerate(parts):
        try:
            _number(p, i)
        except ValueError:
            raise TraceError(
                f"{path}:{lineno}: field {i + 1} ({FIELDS[i]}) must be a number "
                f"(-1 if unknown), found {p!r}"
            ) from None


def parse_swf_lines(lines: list[str], path: str) -> Trace:
    """Parse SWF text lines read from ``path``."""
    header: dict[str, str] = {}
    data_lines: list[str] = []
    numbers: list[int] = []
    for lineno, line in enumerate(lines, 1):
        if line.startswith(";"):
            match = _HEADER.match(line)
            if match and match.group(1) not in header:
                header[match.group(1)] = match.group(2)
        elif line and not line.isspace():
            data_lines.append(line)
            numbers.append(lineno)
    data = None
    if data_lines:
        try:
            data = np.loadtxt(data_lines, dtype=np.float64, ndmin=2, comments=None)
        except ValueError:
            data = None
        if data is None or data.shape[1] != 18:
            for line, lineno in zip(data_lines, numbers):
                _check_line(line, lineno, path)
            raise TraceError(f"{path}: not a valid SWF file")  # pragma: no cover
    else:
        data = np.empty((0, 18))
    return Trace(path, header, data, np.asarray(numbers, dtype=np.int64))


def read_swf(path: str | Path) -> Trace:
    """Read an SWF trace from ``path`` (.swf, or gzip-compressed .swf.gz)."""
    path = Path(path)
    if path.is_dir():
        raise TraceError(f"trace {path} is a folder; give the path of an .swf or .swf.gz file")
    if not path.is_file():
        raise TraceError(f"trace {path} not found; give the path of an .swf or .swf.gz file")
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        text = raw.decode("utf-8", errors="strict")
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise TraceError(f"trace {path} cannot be read: {exc}") from None
    except UnicodeDecodeError as exc:
        raise TraceError(f"trace {path} is not SWF text (byte {exc.start}: not UTF-8)") from None
    return parse_swf_lines(text.splitlines(), str(path))
