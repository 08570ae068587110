#!/usr/bin/env python3
"""Build VioCluster VM base images, cached by the hash of their build inputs.

Kinds:
  busybox    a tiny ext4 image: busybox-static and a shell init (fast tests)
  node       Debian bookworm minbase + slurmd, munge, iproute2, iputils-ping, kmod, nfs-common,
             the UML kernel's modules (NFS client) and the compute-node init
  pbs-node   the same for an OpenPBS domain: Debian minbase + the MoM of the domain's own
             OpenPBS build (/opt/pbs from the archive `python -m broker.lab.pbs_build` makes,
             given with --pbs-archive or VIOCLUSTER_PBS_ARCHIVE), the packages its programs
             load, an empty PBS_HOME for a MoM, and the same init (vc_sched=pbs)
  qemu-boot  vmlinuz + a small initramfs from Debian's linux-image-amd64 package, to boot the
             same ext4 images under QEMU (-kernel/-initrd; root on virtio-blk)

Each build lands in CACHE/KIND-KEY/ where KEY is the SHA-256 (first 16 hex digits) of the
inputs: this script, the kind's init, the package list, the suite, and the versions of the host
parts copied in (UML modules, busybox, kernel package; for pbs-node the OpenPBS archive's sha256).
A build whose directory exists is reused.

  build_image.py key KIND             print the input key
  build_image.py build KIND [--cache DIR] [--mirror URL] [--pbs-archive FILE]
                                      build if needed, print one JSON line:
                                      {"kind", "key", "dir", "image", "changed", ...}

The Debian mirror is read from the machine's apt sources (deb822 .sources files or
sources.list), unless --mirror or VIOCLUSTER_MIRROR gives one. Needs root (debootstrap,
chroot) for "node"; "busybox" and "qemu-boot" need mkfs.ext4, cpio and gzip only.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
SUITE = "bookworm"
DEFAULT_CACHE = Path("/var/cache/viocluster/images")
# Image files get a modification time derived from their key: every copy of one build pins the
# same UML COW header, and a rebuild with other inputs gets another mtime (old COWs then fail
# the header check instead of being applied to the wrong base).
EPOCH = 1700000000


def key_mtime(key: str) -> int:
    return EPOCH + int(key[:7], 16)
NODE_PACKAGES = [
    "slurmd", "munge", "iproute2", "iputils-ping", "kmod", "nfs-common", "netbase", "procps",
]
NODE_IMAGE_SIZE = "1G"
# The OpenPBS MoM's image: no Slurm, no munge (PBS's MoM authenticates by reserved port to its
# server); the packages the archive's programs load come from the archive's own list.
PBS_NODE_PACKAGES = [
    "iproute2", "iputils-ping", "kmod", "nfs-common", "netbase", "procps",
]
PBS_NODE_IMAGE_SIZE = "1536M"
PBS_HOME = "/var/spool/pbs"
BUSYBOX_IMAGE_SIZE = "16M"
# Modules the QEMU initramfs loads to find its root filesystem and its network card.
# qemu_fw_cfg shows the guest the config directory's files QEMU passes with -fw_cfg.
QEMU_MODULES = ["virtio_pci", "virtio_blk", "virtio_net", "ext4", "crc32c_generic", "qemu_fw_cfg"]


class BuildError(Exception):
    """A build input is missing or a build step failed; the message says what to do."""


@dataclass
class Inputs:
    kind: str
    parts: dict[str, str] = field(default_factory=dict)

    def key(self) -> str:
        blob = json.dumps({"kind": self.kind, **self.parts}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw)
    except FileNotFoundError as exc:
        raise BuildError(f"{cmd[0]} not found: install it (see packaging/apt-packages.txt)") from exc
    except subprocess.CalledProcessError as exc:
        tail = (exc.stderr or exc.stdout or "").strip().splitlines()[-15:]
        raise BuildError(f"{' '.join(cmd[:3])} failed (rc {exc.returncode}):\n" + "\n".join(tail)) from exc


def uml_modules_dir() -> Path:
    base = Path("/usr/lib/uml/modules")
    versions = sorted(p for p in base.glob("*") if p.is_dir()) if base.is_dir() else []
    if not versions:
        raise BuildError("no UML kernel modules in /usr/lib/uml/modules: install user-mode-linux")
    return versions[-1]


def busybox_binary() -> Path:
    for cand in (Path("/bin/busybox"), Path("/usr/bin/busybox")):
        if cand.is_file():
            return cand
    raise BuildError("busybox not found: install busybox-static")


def kernel_package() -> str:
    """The versioned linux-image package that linux-image-amd64 depends on (from apt's lists)."""
    out = run(["apt-cache", "depends", "linux-image-amd64"]).stdout
    m = re.search(r"Depends:\s*(linux-image-\S+)", out)
    if not m:
        raise BuildError("apt-cache knows no linux-image-amd64: run apt-get update")
    pkg = m.group(1)
    ver = run(["apt-cache", "policy", pkg]).stdout
    v = re.search(r"Candidate:\s*(\S+)", ver)
    return f"{pkg}={v.group(1) if v else 'unknown'}"


def code_hash(*funcs) -> str:
    """Hash of the source of the functions that build a kind (edits elsewhere keep caches)."""
    src = "".join(inspect.getsource(f) for f in (mkfs_from_tree, *funcs))
    return hashlib.sha256(src.encode()).hexdigest()


def inputs_for(kind: str) -> Inputs:
    if kind == "busybox":
        bb = busybox_binary()
        script = code_hash(build_busybox)
        return Inputs(kind, {"script": script, "init": sha(HERE / "busybox" / "viocluster-init"),
                             "busybox": sha(bb), "size": BUSYBOX_IMAGE_SIZE})
    if kind == "node":
        script = code_hash(build_node)
        return Inputs(kind, {"script": script, "init": sha(HERE / "node" / "viocluster-init"),
                             "watchdog": sha(HERE / "node" / "viocluster-watchdog"),
                             "packages": " ".join(NODE_PACKAGES), "suite": SUITE,
                             "uml_modules": uml_modules_dir().name, "size": NODE_IMAGE_SIZE})
    if kind == "pbs-node":
        archive = pbs_archive()
        script = code_hash(build_node, build_pbs_node, pbs_packages)
        return Inputs(kind, {"script": script, "init": sha(HERE / "node" / "viocluster-init"),
                             "watchdog": sha(HERE / "node" / "viocluster-watchdog"),
                             "packages": " ".join(PBS_NODE_PACKAGES), "suite": SUITE,
                             "openpbs": sha(archive),
                             "uml_modules": uml_modules_dir().name, "size": PBS_NODE_IMAGE_SIZE})
    if kind == "qemu-boot":
        script = hashlib.sha256((code_hash(build_qemu_boot, module_closure, modinfo_depends)
                                 + QEMU_INIT).encode()).hexdigest()
        return Inputs(kind, {"script": script, "kernel": kernel_package(),
                             "busybox": sha(busybox_binary()), "modules": " ".join(QEMU_MODULES)})
    raise BuildError(f"unknown image kind {kind!r}: use busybox, node, pbs-node or qemu-boot")


def pbs_archive() -> Path:
    """The OpenPBS archive of the domain's build (VIOCLUSTER_PBS_ARCHIVE, or --pbs-archive)."""
    env = os.environ.get("VIOCLUSTER_PBS_ARCHIVE", "")
    if not env:
        raise BuildError("the pbs-node image needs the domain's OpenPBS archive: pass --pbs-archive "
                         "FILE (python -m broker.lab.pbs_build --print-archive prints it)")
    path = Path(env)
    if not path.is_file():
        raise BuildError(f"OpenPBS archive {path} not found: build it with "
                         "python -m broker.lab.pbs_build")
    return path


def pbs_packages(archive: Path) -> list[str]:
    """The Debian packages the archive's programs load (its packages-common.txt)."""
    import tarfile
    with tarfile.open(archive) as tar:
        for member in tar:
            if member.name.rstrip("/").endswith("viocluster-pbs/packages-common.txt"):
                f = tar.extractfile(member)
                return (f.read().decode() if f else "").split()
    raise BuildError(f"{archive} has no viocluster-pbs/packages-common.txt: not an archive of "
                     "python -m broker.lab.pbs_build")


# ---------------------------------------------------------------- apt sources -> mirror
def parse_sources(text: str, deb822: bool) -> list[tuple[str, list[str]]]:
    """(uri, suites) of every enabled 'deb' source in one apt sources file."""
    found: list[tuple[str, list[str]]] = []
    if deb822:
        for stanza in re.split(r"\n\s*\n", text):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line or line[:1].isspace():
                    continue
                k, v = line.split(":", 1)
                fields[k.strip().lower()] = v.strip()
            if "deb" not in fields.get("types", "").split():
                continue
            if fields.get("enabled", "yes").lower() == "no":
                continue
            for uri in fields.get("uris", "").split():
                found.append((uri, fields.get("suites", "").split()))
    else:
        for line in text.splitlines():
            line = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
            if len(line) >= 3 and line[0] == "deb":
                found.append((line[1], [line[2]]))
    return found


def apt_mirror(root: Path = Path("/etc/apt")) -> str:
    env = os.environ.get("VIOCLUSTER_MIRROR")
    if env:
        return env
    files: list[tuple[Path, bool]] = []
    if (root / "sources.list").is_file():
        files.append((root / "sources.list", False))
    for p in sorted((root / "sources.list.d").glob("*")):
        if p.suffix in (".list", ".sources"):
            files.append((p, p.suffix == ".sources"))
    for path, deb822 in files:
        for uri, suites in parse_sources(path.read_text(errors="replace"), deb822):
            if SUITE in suites and not uri.startswith(("cdrom:", "file:")):
                return uri
    raise BuildError(f"no 'deb' source for {SUITE} in {root}/sources.list(.d): "
                     "configure one, or set VIOCLUSTER_MIRROR=URL")


# ---------------------------------------------------------------- image writing
def mkfs_from_tree(tree: Path, image: Path, size: str, label: str, key: str) -> None:
    """ext4 image from a directory, with a UUID and timestamps derived from the key."""
    fs_uuid = str(uuid.UUID(hashlib.sha256(key.encode()).hexdigest()[:32]))
    env = dict(os.environ, E2FSPROGS_FAKE_TIME=str(key_mtime(key)))
    run(["truncate", "-s", size, str(image)])
    run(["mkfs.ext4", "-q", "-F", "-L", label, "-U", fs_uuid, "-E", f"hash_seed={fs_uuid}",
         "-d", str(tree), str(image)], env=env)
    os.chmod(image, 0o444)
    os.utime(image, (key_mtime(key), key_mtime(key)))


def build_busybox(work: Path, out: Path, key: str) -> dict:
    root = work / "root"
    for d in ("bin", "sbin", "proc", "sys", "dev", "etc", "tmp", "run", "root", "var/www", "mnt"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(busybox_binary(), root / "bin" / "busybox")
    applets = run([str(root / "bin" / "busybox"), "--list"]).stdout.split()
    for a in applets:
        link = root / "bin" / a
        if not link.exists():
            link.symlink_to("busybox")
    shutil.copy(HERE / "busybox" / "viocluster-init", root / "sbin" / "viocluster-init")
    os.chmod(root / "sbin" / "viocluster-init", 0o755)
    (root / "sbin" / "init").symlink_to("viocluster-init")
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\n")
    image = out / "busybox.img"
    mkfs_from_tree(root, image, BUSYBOX_IMAGE_SIZE, "vcbusybox", key)
    return {"image": str(image), "init": "/sbin/viocluster-init"}


def build_node(work: Path, out: Path, key: str, mirror: str, cache: Path) -> dict:
    if os.geteuid() != 0:
        raise BuildError("building the node image needs root (debootstrap, chroot)")
    root = work / "root"
    debs = cache / "debootstrap-cache"
    debs.mkdir(parents=True, exist_ok=True)
    run(["debootstrap", "--variant=minbase", f"--include={','.join(NODE_PACKAGES)}",
         f"--cache-dir={debs}", SUITE, str(root), mirror])
    mods = uml_modules_dir()
    shutil.copytree(mods, root / "lib" / "modules" / mods.name, symlinks=True)
    for prog in ("viocluster-init", "viocluster-watchdog"):
        shutil.copy(HERE / "node" / prog, root / "sbin" / prog)
        os.chmod(root / "sbin" / prog, 0o755)
    # Package scripts leave a random munge key and a host identity in the tree: every VM
    # would share them. The key reaches each VM from its domain's config directory instead.
    for rel in ("etc/munge/munge.key", "etc/hostname", "etc/ssh/ssh_host_rsa_key"):
        (root / rel).unlink(missing_ok=True)
    (root / "etc" / "machine-id").write_text("")
    # debootstrap copies the builder's resolv.conf: the guest gets its name servers (if any)
    # from its domain, not from the build machine.
    (root / "etc" / "resolv.conf").unlink(missing_ok=True)
    (root / "etc" / "resolv.conf").write_text("")
    for p in (root / "var" / "cache" / "apt" / "archives").glob("*.deb"):
        p.unlink()
    for p in (root / "var" / "lib" / "apt" / "lists").glob("*_Packages"):
        p.unlink()
    for d in ("var/spool/slurmd", "var/log/slurm", "etc/slurm", "mnt/config"):
        (root / d).mkdir(parents=True, exist_ok=True)
    image = out / "node.img"
    mkfs_from_tree(root, image, NODE_IMAGE_SIZE, "vcnode", key)
    return {"image": str(image), "init": "/sbin/viocluster-init"}


def build_pbs_node(work: Path, out: Path, key: str, mirror: str, cache: Path) -> dict:
    """Debian minbase, the domain's OpenPBS tree and an empty MoM home, the node init."""
    if os.geteuid() != 0:
        raise BuildError("building the pbs-node image needs root (debootstrap, chroot)")
    archive = pbs_archive()
    root = work / "root"
    debs = cache / "debootstrap-cache"
    debs.mkdir(parents=True, exist_ok=True)
    packages = sorted(set(PBS_NODE_PACKAGES) | set(pbs_packages(archive)))
    run(["debootstrap", "--variant=minbase", f"--include={','.join(packages)}",
         f"--cache-dir={debs}", SUITE, str(root), mirror])
    run(["tar", "-xzpf", str(archive), "-C", str(root), "--strip-components=0", "opt/pbs"])
    missing = run(["chroot", str(root), "sh", "-c",
                   "for f in /opt/pbs/sbin/pbs_mom /opt/pbs/bin/qstat; do ldd $f; done"
                   " | grep 'not found' || true"]).stdout.strip()
    if missing:
        raise BuildError(f"the MoM's libraries are missing from the image:\n{missing}")
    mods = uml_modules_dir()
    shutil.copytree(mods, root / "lib" / "modules" / mods.name, symlinks=True)
    for prog in ("viocluster-init", "viocluster-watchdog"):
        shutil.copy(HERE / "node" / prog, root / "sbin" / prog)
        os.chmod(root / "sbin" / prog, 0o755)
    # PBS_HOME as OpenPBS's own post-install makes it for an execution host, with a placeholder
    # server: each VM's init writes /etc/pbs.conf and mom_priv/config for its domain's server.
    (root / "etc" / "pbs.conf").write_text(
        f"PBS_EXEC=/opt/pbs\nPBS_HOME={PBS_HOME}\nPBS_SERVER=pbs-server-unset\n"
        "PBS_START_SERVER=0\nPBS_START_SCHED=0\nPBS_START_COMM=0\nPBS_START_MOM=1\n")
    run(["chroot", str(root), "/opt/pbs/libexec/pbs_postinstall", "execution", "23.06.06",
         "/opt/pbs", PBS_HOME, "", "sameconf"])
    if not (root / PBS_HOME.lstrip("/") / "mom_priv").is_dir():
        raise BuildError("pbs_postinstall made no mom_priv in PBS_HOME")
    for rel in ("etc/pbs.conf", "etc/hostname", "etc/ssh/ssh_host_rsa_key",
                PBS_HOME.lstrip("/") + "/server_name"):
        (root / rel).unlink(missing_ok=True)
    (root / "etc" / "machine-id").write_text("")
    (root / "etc" / "resolv.conf").unlink(missing_ok=True)
    (root / "etc" / "resolv.conf").write_text("")
    for p in (root / "var" / "cache" / "apt" / "archives").glob("*.deb"):
        p.unlink()
    for p in (root / "var" / "lib" / "apt" / "lists").glob("*_Packages"):
        p.unlink()
    (root / "mnt" / "config").mkdir(parents=True, exist_ok=True)
    image = out / "pbs-node.img"
    mkfs_from_tree(root, image, PBS_NODE_IMAGE_SIZE, "vcpbsnode", key)
    return {"image": str(image), "init": "/sbin/viocluster-init"}


def modinfo_depends(path: Path) -> list[str]:
    """The depends= entry of a module's .modinfo section (no depmod needed)."""
    data = path.read_bytes()
    i = data.find(b"\0depends=")
    if i < 0:
        return []
    raw = data[i + 9:data.index(b"\0", i + 1)].decode()
    return [d.replace("-", "_") for d in raw.split(",") if d]


def module_closure(moddir: Path, names: list[str]) -> list[str]:
    """Module files (relative to moddir) for names, dependencies first."""
    by_name = {p.name[:-3].replace("-", "_"): p for p in (moddir / "kernel").rglob("*.ko")}
    builtin = {Path(x).name.split(".ko")[0].replace("-", "_")
               for x in (moddir / "modules.builtin").read_text().split()}
    order: list[str] = []

    def visit(name: str) -> None:
        if name in builtin:
            return
        if name not in by_name:
            raise BuildError(f"kernel module {name} neither built in nor in {moddir}")
        for dep in modinfo_depends(by_name[name]):
            visit(dep)
        rel = str(by_name[name].relative_to(moddir))
        if rel not in order:
            order.append(rel)

    for n in names:
        visit(n)
    return order


QEMU_INIT = """#!/bin/sh
# initramfs: load the modules for virtio root and network, then hand over to the image's init.
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do insmod "/$m" 2>/dev/null; done
init=$(tr ' ' '\\n' < /proc/cmdline | sed -n 's/^vc_init=//p' | tail -n 1)
i=0; while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done
mkdir -p /newroot; mount -t ext4 -o rw /dev/vda /newroot || { echo "VIOCLUSTER-ERROR no root on /dev/vda"; exec sh; }
umount /sys /proc; mount --move /dev /newroot/dev 2>/dev/null || umount /dev
exec switch_root /newroot "${init:-/sbin/viocluster-init}"
"""


def build_qemu_boot(work: Path, out: Path, key: str, cache: Path) -> dict:
    pkg = kernel_package().split("=")[0]
    debs = cache / "kernel-debs"
    debs.mkdir(parents=True, exist_ok=True)
    if not list(debs.glob(f"{pkg}_*.deb")):
        run(["apt-get", "download", pkg], cwd=debs)
    deb = sorted(debs.glob(f"{pkg}_*.deb"))[-1]
    x = work / "kernel"
    run(["dpkg-deb", "-x", str(deb), str(x)])
    vmlinuz = sorted((x / "boot").glob("vmlinuz-*"))[-1]
    kver = vmlinuz.name[len("vmlinuz-"):]
    moddir = x / "lib" / "modules" / kver
    ird = work / "initrd"
    (ird / "bin").mkdir(parents=True)
    shutil.copy2(busybox_binary(), ird / "bin" / "busybox")
    for a in ("sh", "mount", "umount", "insmod", "sleep", "mkdir", "cat", "tr", "sed", "switch_root"):
        (ird / "bin" / a).symlink_to("busybox")
    order = module_closure(moddir, QEMU_MODULES)
    for rel in order:
        dst = ird / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(moddir / rel, dst)
    (ird / "modules.order").write_text("\n".join(order) + "\n")
    (ird / "init").write_text(QEMU_INIT)
    os.chmod(ird / "init", 0o755)
    files = sorted(str(p.relative_to(ird)) for p in ird.rglob("*"))
    proc = subprocess.run(["cpio", "-o", "-H", "newc", "--reproducible", "--quiet"], cwd=ird,
                          input=("\n".join(["."] + files) + "\n").encode(), capture_output=True)
    if proc.returncode != 0:
        raise BuildError(f"cpio failed: {proc.stderr.decode(errors='replace')}")
    initrd = out / "initrd.img"
    with open(initrd, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=key_mtime(key)) as gz:
        gz.write(proc.stdout)
    shutil.copy2(vmlinuz, out / "vmlinuz")
    for p in (initrd, out / "vmlinuz"):
        os.chmod(p, 0o444)
        os.utime(p, (key_mtime(key), key_mtime(key)))
    return {"kernel": str(out / "vmlinuz"), "initrd": str(initrd), "kernel_version": kver}


FILES = {"busybox": ["busybox.img"], "node": ["node.img"], "pbs-node": ["pbs-node.img"],
         "qemu-boot": ["vmlinuz", "initrd.img"]}


def build(kind: str, cache: Path, mirror: str | None, check: bool = False) -> dict:
    inputs = inputs_for(kind)
    key = inputs.key()
    final = cache / f"{kind}-{key}"
    meta = final / "build.json"
    if meta.is_file():
        info = json.loads(meta.read_text())
        info["changed"] = False
        return info
    if check:  # what a build would give, without building
        return {"kind": kind, "key": key, "dir": str(final), "changed": True,
                "mtime": key_mtime(key), "files": FILES[kind], "inputs": inputs.parts}
    cache.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix=f"vcimg-{kind}-", dir=cache))
    out = work / "out"
    out.mkdir()
    try:
        if kind == "busybox":
            info = build_busybox(work, out, key)
        elif kind == "node":
            info = build_node(work, out, key, mirror or apt_mirror(), cache)
        elif kind == "pbs-node":
            info = build_pbs_node(work, out, key, mirror or apt_mirror(), cache)
        else:
            info = build_qemu_boot(work, out, key, cache)
        info = {k: v.replace(str(out), str(final)) for k, v in info.items()}
        info.update(kind=kind, key=key, dir=str(final), inputs=inputs.parts, mtime=key_mtime(key),
                    files=FILES[kind],
                    build_seconds=round(time.monotonic() - t0, 1))
        (out / "build.json").write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
        os.chmod(out, 0o755)
        try:
            out.rename(final)
        except OSError:
            if not meta.is_file():  # lost a race with a parallel identical build: fine
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    info["changed"] = True
    prune(cache, kind, keep=final)
    return info


