"""Supported platforms, said before anything changes: Debian 12 on the control node
(scripts/bootstrap.sh) and on the hosts (playbooks/preflight.yml, the first play of site.yml).

The preflight runs for real against this machine (Debian 12, reached with a local connection, its
real facts); another distribution is shown the honest way round: the same real facts checked
against a list of supported platforms that leaves Debian 12 out (viocluster_supported_platforms,
the setting an administrator uses to allow another release). bootstrap.sh reads a fake
os-release bind-mounted over /etc/os-release in a private mount namespace of an unprivileged user
namespace (unshare -rm); the machine's own file is never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
UBUNTU = 'PRETTY_NAME="Ubuntu 24.04.1 LTS"\nNAME="Ubuntu"\nVERSION_ID="24.04"\nID=ubuntu\n'


def _debian12() -> bool:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return False
    return "ID=debian" in text.splitlines() and 'VERSION_ID="12"' in text.splitlines()


needs_debian12 = pytest.mark.skipif(not _debian12(), reason="this machine does not run Debian 12")


# --- hosts: playbooks/preflight.yml -------------------------------------------------------------


def preflight(tmp_path: Path, hosts: dict[str, dict[str, object]],
              then: bool = False) -> subprocess.CompletedProcess[str]:
    """Run preflight.yml against local hosts (this machine under several names), optionally
    followed by a play that would record that it ran."""
    lines = ["all:", "  vars:", "    ansible_connection: local",
             f"    ansible_python_interpreter: {sys.executable}", "  children:", "    heads:", "      hosts:"]
    for name, hostvars in hosts.items():
        lines.append(f"        {name}: {json.dumps(hostvars)}")
    (tmp_path / "hosts.yml").write_text("\n".join(lines) + "\n")
    playbook = REPO / "playbooks" / "preflight.yml"
    if then:
        marker = tmp_path / "ran"
        (tmp_path / "then.yml").write_text(
            f"- ansible.builtin.import_playbook: {playbook}\n"
            "- name: What would come next\n  hosts: all\n  gather_facts: false\n  tasks:\n"
            f"    - name: Record that it ran\n      ansible.builtin.file:\n        path: {marker}\n"
            "        state: touch\n        mode: '0600'\n")
        playbook = tmp_path / "then.yml"
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
           "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", str(tmp_path / "hosts.yml"), str(playbook)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)


def errors(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("[ERROR]")]


@needs_debian12
def test_preflight_passes_on_this_debian_12_machine(tmp_path: Path) -> None:
    proc = preflight(tmp_path, {"this-host": {}})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "changed=0" in proc.stdout


@needs_debian12
def test_preflight_stops_the_run_with_one_line_per_host_whose_release_is_not_listed(tmp_path: Path) -> None:
    hosts = {
        "fine-host": {},
        # this same Debian 12 machine, against lists of supported platforms that leave it out
        "other-host-1": {"viocluster_supported_platforms": [{"distribution": "Debian", "major_version": "11"}]},
        "other-host-2": {"viocluster_supported_platforms": [{"distribution": "Ubuntu", "major_version": 24}]},
    }
    proc = preflight(tmp_path, hosts, then=True)
    assert proc.returncode != 0
    lines = errors(proc)
    assert len(lines) == 2, "\n".join(lines) or proc.stdout + proc.stderr
    one = next(line for line in lines if "other-host-1" in line)
    assert "other-host-1 runs Debian 12" in one and "supports Debian 11 on its hosts" in one
    assert "supports Ubuntu 24 on its hosts" in next(line for line in lines if "other-host-2" in line)
    assert not (tmp_path / "ran").exists(), "the play after the preflight ran on a host"


@needs_debian12
def test_preflight_lets_an_administrator_allow_another_release(tmp_path: Path) -> None:
    listed = [{"distribution": "Debian", "major_version": "13"}, {"distribution": "Debian", "major_version": 12}]
    proc = preflight(tmp_path, {"this-host": {"viocluster_supported_platforms": listed}}, then=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "ran").exists()


# --- control node: scripts/bootstrap.sh ---------------------------------------------------------


def _userns_ok() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True, check=False)
    return probe.returncode == 0


def bootstrap_on(tmp_path: Path, os_release: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """scripts/bootstrap.sh ARGS with a fake /etc/os-release, in a private mount namespace."""
    if not _userns_ok():
        pytest.skip("unshare -rm (an unprivileged user and mount namespace) is not allowed here")
    fake = tmp_path / "os-release"
    fake.write_text(os_release)
    script = 'mount --bind "$1" /etc/os-release && shift && exec "$@"'
    return subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", str(fake), str(REPO / "scripts" / "bootstrap.sh"), *args],
                          cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, timeout=120, check=False)


def test_bootstrap_refuses_another_distribution_in_one_line_with_a_fake_os_release(tmp_path: Path) -> None:
    proc = bootstrap_on(tmp_path, UBUNTU)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "bootstrap: this machine runs Ubuntu 24.04.1 LTS; VioCluster supports Debian 12 on the control node "
        "(VIOCLUSTER_ANY_PLATFORM=1 goes on anyway, at your own risk)"]


def test_bootstrap_goes_on_with_the_override_with_a_fake_os_release(tmp_path: Path) -> None:
    proc = bootstrap_on(tmp_path, UBUNTU, "--check", VIOCLUSTER_ANY_PLATFORM="1")
    assert proc.returncode == 0, proc.stderr
    first = proc.stderr.splitlines()[0]
    assert first == "bootstrap: continuing on Ubuntu 24.04.1 LTS, not Debian 12, because VIOCLUSTER_ANY_PLATFORM=1"


@needs_debian12
def test_bootstrap_check_on_this_debian_12_machine_says_nothing_about_the_platform() -> None:
    proc = subprocess.run([str(REPO / "scripts" / "bootstrap.sh"), "--check"], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "Debian 12" not in proc.stderr


def test_bootstrap_names_its_usage_on_a_wrong_argument() -> None:
    proc = subprocess.run([str(REPO / "scripts" / "bootstrap.sh"), "--frobnicate"], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert proc.stderr == "bootstrap: unknown argument '--frobnicate'; use: scripts/bootstrap.sh [--check]\n"
