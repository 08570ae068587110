"""Two clusters VioCluster did not build trade a machine, and uninstall.yml leaves them as found.

On the one-machine lab built from inventories/adopt-fixture/ (hosts of other names), a small
script of the sites' own (tests/adopt/fixture/site-cluster.sh, not the project's roles) sets up
two clusters the way their administrators would: slurm.conf with partitions and options of
their own, a munge key, users with homes, nfs-ganesha exporting /home to the physical network.
Then the deployment guide (docs/deploy.md, "Adopting an existing cluster") is followed:

1. the check (`site.yml --tags adopt --check`) lists the gaps and stops on the one that is the
   site's to close (north's export does not allow its virtual subnet);
2. the administrator closes it (allows the subnet in the export);
3. site.yml adopts both clusters (north by a restart, which its inventory allows; south by
   scontrol reconfigure) and sets up the rest of VioCluster;
4. a trade runs, checked as the demo checks it (broker/lab/demo.py's pieces): a job of north
   finishes on a VM borrowed from south, south reclaims the machine, the job on the VM is
   requeued and finishes on north's own nodes, every output is on north's shared /home;
5. uninstall.yml, after which each host's packages, units, accounts and files are as the
   fixture left them (molecule/resources/host_state.yml's reading).
"""

from __future__ import annotations

import base64
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import ansible_runner
import pytest
import yaml

from broker.lab import cli as labcli
from broker.lab import hosts as labhosts
from broker.lab import topology
from broker.lab.demo import (JOB_SCRIPT, Queue, Shell, Watcher, _contracts, _wait, reset, run_site)
from broker.lab.timeline import build_report, parse_job_output

REPO = Path(__file__).resolve().parents[2]
INVENTORY = REPO / "inventories" / "adopt-fixture"
FIXTURE = REPO / "tests" / "adopt" / "fixture" / "site-cluster.sh"
HOST_STATE = REPO / "molecule" / "resources" / "host_state.yml"
GUIDE = REPO / "docs" / "deploy.md"

pytestmark = [pytest.mark.lab, pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(2400)]

UNINSTALL_CHECK = REPO / "molecule" / "resources" / "uninstall.yml"


def noise() -> re.Pattern:
    """What changes by itself on a running host, as molecule's uninstall check ignores it, and
    the state the sites' own daemons keep writing (Slurm's state and spool, ganesha's NFSv4
    client records)."""
    plays = yaml.safe_load(UNINSTALL_CHECK.read_text())
    found = [p["vars"]["uninstall_noise"] for p in plays if "uninstall_noise" in p.get("vars", {})]
    return re.compile("|".join([*found[0], r"^file . /var/lib/slurm/", r"^file . /var/lib/nfs/"]))


def domains() -> dict[str, dict]:
    """Per domain: its head, compute nodes (name -> physical address), subnets, from the inventory."""
    out: dict[str, dict] = {}
    inv = yaml.safe_load((INVENTORY / "hosts.yml").read_text())["all"]["children"]
    for name in ("north", "south"):
        gv = yaml.safe_load((INVENTORY / "group_vars" / f"domain_{name}.yml").read_text())
        groups = inv[f"domain_{name}"]["children"]
        computes = groups[f"domain_{name}_compute"]["hosts"]
        out[name] = {"head": gv["viocluster_head_node"],
                     "nodes": {h: v["ansible_host"] for h, v in computes.items()},
                     "physical": gv["viocluster_physical_subnet"], "virtual": gv["viocluster_virtual_subnet"],
                     "hosts": [gv["viocluster_head_node"], *computes]}
    return out


