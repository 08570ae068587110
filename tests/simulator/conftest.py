"""Fixtures of the simulator tests: small SWF files written on the fly."""

from __future__ import annotations

from pathlib import Path

import pytest
from swf_helpers import swf_line, write_swf


@pytest.fixture
def small_swf(tmp_path: Path) -> Path:
    lines = [
        swf_line(1, 0, 100, 4, 200, "12.50"),
        swf_line(2, 10, 50, 8, -1),
        swf_line(3, 20, 0, 1, 60),
        swf_line(4, 20, 300, 2, 100),  # ran longer than requested
    ]
    return write_swf(tmp_path / "small.swf", lines)
