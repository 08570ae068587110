"""Lint gates of the Ansible bundle: ansible-lint's production profile and yamllint (strict).

Both run over the whole repository from its root, with the settings in .ansible-lint and
.yamllint; a finding fails the test and its output says where.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["ANSIBLE_CONFIG"] = str(REPO / "ansible.cfg")
    env["NO_COLOR"] = "1"
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
                          check=False)


def test_yamllint_strict() -> None:
    proc = _run([str(VENV_BIN / "yamllint"), "-s", "-f", "parsable", "."])
    assert proc.returncode == 0, f"yamllint findings:\n{proc.stdout}{proc.stderr}"


@pytest.mark.slow
def test_ansible_lint_production_profile() -> None:
    proc = _run([str(VENV_BIN / "ansible-lint"), "--profile", "production", "--nocolor"])
    assert proc.returncode == 0, f"ansible-lint findings:\n{proc.stdout[-8000:]}{proc.stderr[-8000:]}"
