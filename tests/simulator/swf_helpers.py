"""Helpers that write small SWF files for the simulator tests."""

from __future__ import annotations

import gzip
from pathlib import Path

HEADER = """; Version: 2.2
; Computer: test cluster
; UnixStartTime: 1000000000
; MaxNodes: 8 (batch partition; 16 total)
; MaxProcs: 8
;
"""


def swf_line(job: int, submit: int, run: int, procs: int, req_time: int = -1,
             avg_cpu: str = "-1", status: int = 1, req_procs: int | None = None) -> str:
    """One job line: ``procs`` allocated (field 5) and requested (field 8, else ``req_procs``)."""
    req = procs if req_procs is None else req_procs
    fields = [job, submit, -1, run, procs, avg_cpu, -1, req, req_time, -1, status, 1, 1, -1, 1,
              -1, -1, -1]
    return " ".join(str(f) for f in fields)


def write_swf(path: Path, lines: list[str], header: str = HEADER) -> Path:
    text = header + "\n".join(lines) + "\n"
    if path.suffix == ".gz":
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        path.write_text(text)
    return path
