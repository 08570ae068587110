"""Every molecule scenario's full sequence, one test each, on lab hosts (nspawn, real SSH).

Scenarios are the directories of molecule/ that hold a molecule.yml; molecule/resources/ is
the shared driver, not a scenario.

The scenarios run two at a time. Run one after another they take about 18 min, and most of
that is not CPU: ansible waits on SSH round trips, on hosts booting and on services starting
and stopping. On a two-core machine a second scenario fills those waits; a third would mostly
compete for the two cores (and make the heaviest scenarios slow enough to risk their
timeout). Running side by side is safe because the lab-host driver gives every scenario its
own tag, bridge, /24, network namespaces, nspawn machines and state directory
(molecule/README.md, broker/lab/molecule_hosts.py), and molecule keeps each scenario's
ephemeral state apart.

How: a module-scoped fixture owns a ThreadPoolExecutor(max_workers=2). On first use it submits
every scenario the session selected (``request.session.items``: a ``-k munge`` run runs munge
alone), the longest expected first so the two workers finish close together; a scenario the
session will skip (``pbs`` without the OpenPBS source) is never submitted. Each parametrized
test then waits for its own scenario and passes, fails (with the tail of its log) or skips on
its own. Each molecule runs in a process group of its own, under a 1800 s timeout; on a
timeout, an interrupt or an early end of the session the groups still running are terminated
and their lab hosts destroyed, so no molecule process or host outlives the module.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCENARIOS = sorted(p.parent.name for p in (REPO / "molecule").glob("*/molecule.yml"))

WORKERS = 2
# A scenario's sequence runs converge.yml four times (check, converge, idempotence, a dry
# run) and its uninstall.yml four times: on a busy two-core machine that is beyond 15 min.
SCENARIO_TIMEOUT = 1800
# Rough sequential durations in seconds (scenarios not named: under a minute), used only to
# start the longest first.
EXPECTED_SECONDS = {"violin_switch": 210, "pbs": 180, "broker": 150, "slurm": 110,
                    "lending_host": 110}
# A test may wait for its scenario while the others run: allow the whole module's worst case
# (list scheduling on two workers ends within sum/2 + the longest).
MODULE_BUDGET = (math.ceil(len(SCENARIOS) / WORKERS) + 1) * SCENARIO_TIMEOUT + 600


@dataclass
class Outcome:
    scenario: str
    log: Path
    returncode: int | None = None  # None: timed out or stopped
    seconds: float = 0.0
    note: str = ""


class MoleculeRuns:
    """The selected scenarios, two at a time; ``outcome(scenario)`` waits for one of them."""

    def __init__(self, scenarios: list[str], skips: dict[str, str], log_dir: Path) -> None:
        self.skips = skips
        self.log_dir = log_dir
        self._lock = threading.Lock()
        self._stopping = False
        self._procs: dict[str, subprocess.Popen] = {}
        self._executor = ThreadPoolExecutor(max_workers=WORKERS,
                                            thread_name_prefix="molecule")
        order = sorted(scenarios, key=lambda s: (-EXPECTED_SECONDS.get(s, 60), s))
        self._futures: dict[str, Future[Outcome]] = {
            s: self._executor.submit(self._run, s) for s in order if s not in skips
        }

    def outcome(self, scenario: str) -> Outcome:
        return self._futures[scenario].result()

    def _env(self) -> dict[str, str]:
        venv_bin = Path(sys.executable).parent
        env = dict(os.environ)
        env["PATH"] = f"{venv_bin}{os.pathsep}{env.get('PATH', '')}"
        env["ANSIBLE_CONFIG"] = str(REPO / "ansible.cfg")
        env.setdefault("ANSIBLE_FORCE_COLOR", "0")
        env["NO_COLOR"] = "1"
        return env

    def _run(self, scenario: str) -> Outcome:
        result = Outcome(scenario, self.log_dir / f"molecule-{scenario}.log")
        molecule = Path(sys.executable).parent / "molecule"
        start = time.monotonic()
        with open(result.log, "w") as out:
            with self._lock:
                if self._stopping:
                    result.note = "not started: the module was stopped"
                    return result
                # a process group of its own: the whole of it (ansible, its forks, ssh) can be
                # terminated, and a terminal's ^C reaches only pytest, which then does so
                proc = subprocess.Popen(
                    [str(molecule), "test", "-s", scenario],
                    cwd=REPO, env=self._env(), stdin=subprocess.DEVNULL, stdout=out,
                    stderr=subprocess.STDOUT, start_new_session=True,
                )
                self._procs[scenario] = proc
            try:
                try:
                    result.returncode = proc.wait(timeout=SCENARIO_TIMEOUT)
                except subprocess.TimeoutExpired:
                    _terminate(proc)
                    result.note = f"timed out after {SCENARIO_TIMEOUT} s"
                with self._lock:
                    stopped = self._stopping
                if stopped and result.returncode not in (None, 0):
                    result.returncode = None
                    result.note = "stopped: the module was interrupted"
                if result.returncode is None:
                    out.flush()
                    _destroy_hosts(scenario, out, self._env())
            finally:
                with self._lock:
                    self._procs.pop(scenario, None)
        result.seconds = time.monotonic() - start
        return result

    def close(self) -> None:
        """Cancel what has not started, terminate what runs, wait for the workers."""
        try:
            with self._lock:
                self._stopping = True
                running = list(self._procs.values())
            for future in self._futures.values():
                future.cancel()
            for proc in running:
                _terminate(proc)
        finally:
            self._executor.shutdown(wait=True, cancel_futures=True)


def _terminate(proc: subprocess.Popen, grace: float = 30.0) -> None:
    """SIGTERM to the process group ``proc`` leads, SIGKILL to what is left after ``grace``."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the group outlives its leader while members remain
    except ProcessLookupError:
        pass
    proc.wait()