def ssh(plan: labhosts.Plan, host: str, command: str, stdin: str = "", check: bool = True,
        timeout: float = 120) -> subprocess.CompletedProcess:
    target = next(h for h in plan.hosts if h.name == host)
    proc = subprocess.run(
        ["ssh", "-i", str(plan.key_file), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", f"root@{target.ip}", command],
        input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
    if check:
        assert proc.returncode == 0, f"{host}: `{command[:80]}` failed: {proc.stderr or proc.stdout}"
    return proc


def site_cluster(plan: labhosts.Plan, name: str, dom: dict, export_clients: str, style: str) -> None:
    """What the site's administrator did, host by host, with the site's own script."""
    key = base64.b64encode(os.urandom(1024)).decode()
    nodes = ",".join(f"{h}:{a}" for h, a in dom["nodes"].items())
    for host in dom["hosts"]:
        ssh(plan, host, "cat > /tmp/site-cluster.sh", stdin=FIXTURE.read_text())
        what = "controller" if host == dom["head"] else "node"
        ssh(plan, host, f"sh /tmp/site-cluster.sh {what} cluster={name} controller={dom['head']} "
                        f"nodes={nodes} export_clients={export_clients} style={style}; "
                        "rc=$?; rm -f /tmp/site-cluster.sh; exit $rc", stdin=key)
    for _ in range(120):
        idle = ssh(plan, dom["head"], "sinfo -h -N -t idle -o %N", check=False).stdout.split()
        if set(dom["nodes"]) <= set(idle):
            return
        time.sleep(0.5)
    pytest.fail(f"{name}: the site's nodes are not idle: {idle}")


def host_state(plan: labhosts.Plan, host: str) -> set[str]:
    """Packages, unit files, accounts and files, read as molecule's uninstall check reads them,
    and the content of the sites' own configuration (slurm.conf, munge key, ganesha.conf)."""
    tasks = yaml.safe_load(HOST_STATE.read_text())
    cmd = tasks[0]["ansible.builtin.shell"]["cmd"]
    sums = ("sha256sum /etc/slurm/* /etc/munge/munge.key /etc/ganesha/ganesha.conf /etc/default/slurmd "
            "2>/dev/null | sed 's/^/sum /' || true")
    return set(ssh(plan, host, f"bash -c {shlex.quote(cmd)}; {sums}").stdout.splitlines())


def playbook(name: str, out: Path, args: list[str] | None = None) -> tuple[bool, str]:
    """Run a playbook of the project on the fixture's inventory; (succeeded, its output)."""
    bindir = str(Path(sys.executable).parent)
    if bindir not in os.environ.get("PATH", "").split(os.pathsep):  # ansible-playbook's home
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    private = out / f"runner-{name}-{len(list(out.glob('runner-*')))}"
    private.mkdir(parents=True)
    runner = ansible_runner.run(private_data_dir=str(private), project_dir=str(REPO),
                                playbook=f"playbooks/{name}", inventory=str(INVENTORY),
                                envvars={"ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"},
                                cmdline=" ".join(args or []), quiet=True)
    text = runner.stdout.read()
    (out / f"{name}{'-check' if args and '--check' in args else ''}.log").write_text(text)
    return runner.rc == 0 and runner.status == "successful", text


@pytest.fixture(scope="module")
def lab(as_root: None, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    if labhosts.Plan.load(topology.STATE_DIR) is not None:
        pytest.fail(f"a lab is already up (state in {topology.STATE_DIR}); `viocluster lab down`")
    times: dict[str, float] = {}
    started = time.monotonic()
    try:
        labcli.up(INVENTORY)
        times["lab up"] = time.monotonic() - started
        plan = labhosts.Plan.load(topology.STATE_DIR)
        assert plan is not None
        yield {"plan": plan, "times": times, "tmp": tmp_path_factory.mktemp("adopt-lab")}
    finally:
        started = time.monotonic()
        saved = labhosts.Plan.load(topology.STATE_DIR)
        labcli.down()
        times["lab down"] = time.monotonic() - started
        capture = request.config.pluginmanager.getplugin("capturemanager")
        with capture.global_and_fixture_disabled():
            print()
            for phase, secs in times.items():
                print(f"adopt lab phase {phase:28} {secs:7.1f} s")
        if saved is not None:
            left = labhosts.leftovers(saved)
            assert not left, f"lab down left behind: {left}"


def trade(plan: labhosts.Plan, doms: dict[str, dict], rundir: str, timeout: float = 240.0) -> dict:
    """The demo's trade, on north (borrower) and south (lender), with the demo's pieces."""
    north, south = doms["north"], doms["south"]
    heads = {"north": north["head"], "south": south["head"]}
    shell, watcher = Shell(plan), Watcher()
    try:
        reset(shell, heads, timeout)
        for head in heads.values():
            shell.run(head, f"mkdir -p {rundir} && printf '%s' {shlex.quote(JOB_SCRIPT.format(seconds=15))} "
                            f"> {rundir}/job.sh && chmod 755 {rundir}/job.sh")
        queue = Queue(shell, north["head"], watcher, vm_prefix="north-v")
        burst_a = time.time()
        ids = shell.run(north["head"], " && ".join(
            [f"sbatch --parsable -p batch,borrowed --open-mode=append -o {rundir}/a-%j.out {rundir}/job.sh"] * 10)).split()
        queue.jobs.update(ids)
        watcher.every(0.25, queue.poll)

        def on_vm() -> list[str]:
            return [j for j, n in queue.snapshot().items() if n.startswith("north-v")]

        _wait("a job of north running on a borrowed VM", lambda: bool(on_vm()), timeout)
        def active() -> list[dict]:
            return [c for c in _contracts(shell, north["head"])
                    if c["state"] == "active" and c["role"] == "borrower"]

        _wait("north's borrowing contract to be active", lambda: bool(active()), timeout)
        contract = active()[-1]
        vm, host = contract["nodes"][0], contract["hosts"][0]

        # the reclaim must find a job of north's on the VM (its requeue is what is checked): ten
        # jobs of 15 s on two own nodes leave work queued for the VM however late it joins
        def vm_done_and_next() -> bool:
            return bool(queue.ran_on_vm_done) and bool(on_vm())

        _wait("a job to finish on the VM and the next to start there", vm_done_and_next, timeout)
        gone = threading.Event()

        def vm_probe() -> None:
            out = shell.run(host, "pgrep -u vcpeernorth -x linux -a || true", timeout=10)
            if f"umid={vm} " not in out + " ":
                gone.set()
                watcher.note("B", f"VM process gone: {vm} on {host}")

        watcher.every(0.1, vm_probe)
        burst_b = time.time()
        shell.run(south["head"], " && ".join(
            [f"sbatch --parsable -p batch -o {rundir}/b-%j.out {rundir}/job.sh"] * 3))
        _wait(f"south to reclaim {host} (the VM {vm} killed)", gone.is_set, timeout, 0.1)
        _wait("every job of north to finish", lambda: all(n == "done" for n in queue.snapshot().values()),
              timeout * 2, 1.0)
        _wait("south's jobs to finish", lambda: not shell.run(south["head"], "squeue -h -o %i").strip(), timeout, 1.0)
        watcher.close()
        jobs = [parse_job_output(j, shell.run(north["head"], f"cat {rundir}/a-{j}.out", check=False)) for j in ids]
        report = build_report(burst_a=burst_a, burst_b=burst_b, a_contracts=_contracts(shell, north["head"]),
                              b_contracts=_contracts(shell, south["head"]), observations=watcher.events,
                              jobs=jobs, own_nodes=set(north["nodes"]), taken_off=queue.snapshot_requeued())
        reset(shell, heads, timeout)
    finally:
        watcher.close()
        shell.close()
    return {"problems": report.problems, "on_vm": [j.job_id for j in report.jobs_on_borrowed],
            "requeued": {j.job_id: j.finished_on for j in report.requeued}}


def diagnose(plan: labhosts.Plan, doms: dict[str, dict], out: Path) -> str:
    """What the heads' Slurm and brokers said, kept beside the playbooks' logs (the lab goes down)."""
    parts = []
    for dom in doms.values():
        head = dom["head"]
        text = ssh(plan, head, "sinfo -N; squeue; tail -n 40 /var/log/slurm/slurmctld.log; "
                               "journalctl -u viocluster-broker -n 60 --no-pager", check=False).stdout
        (out / f"{head}.diagnosis").write_text(text)
        parts.append(f"--- {head}\n{text[-2500:]}")
    return "\n".join(parts)


def test_two_clusters_adopted_as_the_guide_says_trade_and_are_left_as_found(lab) -> None:
    plan, times, out = lab["plan"], lab["times"], lab["tmp"]
    try:
        story(plan, times, out)
    except BaseException:
        print(f"logs in {out}; the heads' Slurm and brokers:\n{diagnose(plan, domains(), out)}")
        raise


def story(plan: labhosts.Plan, times: dict[str, float], out: Path) -> None:
    doms = domains()
    # The inventory uses only what the guide's section names.
    guide = GUIDE.read_text() if GUIDE.is_file() else ""
    section = guide.split("## Adopting an existing cluster", 1)[-1].split("\n## ", 1)[0] if guide else ""
    inventory_keys = set(re.findall(r"\b(viocluster_adopt\w*)", "".join(
        p.read_text() for p in (INVENTORY / "group_vars").glob("*.yml"))))
    assert section, f"{GUIDE} has no section 'Adopting an existing cluster'"
    assert {k for k in inventory_keys if k not in section} == set()

    started = time.monotonic()
    # north exports its homes to its physical network only; south's administrator read the
    # guide's prerequisites first and allowed its virtual subnet too
    site_cluster(plan, "north", doms["north"], doms["north"]["physical"], "plain")
    site_cluster(plan, "south", doms["south"], f"{doms['south']['physical']},{doms['south']['virtual']}", "dynamic")
    times["the sites' clusters"] = time.monotonic() - started

    # 1. the check: gaps, one line each; the run stops on north's export, the site's to close
    started = time.monotonic()
    ok, log = playbook("site.yml", out, ["--tags", "adopt", "--check"])
    times["check (--tags adopt --check)"] = time.monotonic() - started
    assert not ok, f"the check should stop on north's export:\n{log[-3000:]}"
    flat = " ".join(log.split()).replace("''", "'")  # however the callback wraps and quotes them
    assert "gap: shared filesystem: north-ctl exports /home to" in flat, log[-3000:]
    assert "allow 10.210.5.0/24 in north-ctl's export of /home" in flat, log[-3000:]
    for gap in ("MaxNodeCount", "SlurmctldParameters", "partition borrowed"):
        assert re.search(rf"gap: {gap}: [^\"]*fix: site.yml adds", flat), f"{gap} not reported:\n{log[-3000:]}"
    assert "south-ctl exports" not in flat

    # 2. the administrator closes it
    ssh(plan, doms["north"]["head"], "cat > /tmp/site-cluster.sh && sh /tmp/site-cluster.sh allow-export "
                                     f"{doms['north']['virtual']}; rc=$?; rm -f /tmp/site-cluster.sh; exit $rc",
        stdin=FIXTURE.read_text())
    before = {h: host_state(plan, h) for d in doms.values() for h in d["hosts"]}

    # 3. site.yml
    started = time.monotonic()
    run_site(INVENTORY, out, log=lambda _: None)
    times["site.yml"] = time.monotonic() - started
    for name, dom in doms.items():
        parts = ssh(plan, dom["head"], "sinfo -h -o %P").stdout.split()
        assert {"batch*", "short", "borrowed"} <= set(parts), (name, parts)

    # 4. the trade
    started = time.monotonic()
    rundir = f"/home/viocluster-adopt-test/{time.strftime('%Y%m%d-%H%M%S')}"
    result = trade(plan, doms, rundir)
    times["trade"] = time.monotonic() - started
    assert result["problems"] == [] and result["on_vm"], result
    assert result["requeued"] and set(result["requeued"].values()) <= set(doms["north"]["nodes"]), result
    for dom in doms.values():  # the test's own files go; the sites' homes stay
        ssh(plan, dom["head"], "rm -rf /home/viocluster-adopt-test")

    # 5. uninstall.yml: each host as the site made it
    started = time.monotonic()
    ok, log = playbook("uninstall.yml", out)
    times["uninstall.yml"] = time.monotonic() - started
    assert ok, log[-4000:]
    changed = {}
    ignored = noise()
    for host, was in before.items():
        now = host_state(plan, host)
        diff = sorted(f"- {line}" for line in was - now if not ignored.search(line)) + \
            sorted(f"+ {line}" for line in now - was if not ignored.search(line))
        if diff:
            changed[host] = diff[:30]
    assert not changed, f"after uninstall.yml the hosts differ from what the sites made: {changed}"
    for dom in doms.values():  # the sites' own Slurm still runs, with its own configuration
        conf = ssh(plan, dom["head"], "scontrol show config; sinfo -h -o %P").stdout
        assert "borrowed" not in conf.split() and "viocluster" not in conf
