"""``viocluster lab up | down | status | demo | twin`` and the faults (``crash``, ``start``,
``partition``, ``cut``, ``heal``): the one-machine lab."""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

from broker.errors import UserError
from broker.lab import hosts as labhosts
from broker.lab import topology
from broker.lab.rootfs import ensure_rootfs

REPO = Path(__file__).resolve().parents[2]
DEFAULT_INVENTORY = REPO / "inventories" / "lab"


class LabError(UserError):
    """The lab cannot be brought up or down as asked."""


def _need_root() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, nspawn); run it as root")


def read_inventory(path: Path) -> dict:
    if not path.exists():
        raise LabError(f"inventory {path} does not exist")
    exe = Path(sys.executable).parent / "ansible-inventory"
    cmd = [str(exe) if exe.exists() else "ansible-inventory", "-i", str(path), "--list"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise LabError(f"cannot read inventory {path}: {proc.stderr.strip()[-600:]}")
    try:
        return json.loads(proc.stdout)
    except ValueError as exc:
        raise LabError(f"ansible-inventory gave no JSON for {path}: {exc}") from exc


def up(inventory: Path, log=print) -> dict[str, float]:
    """Build the rootfs (once) and boot the lab; return the seconds each phase took."""
    _need_root()
    times: dict[str, float] = {}
    old = labhosts.Plan.load(topology.STATE_DIR)
    if old is not None:
        raise LabError(
            f"a lab is already up (state in {topology.STATE_DIR}); run `viocluster lab down` first"
        )
    inventory_data = read_inventory(inventory)
    plan = topology.plan_from_inventory(inventory_data, rootfs="")
    rootfs, built = ensure_rootfs(log=log)
    times["rootfs"] = built
    plan.rootfs = str(rootfs.path)
    started = time.monotonic()
    log(f"booting {len(plan.hosts)} hosts (networks, systemd-nspawn) and waiting for their SSH")
    try:
        labhosts.create(plan)
    except BaseException:
        labhosts.destroy(plan)
        raise
    times["hosts"] = time.monotonic() - started
    write_domain_keys(inventory_data, topology.STATE_DIR)
    started = time.monotonic()
    log("building the wheelhouses the roles install offline (violin-switch, viocluster)")
    build_wheels()
    times["wheels"] = time.monotonic() - started
    return times


def write_domain_keys(inventory: dict, state_dir: Path) -> None:
    """Per domain, the secrets a real site keeps in a vault, made by the lab instead.

    ``violin-<domain>.key``: the domain's virtual-network key. ``broker-<domain>``: the SSH key
    the domain's broker logs in to lending hosts of peer domains with (its ``.pub`` goes into
    the lending accounts' authorized_keys). ``ca-passphrase``: the passphrase the brokers' CA
    keys are encrypted with.
    """
    domains, _ = topology.domains_from_inventory(inventory)
    for domain in domains:
        path = state_dir / f"violin-{domain.name}.key"
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_hex(32) + "\n")
        broker_key = state_dir / f"broker-{domain.name}"
        if not broker_key.exists():
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"broker@{domain.head}",
                 "-f", str(broker_key)],
                check=True, capture_output=True,
            )
    passphrase = state_dir / "ca-passphrase"
    if not passphrase.exists():
        fd = os.open(passphrase, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(32) + "\n")


def build_wheels() -> None:
    """The wheelhouses the lab inventory points the roles at (rebuilt: sources may have changed)."""
    build_wheelhouse(topology.STATE_DIR / "wheels", [REPO / "switch"])
    build_wheelhouse(topology.STATE_DIR / "broker-wheels", [REPO], constraints=REPO / "requirements.txt")


def build_wheelhouse(dest: Path, sources: list[Path], constraints: Path | None = None) -> None:
    """Wheels of the project's own distributions and their dependencies, built on this machine.

    The hosts have no package registry; the roles copy these and install them offline
    (pip --no-index). The lab inventory points the roles here: ``wheels`` holds violin-switch
    (every host), ``broker-wheels`` viocluster (the brokers on the head nodes), pinned to the
    versions of ``requirements.txt``.
    """
    sources = [p for p in sources if (p / "pyproject.toml").is_file()]
    if not sources:
        return
    dest.mkdir(parents=True, exist_ok=True)
    pin = ["--constraint", str(constraints)] if constraints and constraints.is_file() else []
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
         "--no-build-isolation", *pin, "--wheel-dir", str(dest), *map(str, sources)],
        capture_output=True, text=True, check=False,
        env={**os.environ, "SOURCE_DATE_EPOCH": "1700000000"},
    )
    if proc.returncode != 0:
        raise LabError(f"building the wheels in {dest} failed: {proc.stderr.strip()[-800:]}")


