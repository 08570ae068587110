"""The lab hosts' shared root filesystem: built once with debootstrap, cached, read-only.

Every lab host and molecule host boots from the same tree through an overlay of its own, so
the tree holds every package a role needs (lab hosts have no package registry). The cache key
is a hash of the package list and of this recipe: changing either builds a new tree beside the
old one, under ``/var/cache/viocluster/rootfs-<hash>``.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from broker.errors import UserError

#: Bump when the recipe below changes in a way the package list does not show.
RECIPE_VERSION = "4"
SUITE = "bookworm"
CACHE_DIR = Path(os.environ.get("VIOCLUSTER_LAB_CACHE", "/var/cache/viocluster"))
#: Services installed by the packages but started only by the roles that own them.
DISABLED_UNITS = (
    "munge.service",
    "slurmctld.service",
    "slurmd.service",
    "nfs-ganesha.service",
    "nfs-ganesha-lock.service",
    "rpcbind.service",
    "rpcbind.socket",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "e2scrub_all.timer",
    "fstrim.timer",
)
#: Units that cannot work in a container on this kind of kernel (no rpc_pipefs, no sunrpc).
MASKED_UNITS = ("run-rpc_pipefs.mount", "rpc-gssd.service", "rpc-svcgssd.service")
#: Files the packages leave that must differ per host or per domain, removed from the tree.
PER_HOST_FILES = ("etc/hostname", "etc/munge/munge.key")


class RootfsError(UserError):
    """The root filesystem could not be built."""


@dataclass(frozen=True)
class Rootfs:
    path: Path
    packages: tuple[str, ...]
    key: str

    @property
    def ready(self) -> bool:
        return (self.path / ".viocluster-rootfs").is_file()


def package_list_text() -> str:
    return resources.files("broker.lab").joinpath("host-packages.txt").read_text()


def parse_packages(text: str) -> tuple[str, ...]:
    """Package names from the list: one group a line, ``#`` starts a comment."""
    names: set[str] = set()
    for line in text.splitlines():
        names.update(line.split("#", 1)[0].split())
    return tuple(sorted(names))


def rootfs_for(text: str | None = None, cache_dir: Path | None = None) -> Rootfs:
    packages = parse_packages(package_list_text() if text is None else text)
    digest = hashlib.sha256(
        f"{RECIPE_VERSION}\n{SUITE}\n{' '.join(packages)}".encode()
    ).hexdigest()[:12]
    base = CACHE_DIR if cache_dir is None else cache_dir
    return Rootfs(path=base / f"rootfs-{digest}", packages=packages, key=digest)


def ensure_rootfs(rootfs: Rootfs | None = None, log=print) -> tuple[Rootfs, float]:
    """Build the tree unless it is cached; return it and the seconds spent building (0.0)."""
    rootfs = rootfs or rootfs_for()
    if rootfs.ready:
        return rootfs, 0.0
    if shutil.which("debootstrap") is None:
        raise RootfsError(
            "debootstrap is not installed; run `make setup` (packaging/apt-packages.txt lists it)"
        )
    rootfs.path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = rootfs.path.parent / f".{rootfs.path.name}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run may be building the same tree
        if rootfs.ready:
            return rootfs, 0.0
        started = time.monotonic()
        log(f"building the lab root filesystem {rootfs.path} ({len(rootfs.packages)} packages)")
        _build(rootfs)
        return rootfs, time.monotonic() - started


def _build(rootfs: Rootfs) -> None:
    tmp = rootfs.path.with_name(rootfs.path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [
        "debootstrap",
        "--variant=minbase",
        "--include=" + ",".join(rootfs.packages),
        SUITE,
        str(tmp),
    ]
    mirror = os.environ.get("VIOCLUSTER_LAB_MIRROR")
    if mirror:
        cmd.append(mirror)
    log_path = rootfs.path.with_name(rootfs.path.name + ".log")
    with open(log_path, "w") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        raise RootfsError(
            f"debootstrap failed (exit {proc.returncode}); see {log_path}. A package name in "
            "broker/lab/host-packages.txt may be wrong, or the Debian mirror unreachable "
            "(set VIOCLUSTER_LAB_MIRROR)"
        )
    _prepare(tmp)
    (tmp / ".viocluster-rootfs").write_text(" ".join(rootfs.packages) + "\n")
    tmp.rename(rootfs.path)


def _prepare(tree: Path) -> None:
    """Make one tree fit every host: no per-host identity, no service that a role owns."""
    subprocess.run(
        ["systemctl", f"--root={tree}", "disable", "--quiet", *DISABLED_UNITS],
        check=False,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    subprocess.run(
        ["systemctl", f"--root={tree}", "mask", "--quiet", *MASKED_UNITS],
        check=False,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    (tree / "etc/default/locale").write_text("LANG=C.UTF-8\n")
    for rel in PER_HOST_FILES:
        (tree / rel).unlink(missing_ok=True)
    for key in (tree / "etc/ssh").glob("ssh_host_*"):
        key.unlink()  # each host gets its own keys from the lab at first boot
    (tree / "etc/machine-id").write_text("")  # systemd makes a fresh id per boot
    (tree / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    for deb in (tree / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()
    # No package registry inside the lab: apt must fail fast rather than hang on the network.
    (tree / "etc/apt/sources.list").write_text("")