def prune(cache: Path, kind: str, keep: Path, count: int = 2) -> None:
    """Drop all but the newest `count` builds of a kind (the new one always stays)."""
    builds = sorted((p for p in cache.glob(f"{kind}-*") if (p / "build.json").is_file()
                     and p.name[len(kind) + 1:].isalnum() and len(p.name) == len(kind) + 17),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    for old in [b for b in builds if b != keep][count - 1:]:
        shutil.rmtree(old, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    k = sub.add_parser("key", help="print the input key of a kind")
    k.add_argument("kind")
    b = sub.add_parser("build", help="build a kind if its cache entry is missing")
    b.add_argument("kind")
    b.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    b.add_argument("--mirror", help="Debian mirror URL (default: from apt sources)")
    b.add_argument("--check", action="store_true", help="report what would be built, build nothing")
    for p in (k, b):
        p.add_argument("--pbs-archive", type=Path,
                       help="pbs-node: the domain's OpenPBS archive (python -m broker.lab.pbs_build "
                            "--print-archive)")
    args = ap.parse_args(argv)
    if args.pbs_archive:
        os.environ["VIOCLUSTER_PBS_ARCHIVE"] = str(args.pbs_archive.resolve())
    try:
        if args.cmd == "key":
            print(inputs_for(args.kind).key())
        else:
            print(json.dumps(build(args.kind, args.cache, args.mirror, args.check), sort_keys=True))
    except BuildError as exc:
        print(f"build_image: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
