"""``viocluster sweep --slurm`` on the lab's Slurm: a grid's cells as a job array on a domain's
compute nodes, collected into one table.

Needs a lab that is up and converged (``viocluster lab up`` and site.yml, as tests/lab/test_lab.py
does); it skips, saying why, when there is none, and never brings one up or down itself.

How the nodes get the simulator: the domain's users' directories (/home) are exported by the
head node over NFS and mounted on every node. The test builds a wheel of this checkout, and on
the head makes a virtual environment under /home from it and from the wheelhouse the broker
role left on the head (the lab has no route to a package registry). The array's tasks run that
environment's Python (``--python``) on the nodes; each writes its cell's result under /home,
and the head collects them.
"""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from pathlib import Path

import pytest

from broker.lab import hosts as labhosts
from broker.lab import topology

REPO = Path(__file__).resolve().parents[2]
DOMAIN = "a"
HEAD = f"{DOMAIN}-head"
NODES = (f"{DOMAIN}-node1", f"{DOMAIN}-node2")
WORK = "/home/viocluster-sweep"
WHEELHOUSE = "/opt/viocluster/broker-wheels"  # the broker role's broker_wheel_dir

GRID = """\
policies:
  immediate: {}
  drain: {reclamation: {mode: drain}}
scenarios:
  gen:
    generated: {domains: 2, capacity: 16, days: 3, load: [0.4, 0.8]}
seeds: [1, 2]
"""

pytestmark = [pytest.mark.lab, pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(1200)]


def _ssh(plan: labhosts.Plan, host: str, command: str, timeout: float = 60,
         stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    target = next(h for h in plan.hosts if h.name == host)
    return subprocess.run(
        ["ssh", "-i", str(plan.key_file), "-o", "StrictHostKeyChecking=no",
         "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "BatchMode=yes",
         f"root@{target.ip}", command],
        input=stdin, capture_output=True, text=True, timeout=timeout, check=False,
        **({} if stdin is not None else {"stdin": subprocess.DEVNULL}),
    )


def ssh(plan: labhosts.Plan, host: str, command: str, timeout: float = 60,
        stdin: str | None = None) -> str:
    proc = _ssh(plan, host, command, timeout, stdin)
    assert proc.returncode == 0, f"{host}: `{command}` failed: {proc.stderr or proc.stdout}"
    return proc.stdout


@pytest.fixture(scope="module")
def lab_plan(as_root: None) -> labhosts.Plan:
    plan = labhosts.Plan.load(topology.STATE_DIR)
    if plan is None:
        pytest.skip(f"no lab is up (no state in {topology.STATE_DIR}); bring one up and "
                    "converge it (viocluster lab up, then site.yml) to run this test")
    if not any(h.name == HEAD for h in plan.hosts):
        pytest.skip(f"the lab that is up has no host {HEAD}")
    if _ssh(plan, HEAD, "command -v sbatch && sinfo -h", timeout=30).returncode != 0:
        pytest.skip(f"the lab is up but {HEAD} has no working Slurm yet: run site.yml first")
    if _ssh(plan, HEAD, f"ls {WHEELHOUSE}/*.whl", timeout=30).returncode != 0:
        pytest.skip(f"{HEAD} has no wheelhouse in {WHEELHOUSE} (the broker role makes it)")
    return plan


def make_shared_venv(plan: labhosts.Plan, wheels: Path) -> str:
    """A virtual environment with this checkout's viocluster, under the head's /home."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "-w", str(wheels), str(REPO)], check=True,
                   capture_output=True, text=True, timeout=300)
    wheel = next(wheels.glob("viocluster-*.whl"))
    ssh(plan, HEAD, f"rm -rf {WORK} && mkdir -p {WORK}/wheel")
    head = next(h for h in plan.hosts if h.name == HEAD)
    subprocess.run(["scp", "-q", "-i", str(plan.key_file), "-o", "StrictHostKeyChecking=no",
                    "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
                    str(wheel), f"root@{head.ip}:{WORK}/wheel/"], check=True, timeout=120)
    ssh(plan, HEAD,
        f"python3 -m venv {WORK}/venv && {WORK}/venv/bin/pip install --quiet "
        f"--disable-pip-version-check --no-index --find-links {WORK}/wheel "
        f"--find-links {WHEELHOUSE} viocluster", timeout=600)
    return f"{WORK}/venv"


def sweep_on_lab(plan: labhosts.Plan, tmp_path: Path) -> None:
    """The whole check, on a converged lab: the environment under /home, the grid as a job
    array on domain a's nodes, the collected table equal to the same grid run here. Also run by
    tests/lab/test_lab.py while its lab is up."""
    wheels = tmp_path / "wheel"
    wheels.mkdir()
    try:
        check_sweep(plan, make_shared_venv(plan, wheels), tmp_path)
    finally:
        _ssh(plan, HEAD, f"rm -rf {WORK}", timeout=120)


def test_sweep_runs_as_a_job_array_on_the_nodes_and_is_collected(lab_plan, tmp_path):
    sweep_on_lab(lab_plan, tmp_path)


def check_sweep(lab_plan: labhosts.Plan, shared_venv: str, tmp_path: Path) -> None:
    ssh(lab_plan, HEAD, f"cat > {WORK}/grid.yml", stdin=GRID)
    # every node sees the environment over NFS
    for node in NODES:
        ssh(lab_plan, node, f"{shared_venv}/bin/python -c 'import broker.simulator.sweep'")
    out = f"{WORK}/out"
    proc = _ssh(lab_plan, HEAD,
                f"cd {WORK} && {shared_venv}/bin/viocluster sweep grid.yml --out {out} --slurm "
                f"--python {shared_venv}/bin/python --sbatch-arg=--partition=phys",
                timeout=900)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "6 cells as a Slurm job array" in proc.stderr
    table = list(csv.DictReader(io.StringIO(ssh(lab_plan, HEAD, f"cat {out}/sweep.csv"))))
    assert len(table) == 8  # 2 policies x 2 seeds x 2 domains
    assert {r["policy"] for r in table} == {"immediate", "drain"}
    assert ssh(lab_plan, HEAD, f"head -c 4 {out}/sweep.png | od -An -c").split()[1:4] == [
        "P", "N", "G"]
    # the tasks ran on the compute nodes, not on the head
    logs = ssh(lab_plan, HEAD, f"cat {out}/logs/cell-*.out")
    ran_on = {line.rsplit(" on ", 1)[1] for line in logs.splitlines()
              if line.startswith("task ") and " on " in line}
    assert ran_on and ran_on <= set(NODES), logs
    # the same grid run on this machine gives the same table: the nodes ran this checkout
    here = tmp_path / "here"
    (tmp_path / "grid.yml").write_text(GRID)
    subprocess.run([str(Path(sys.executable).parent / "viocluster"), "sweep",
                    str(tmp_path / "grid.yml"), "--out", str(here)], check=True,
                   capture_output=True, text=True, timeout=300)
    with (here / "sweep.csv").open() as fh:
        assert list(csv.DictReader(fh)) == table