def _destroy_hosts(scenario: str, out, env: dict[str, str]) -> None:
    """The lab hosts of a scenario whose molecule did not get to its own destroy."""
    out.write(f"\n--- test_molecule: destroying the lab hosts of {scenario} ---\n")
    out.flush()
    try:
        subprocess.run(
            [sys.executable, "-m", "broker.lab.molecule_hosts", "destroy", "--scenario", scenario],
            cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            timeout=600, check=False,
        )
    except subprocess.TimeoutExpired:
        out.write("--- test_molecule: destroy timed out ---\n")


def _selected_scenarios(request: pytest.FixtureRequest) -> list[str]:
    """Scenarios of this module's tests that the session will run (after -k, -m, ...)."""
    selected = []
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        if getattr(item, "module", None) is request.module and callspec is not None:
            scenario = callspec.params.get("scenario")
            if scenario is not None and scenario not in selected:
                selected.append(scenario)
    return selected


def _skip_reasons(scenarios: list[str]) -> dict[str, str]:
    skips = {}
    if "pbs" in scenarios:
        # the pbs role installs OpenPBS built from its source tarball, which users may not have
        from broker.lab.pbs_build import PbsBuildError, find_source

        try:
            find_source()
        except PbsBuildError as err:
            skips["pbs"] = str(err)
    return skips


@pytest.fixture(scope="module")
def molecule_runs(as_root: None, request: pytest.FixtureRequest,
                  tmp_path_factory: pytest.TempPathFactory):
    scenarios = _selected_scenarios(request)
    runs = MoleculeRuns(scenarios, _skip_reasons(scenarios), tmp_path_factory.mktemp("molecule"))
    try:
        yield runs
    finally:
        runs.close()


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.timeout(MODULE_BUDGET)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_molecule_scenario(scenario: str, as_root: None, molecule_runs: MoleculeRuns) -> None:
    if scenario in molecule_runs.skips:
        pytest.skip(molecule_runs.skips[scenario])
    result = molecule_runs.outcome(scenario)
    if result.returncode != 0:
        tail = result.log.read_text(errors="replace")[-6000:]
        why = result.note or f"exit {result.returncode}"
        pytest.fail(f"molecule test -s {scenario} failed ({why}, {result.seconds:.0f} s, "
                    f"log {result.log}):\n{tail}")
