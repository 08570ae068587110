"""cow_image through ansible-playbook, and the UML COW header it writes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, run_play

sys.path.insert(0, str(REPO / "module_utils"))
import viocluster_vm as vmu  # noqa: E402

pytestmark = [pytest.mark.root]


@pytest.fixture()
def base(busybox_image, tmp_path) -> Path:
    p = tmp_path / "base.img"
    shutil.copy2(busybox_image, p)
    os.chmod(p, 0o444)
    return p


def test_uml_cow_created_idempotent_check_mode_and_removed(base, tmp_path):
    cow = tmp_path / "vm.cow"
    task = {"name": "cow", "cow_image": {"path": str(cow), "base_image": str(base)}}
    chk = run_play([task], check=True, netns="")
    assert chk.task("cow")["changed"] and not cow.exists()
    r = run_play([task], diff=True, netns="")
    t = r.task("cow")
    assert t["changed"] and not t["failed"], t["msg"]
    hdr = vmu.read_uml_cow_header(str(cow))
    st = base.stat()
    assert (hdr.backing_file, hdr.size, hdr.mtime) == (str(base), st.st_size, int(st.st_mtime))
    assert t["res"]["allocated_bytes"] < 64 * 1024, "a fresh COW is sparse"
    assert cow.stat().st_size == vmu.uml_cow_layout(st.st_size) + st.st_size
    assert not run_play([task], netns="").task("cow")["changed"]
    # The base changes (rebuilt, or copied without mtime): a clear failure, the COW kept.
    os.utime(base, (st.st_mtime + 60, st.st_mtime + 60))
    bad = run_play([task], netns="").task("cow")
    assert bad["failed"] and "mtime changed" in bad["msg"] and cow.exists()
    fix = run_play([{"name": "cow", "cow_image": {"path": str(cow), "base_image": str(base),
                                                  "recreate": True}}], netns="").task("cow")
    assert fix["changed"] and vmu.read_uml_cow_header(str(cow)).mtime == int(st.st_mtime) + 60
    gone = run_play([{"name": "rm", "cow_image": {"path": str(cow), "state": "absent"}}],
                    netns="").task("rm")
    assert gone["changed"] and not cow.exists()


def test_qcow2_overlay(base, tmp_path):
    if not shutil.which("qemu-img"):
        pytest.skip("qemu-img missing: run scripts/bootstrap.sh")
    ov = tmp_path / "vm.qcow2"
    task = {"name": "q", "cow_image": {"path": str(ov), "base_image": str(base),
                                       "format": "qcow2"}}
    assert run_play([task], netns="").task("q")["changed"]
    info = vmu.qcow2_info(str(ov))
    assert info.backing_file == str(base) and info.size == base.stat().st_size
    assert not run_play([task], netns="").task("q")["changed"]
    other = tmp_path / "other.img"
    subprocess.run(["truncate", "-s", "1M", str(other)], check=True)
    t = run_play([{"name": "q", "cow_image": {"path": str(ov), "base_image": str(other),
                                              "format": "qcow2"}}], netns="").task("q")
    assert t["failed"] and "was made on" in t["msg"]


def test_not_a_cow_file_is_a_clear_error(base, tmp_path):
    junk = tmp_path / "junk.cow"
    junk.write_bytes(b"hello world, not a cow")
    t = run_play([{"name": "c", "cow_image": {"path": str(junk), "base_image": str(base)}}],
                 netns="").task("c")
    assert t["failed"] and "not a UML COW file" in t["msg"]