def down(log=print) -> list[str]:
    _need_root()
    plan = labhosts.Plan.load(topology.STATE_DIR)
    if plan is None:
        return []
    removed = labhosts.destroy(plan)
    left = labhosts.leftovers(plan)
    if left:
        raise LabError(f"lab down left behind: {', '.join(left)}")
    return removed


def status() -> list[tuple[str, str, bool]]:
    plan = labhosts.Plan.load(topology.STATE_DIR)
    if plan is None:
        return []
    return [(h.name, h.ip, bool(h.pid) and labhosts._alive(h.pid)) for h in plan.hosts]


def _cmd_up(args: argparse.Namespace) -> int:
    times = up(args.inventory)
    plan = labhosts.Plan.load(topology.STATE_DIR)
    assert plan is not None
    where = "cached" if times["rootfs"] == 0 else f"built in {times['rootfs']:.1f} s"
    print(f"lab up: {len(plan.hosts)} hosts answer SSH after {times['hosts']:.1f} s "
          f"(root filesystem {where}: {plan.rootfs})")
    for host in plan.hosts:
        print(f"  {host.name:12} {host.ip}")
    print(f"inventory: {args.inventory}   next: ansible-playbook playbooks/site.yml")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    started = time.monotonic()
    removed = down()
    if not removed:
        print("lab down: no lab was up")
    else:
        print(f"lab down: removed {len(removed)} namespaces and links in "
              f"{time.monotonic() - started:.1f} s; nothing left behind")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from broker.lab import faults

    plan = labhosts.Plan.load(topology.STATE_DIR)
    if plan is None:
        print("lab: down")
        return 1
    rows = faults.host_faults(plan)
    for row in rows:
        state = row.state if row.state != "stopped" else "STOPPED"
        print(f"{row.name:12} {row.ip:15} {state}{'  (cut off)' if row.cut else ''}")
    for a, b in plan.partitions:
        print(f"partition    {a} | {b}")
    # a host the lab crashed on purpose is as asked; one that stopped by itself is not
    return 0 if all(row.state != "stopped" for row in rows) else 1


def _lab_plan() -> labhosts.Plan:
    _need_root()
    plan = labhosts.Plan.load(topology.STATE_DIR)
    if plan is None:
        raise LabError("the lab is not up; `viocluster lab up` first")
    return plan


def _cmd_crash(args: argparse.Namespace) -> int:
    from broker.lab import faults

    started = time.monotonic()
    host = faults.crash(_lab_plan(), args.host)
    print(f"lab crash: {host.name} powered off at once ({time.monotonic() - started:.2f} s); "
          f"its address {host.ip} stays, nothing answers")
    return 0


def _cmd_start(args: argparse.Namespace) -> int:
    from broker.lab import faults

    started = time.monotonic()
    host = faults.start(_lab_plan(), args.host)
    print(f"lab start: {host.name} booted and answers SSH after {time.monotonic() - started:.1f} s")
    return 0


def _cmd_partition(args: argparse.Namespace) -> int:
    from broker.lab import faults

    plan = _lab_plan()
    faults.partition(plan, args.domain, args.other)
    print(f"lab partition: the router drops traffic between domains {args.domain} and "
          f"{args.other}; `viocluster lab heal` undoes it")
    return 0


def _cmd_cut(args: argparse.Namespace) -> int:
    from broker.lab import faults

    host = faults.cut(_lab_plan(), args.host)
    print(f"lab cut: {host.name}'s port is down (the host runs on, unreachable); "
          "`viocluster lab heal` undoes it")
    return 0


def _cmd_heal(args: argparse.Namespace) -> int:
    from broker.lab import faults

    healed = faults.heal(_lab_plan())
    print(f"lab heal: {', '.join(healed)} undone" if healed else "lab heal: no partition or cut")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from broker.lab.demo import DemoSettings, demo

    demo(DemoSettings(inventory=args.inventory, out=args.out, jobs_a=args.jobs_a,
                      jobs_b=args.jobs_b, job_seconds=args.job_seconds,
                      run_site=not args.skip_site, borrower=args.borrower, lender=args.lender),
         up=up, build_wheels=build_wheels)
    return 0


