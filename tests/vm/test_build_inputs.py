"""Image build inputs: the Debian mirror comes from the machine's apt sources; keys are stable."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "images"))
import build_image  # noqa: E402

DEB822 = """Types: deb deb-src
URIs: http://mirror.example.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example.org/debian-security
Suites: bookworm-security
Components: main
"""


def test_mirror_from_deb822_sources(tmp_path, monkeypatch):
    monkeypatch.delenv("VIOCLUSTER_MIRROR", raising=False)
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "other.sources").write_text(
        "Types: deb\nURIs: https://apt.example.com/x\nSuites: nodistro\nComponents: main\n")
    (tmp_path / "sources.list.d" / "debian.sources").write_text(DEB822)
    assert build_image.apt_mirror(tmp_path) == "http://mirror.example.org/debian"


def test_mirror_from_one_line_sources_list(tmp_path, monkeypatch):
    monkeypatch.delenv("VIOCLUSTER_MIRROR", raising=False)
    (tmp_path / "sources.list").write_text(
        "# deb http://old.example.org/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://local.example.net/debian bookworm main\n")
    assert build_image.apt_mirror(tmp_path) == "http://local.example.net/debian"


def test_no_bookworm_source_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("VIOCLUSTER_MIRROR", raising=False)
    (tmp_path / "sources.list").write_text("deb http://x.example/debian trixie main\n")
    with pytest.raises(build_image.BuildError, match="VIOCLUSTER_MIRROR"):
        build_image.apt_mirror(tmp_path)


def test_key_depends_on_inputs_only():
    a = build_image.Inputs("busybox", {"init": "1", "busybox": "2"})
    b = build_image.Inputs("busybox", {"busybox": "2", "init": "1"})
    c = build_image.Inputs("busybox", {"init": "1", "busybox": "3"})
    assert a.key() == b.key() != c.key()
