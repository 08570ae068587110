"""Every molecule scenario's full sequence, one test each, on lab hosts (nspawn, real SSH).

Scenarios are the directories of molecule/ that hold a molecule.yml; molecule/resources/ is
the shared driver, not a scenario.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCENARIOS = sorted(p.parent.name for p in (REPO / "molecule").glob("*/molecule.yml"))


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.timeout(1900)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_molecule_scenario(scenario: str, as_root: None, tmp_path: Path) -> None:
    if scenario == "pbs":
        # the pbs role installs OpenPBS built from its source tarball, which users may not have
        from broker.lab.pbs_build import PbsBuildError, find_source

        try:
            find_source()
        except PbsBuildError as err:
            pytest.skip(str(err))
    venv_bin = Path(sys.executable).parent
    env = dict(os.environ)
    env["PATH"] = f"{venv_bin}{os.pathsep}{env.get('PATH', '')}"
    env["ANSIBLE_CONFIG"] = str(REPO / "ansible.cfg")
    env.setdefault("ANSIBLE_FORCE_COLOR", "0")
    env["NO_COLOR"] = "1"
    log = tmp_path / f"molecule-{scenario}.log"
    # A scenario's sequence runs converge.yml four times (check, converge, idempotence, a dry
    # run) and its uninstall.yml four times: on a busy two-core machine that is beyond 15 min.
    with open(log, "w") as out:
        proc = subprocess.run(
            [str(venv_bin / "molecule"), "test", "-s", scenario],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=1800, check=False,
        )
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-6000:]
        pytest.fail(f"molecule test -s {scenario} failed (exit {proc.returncode}):\n{tail}")