def _cmd_twin(args: argparse.Namespace) -> int:
    from broker.lab.twin import TwinSettings, load_record, replay, run_lab

    if args.replay is not None:
        record = load_record(args.replay)
    else:
        record = run_lab(TwinSettings(inventory=args.inventory, out=args.out, seed=args.seed,
                                      run_site=not args.skip_site),
                         log=print, up=up, build_wheels=build_wheels)
    _comparison, _costs, text = replay(record, args.out)
    print()
    print(text)
    print(f"\n(written to {args.out}: twin.txt, twin.json, jobs.csv"
          + ("" if args.replay is not None else ", lab.json") + ")")
    return 0


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return value


def _inventory_option(p: argparse.ArgumentParser,
                      text: str = "lab inventory (default: inventories/lab)") -> None:
    p.add_argument("-i", "--inventory", type=Path, default=DEFAULT_INVENTORY, help=text)


def register(subparsers: argparse._SubParsersAction) -> None:
    lab = subparsers.add_parser("lab", help="the one-machine lab: up, down, status, demo, faults")
    sub = lab.add_subparsers(dest="lab_command", metavar="ACTION")
    sub.required = True
    p_up = sub.add_parser("up", help="boot the lab's hosts (nspawn, real SSH) from the inventory")
    _inventory_option(p_up)
    p_up.set_defaults(func=_cmd_up)
    p_demo = sub.add_parser("demo", help="the live trade: lab up, site.yml, a burst on A, A borrows "
                                         "a machine of B, a burst on B, B reclaims it")
    _inventory_option(p_demo)
    p_demo.add_argument("--out", type=Path, default=Path("out/demo"),
                        help="where site.log, timeline.txt and summary.json go (default: out/demo)")
    p_demo.add_argument("--jobs-a", type=_positive, default=8, help="jobs in A's burst (default 8)")
    p_demo.add_argument("--jobs-b", type=_positive, default=3, help="jobs in B's burst (default 3)")
    p_demo.add_argument("--job-seconds", type=_positive, default=15,
                        help="how long each job works (default 15)")
    p_demo.add_argument("--borrower", default="a",
                        help="the domain that bursts and borrows, A (default a; Slurm or PBS)")
    p_demo.add_argument("--lender", default="b",
                        help="the domain that lends and reclaims, B (default b; Slurm or PBS)")
    p_demo.add_argument("--skip-site", action="store_true",
                        help="do not run site.yml (the lab's hosts are configured already)")
    p_demo.set_defaults(func=_cmd_demo)
    p_twin = sub.add_parser("twin", help="one workload (46 jobs, ten minutes) in the lab and in the "
                            "simulator with the lab's measured costs, side by side")
    _inventory_option(p_twin, "lab inventory with Slurm domains a and b (default: inventories/lab)")
    p_twin.add_argument("--out", type=Path, default=Path("out/twin"),
                        help="where lab.json, twin.txt, twin.json and jobs.csv go (default: out/twin)")
    p_twin.add_argument("--seed", type=_positive, default=1, help="the workload's seed (default 1)")
    p_twin.add_argument("--skip-site", action="store_true",
                        help="do not run site.yml first (the lab is converged already)")
    p_twin.add_argument("--replay", type=Path, metavar="LAB_JSON",
                        help="no lab run: the simulator and the comparison on a recorded lab.json")
    p_twin.set_defaults(func=_cmd_twin)
    p_down = sub.add_parser("down", help="power the lab off and remove all of it")
    p_down.set_defaults(func=_cmd_down)
    p_status = sub.add_parser("status", help="list the lab's hosts, crashed ones and partitions")
    p_status.set_defaults(func=_cmd_status)
    # faults (broker/lab/faults.py)
    p_crash = sub.add_parser("crash", help="fault: kill every process of a host at once, "
                                           "as a power cut")
    p_crash.add_argument("host", help="lab host, e.g. b-node1")
    p_crash.set_defaults(func=_cmd_crash)
    p_start = sub.add_parser("start", help="boot a crashed host again, with its persistent state")
    p_start.add_argument("host", help="lab host, e.g. b-node1")
    p_start.set_defaults(func=_cmd_start)
    p_part = sub.add_parser("partition", help="fault: the router drops traffic between two domains")
    p_part.add_argument("domain", help="lab domain, e.g. a")
    p_part.add_argument("other", help="another lab domain, e.g. b")
    p_part.set_defaults(func=_cmd_partition)
    p_cut = sub.add_parser("cut", help="fault: pull a host's cable (its bridge port goes down)")
    p_cut.add_argument("host", help="lab host, e.g. b-node1")
    p_cut.set_defaults(func=_cmd_cut)
    p_heal = sub.add_parser("heal", help="undo every partition and cut")
    p_heal.set_defaults(func=_cmd_heal)
