"""Probes read names that a peer account controls (its processes' names on a lending host):
only names a broker gives are taken, and nothing else ever reaches a remove command."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from broker.service.config import ProbeConfig
from broker.service.probes import CommandProbe, ProbeError

REPO = Path(__file__).resolve().parents[2]
VMS_TOOL = REPO / "roles" / "lending_host" / "files" / "viocluster-vms"


def probe(listed: str, removed: Path) -> CommandProbe:
    return CommandProbe("vms", ProbeConfig(
        list=("printf", "%s", listed),
        remove=("sh", "-c", 'printf "%s\\n" "$0" >> "$1"', "{name}", str(removed))))


def test_listed_names_no_broker_gives_are_left_out(tmp_path: Path) -> None:
    p = probe("a-vm1\nb.node2_x\n$(touch pwned)\nx;reboot\n\n-flag\n" + "y" * 64 + "\n",
              tmp_path / "removed")
    assert p.list() == frozenset({"a-vm1", "b.node2_x"})


def test_remove_refuses_a_name_no_broker_gives_and_runs_nothing(tmp_path: Path) -> None:
    removed = tmp_path / "removed"
    p = probe("", removed)
    for bad in ["x;reboot", "$(id)", "a b", "-rf", "", "n" * 64]:
        with pytest.raises(ProbeError, match="not a name a broker gives"):
            p.remove(bad)
    assert not removed.exists()
    p.remove("a-vm1")
    assert removed.read_text() == "a-vm1\n"


def test_the_vms_tool_refuses_a_kill_of_a_name_no_broker_gives() -> None:
    for bad in ["x;reboot", "$(id)", "-1", ""]:
        proc = subprocess.run(["sh", str(VMS_TOOL), "kill", bad], capture_output=True, text=True,
                              check=False, env={**os.environ, "VIOCLUSTER_PEER_LIMITS": "/nonexistent"})
        assert proc.returncode == 2, (bad, proc.stdout, proc.stderr)


def test_the_vms_tool_lists_only_names_a_broker_gives(tmp_path: Path) -> None:
    """Real processes of this account, named as UML names its VMs (umid=NAME), leading their
    process group as cow_vm starts them."""
    user = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
    (tmp_path / f"{user}.limits").write_text("vm_slots=1\n")
    names = ["good-vm1", "bad;touch${IFS}x", "bad$(id)"]
    procs = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", f"umid={n}"],
                              start_new_session=True) for n in names]
    try:
        time.sleep(0.2)
        proc = subprocess.run(["sh", str(VMS_TOOL), "list"], capture_output=True, text=True,
                              check=True, env={**os.environ, "VIOCLUSTER_PEER_LIMITS": str(tmp_path)})
    finally:
        for p in procs:
            p.kill()
            p.wait()
    listed = proc.stdout.split()
    assert "good-vm1" in listed
    assert not [n for n in listed if n.startswith("bad")], proc.stdout
