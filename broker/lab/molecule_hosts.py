"""Molecule's lab-host driver: ``create`` and ``destroy`` for one scenario.

Called by molecule/resources/create.yml and destroy.yml. Every scenario gets names derived
from its own name (a short tag of at most 8 characters), its own bridge and its own /24 in
10.205.0.0/16, so scenarios of different roles run at the same time without colliding.

    python -m broker.lab.molecule_hosts create --scenario NAME --platforms JSON \
        --instance-config FILE
    python -m broker.lab.molecule_hosts destroy --scenario NAME [--instance-config FILE]

Platform keys understood besides ``name`` and ``groups`` (all optional):
``lab_dirs``: paths that get a private directory on the real filesystem instead of the overlay
(an NFS export must not sit on overlayfs); ``lab_shared_dirs``: paths that get one directory
shared by every platform naming the same path.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import re
import subprocess
import sys
import zlib
from ipaddress import IPv4Network
from pathlib import Path

from broker.errors import UserError
from broker.lab import hosts as labhosts
from broker.lab.rootfs import ensure_rootfs

MOLECULE_RANGE = IPv4Network("10.205.0.0/16")
STATE_ROOT = Path("/var/tmp")
LOCK = Path("/run/vlab-molecule.lock")
_HOST_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")


class ScenarioError(UserError):
    """A molecule.yml the driver cannot use."""


def short_tag(scenario: str) -> str:
    """At most 8 characters naming the scenario: 5 of its letters and a 3-hex hash."""
    letters = re.sub(r"[^a-z0-9]", "", scenario.lower())[:5] or "s"
    return f"{letters}{zlib.crc32(scenario.encode()) & 0xFFF:03x}"


def state_dir(scenario: str) -> Path:
    return STATE_ROOT / f"vlab-molecule-{short_tag(scenario)}"


def _used_subnets() -> set[IPv4Network]:
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True,
                         check=False).stdout
    used = set()
    for match in re.finditer(r"inet (\d+\.\d+\.\d+\.\d+/\d+)", out):
        net = IPv4Network(match.group(1), strict=False)
        if net.subnet_of(MOLECULE_RANGE):
            used.add(net)
    return used


def pick_subnet(scenario: str, used: set[IPv4Network]) -> IPv4Network:
    """A /24 of 10.205.0.0/16 chosen from the scenario's name, the next free one if taken."""
    subnets = list(MOLECULE_RANGE.subnets(new_prefix=24))[1:-1]
    start = zlib.crc32(scenario.encode()) % len(subnets)
    for i in range(len(subnets)):
        candidate = subnets[(start + i) % len(subnets)]
        if candidate not in used:
            return candidate
    raise ScenarioError("every /24 of 10.205.0.0/16 is in use; destroy some scenarios")


def plan_for(scenario: str, platforms: list[dict], subnet: IPv4Network, rootfs: str) -> labhosts.Plan:
    if not platforms:
        raise ScenarioError(f"scenario {scenario}: molecule.yml lists no platforms")
    if len(platforms) > 50:
        raise ScenarioError(f"scenario {scenario}: at most 50 platforms, not {len(platforms)}")
    tag = short_tag(scenario)
    sdir = state_dir(scenario)
    bridge = f"{tag}-br"
    gateway = subnet.network_address + 1
    plan = labhosts.Plan(name=f"molecule-{scenario}", state_dir=str(sdir), rootfs=rootfs,
                         bridges=[labhosts.Bridge(bridge, None, f"{gateway}/{subnet.prefixlen}")])
    seen: set[str] = set()
    for i, platform in enumerate(platforms, start=1):
        name = platform.get("name", "")
        if not isinstance(name, str) or not _HOST_NAME.match(name):
            raise ScenarioError(
                f"scenario {scenario}: platform name {name!r} must be a host name "
                "(lower case letters, digits, '-', starting with a letter, at most 31)"
            )
        if name in seen:
            raise ScenarioError(f"scenario {scenario}: platform name {name} is listed twice")
        seen.add(name)
        binds = []
        for key, shared in (("lab_dirs", False), ("lab_shared_dirs", True)):
            paths = platform.get(key, [])
            if not isinstance(paths, list) or not all(
                isinstance(p, str) and p.startswith("/") for p in paths
            ):
                raise ScenarioError(
                    f"scenario {scenario}: platform {name}: {key} must be a list of absolute paths"
                )
            for path in paths:
                slug = path.strip("/").replace("/", "_") or "root"
                src = sdir / ("shared" if shared else f"{tag}-{name}") / "dirs" / slug
                binds.append(labhosts.Bind(str(src), path))
        plan.hosts.append(labhosts.Host(
            name=name,
            machine=f"{tag}-{name}",
            address=f"{subnet.network_address + 10 + i}/{subnet.prefixlen}",
            gateway=str(gateway),
            bridge=bridge,
            port=f"{tag}-{i}",
            binds=binds,
        ))
    return plan


def create(scenario: str, platforms: list[dict], instance_config: Path | None) -> labhosts.Plan:
    old = labhosts.Plan.load(state_dir(scenario))
    if old is not None:  # a run that died half way: clean up first
        labhosts.destroy(old)
    rootfs, _ = ensure_rootfs(log=lambda msg: print(msg, file=sys.stderr))
    LOCK.touch(exist_ok=True)
    with open(LOCK) as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two scenarios must not pick the same /24
        plan = plan_for(scenario, platforms, pick_subnet(scenario, _used_subnets()),
                        str(rootfs.path))
        labhosts.check_free(plan)
        plan.save()
        try:
            labhosts.create(plan)
        except BaseException:
            labhosts.destroy(plan)
            raise
    if instance_config is not None:
        instance_config.write_text(json.dumps([
            {
                "instance": h.name,
                "address": h.ip,
                "user": "root",
                "port": 22,
                "identity_file": str(plan.key_file),
            }
            for h in plan.hosts
        ], indent=1) + "\n")
    return plan


def destroy(scenario: str, instance_config: Path | None) -> list[str]:
    plan = labhosts.Plan.load(state_dir(scenario))
    removed = labhosts.destroy(plan) if plan is not None else []
    if instance_config is not None and instance_config.parent.is_dir():
        instance_config.write_text("[]\n")
    if plan is not None:
        left = labhosts.leftovers(plan)
        if left:
            raise labhosts.LabHostError(f"scenario {scenario}: left behind: {', '.join(left)}")
    return removed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m broker.lab.molecule_hosts")
    parser.add_argument("action", choices=("create", "destroy", "show"))
    parser.add_argument("--scenario", required=True)
    parser.add_argument("--platforms", default="[]", help="molecule_yml.platforms as JSON")
    parser.add_argument("--instance-config", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.action == "create":
            try:
                platforms = json.loads(args.platforms)
            except ValueError as exc:
                raise ScenarioError(f"--platforms is not JSON: {exc}") from exc
            plan = create(args.scenario, platforms, args.instance_config)
            print(json.dumps({h.name: h.ip for h in plan.hosts}))
        elif args.action == "destroy":
            print(json.dumps(destroy(args.scenario, args.instance_config)))
        else:
            plan = labhosts.Plan.load(state_dir(args.scenario))
            print(json.dumps(None if plan is None else {h.name: h.ip for h in plan.hosts}))
    except UserError as exc:
        print(f"lab hosts: error: {exc}", file=sys.stderr)
        return exc.exit_status
    return 0


if __name__ == "__main__":
    sys.exit(main())
