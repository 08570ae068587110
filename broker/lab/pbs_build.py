"""OpenPBS built once from its source tarball, cached by the tarball's hash.

No package registry carries OpenPBS, and the hosts of a domain have neither a registry nor a
compiler. So the control node builds it once, inside a systemd-nspawn container that boots
nothing and runs over an overlay of the lab's Debian 12 root filesystem
(:mod:`broker.lab.rootfs`): the build dependencies go into the container's private layer, never
onto this machine. The result is one archive, distributed by the ``pbs`` role the way the
switch's wheels are:

    opt/pbs/...                      the installed tree (prefix /opt/pbs)
    viocluster-pbs/debs/common/      Debian packages the commands and the MoM need that a
                                     host built from the lab's root filesystem lacks
    viocluster-pbs/debs/server/      the same for the server's host (PostgreSQL)
    viocluster-pbs/packages-common.txt, packages-server.txt
                                     the run-time package names (a host with a registry
                                     may install those instead)
    viocluster-pbs/BUILD             the source tarball's sha256 and the configure line

It lands in ``<cache>/openpbs-<first 16 hex digits of the tarball's sha256>-r<recipe>/``
(``/var/cache/viocluster`` unless ``VIOCLUSTER_LAB_CACHE`` says otherwise). A second run with
the same tarball and recipe reuses it.

The tarball is looked up in ``VIOCLUSTER_VENDOR`` (a directory, default ``../shared/vendor``
beside the repository), or given with ``--source``.

    python -m broker.lab.pbs_build [--source TARBALL] [--print-archive]
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from broker.errors import UserError
from broker.lab.rootfs import CACHE_DIR, SUITE, ensure_rootfs

#: Bump when the build recipe below changes in a way the source tarball does not show.
RECIPE_VERSION = "2"
REPO = Path(__file__).resolve().parents[2]
TARBALL_GLOB = "openpbs-*.tar.gz"
ARCHIVE_NAME = "openpbs.tar.gz"
DEFAULT_MIRROR = "http://deb.debian.org/debian"

#: Debian packages the build needs (the source's own list for Debian, plus pkg-config).
BUILD_PACKAGES = (
    "gcc g++ make libtool autoconf automake pkg-config perl swig "
    "libhwloc-dev libx11-dev libxt-dev libxext-dev libxft-dev libedit-dev libical-dev "
    "libncurses-dev libexpat-dev libssl-dev libcjson-dev python3-dev tcl-dev tk-dev "
    "postgresql-server-dev-all postgresql-contrib postgresql"
).split()
#: What the server's host needs beyond the libraries: the datastore's PostgreSQL.
SERVER_PACKAGES = ("postgresql", "postgresql-contrib")
CONFIGURE = "./configure --prefix=/opt/pbs"


class PbsBuildError(UserError):
    """OpenPBS could not be found or built; the message says what to do."""


@dataclass(frozen=True)
class Build:
    source: Path
    sha256: str
    directory: Path

    @property
    def key(self) -> str:
        return self.directory.name

    @property
    def archive(self) -> Path:
        return self.directory / ARCHIVE_NAME

    @property
    def ready(self) -> bool:
        return self.archive.is_file() and (self.directory / "BUILD").is_file()


def vendor_dir() -> Path:
    """Where third-party source tarballs are looked up: ``VIOCLUSTER_VENDOR``, else
    ``../shared/vendor`` beside the repository."""
    env = os.environ.get("VIOCLUSTER_VENDOR")
    return Path(env) if env else REPO.parent / "shared" / "vendor"


def find_source(source: Path | None = None) -> Path:
    """The OpenPBS source tarball, or a one-line error saying where it was looked for."""
    if source is not None:
        if not source.is_file():
            raise PbsBuildError(f"OpenPBS source {source}: no such file")
        return source
    where = vendor_dir()
    found = sorted(where.glob(TARBALL_GLOB)) if where.is_dir() else []
    if not found:
        raise PbsBuildError(
            f"no OpenPBS source tarball ({TARBALL_GLOB}) in {where}; set VIOCLUSTER_VENDOR to "
            "the directory holding it (a `git archive` of github.com/openpbs/openpbs)"
        )
    return found[-1]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_for(source: Path | None = None, cache_dir: Path | None = None) -> Build:
    """Where the build of this source goes (nothing is built)."""
    src = find_source(source)
    digest = sha256_of(src)
    base = (cache_dir or CACHE_DIR)
    return Build(src, digest, base / f"openpbs-{digest[:16]}-r{RECIPE_VERSION}")


def ensure_build(build: Build | None = None, log=print) -> tuple[Build, float]:
    """Build unless cached; return the build and the seconds spent (0.0 when cached)."""
    build = build or build_for()
    if build.ready:
        return build, 0.0
    for tool in ("systemd-nspawn", "tar"):
        if shutil.which(tool) is None:
            raise PbsBuildError(f"{tool} is not installed; run `make setup`")
    if os.geteuid() != 0:
        raise PbsBuildError("building OpenPBS needs root (a systemd-nspawn container)")
    build.directory.parent.mkdir(parents=True, exist_ok=True)
    lock_path = build.directory.parent / f".{build.directory.name}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run may be building the same source
        if build.ready:
            return build, 0.0
        started = time.monotonic()
        rootfs, _ = ensure_rootfs(log=log)
        log(f"building OpenPBS from {build.source.name} in a container (about 10 minutes on "
            f"2 cores); log in {build.directory}.log")
        _build(build, rootfs.path)
        return build, time.monotonic() - started


# The container's script: build dependencies into its private layer, build and install under
# /opt/pbs, then list the run-time packages (the owners of every shared library the installed
# programs load, plus PostgreSQL for the server) and fetch, in a second container over a
# clean layer, the packages a host made from the same root filesystem would lack.
_BUILD_SCRIPT = r"""
set -eu
export DEBIAN_FRONTEND=noninteractive
printf 'deb %s %s main\n' "$MIRROR" "$SUITE" > /etc/apt/sources.list
apt-get -q update
apt-get -q install -y --no-install-recommends $BUILD_PACKAGES
mkdir -p /build/src
tar -xzf /build/source.tar.gz -C /build/src --strip-components=1
cd /build/src
./autogen.sh
$CONFIGURE
make -j"$(nproc)"
make install
# what the source's packages do after installing: the programs that authenticate users to
# the server and copy their files run setuid root
chmod 4755 /opt/pbs/sbin/pbs_iff /opt/pbs/sbin/pbs_rcp
# the libraries the installed programs load, and the packages that own them
find /opt/pbs -type f \( -perm -u+x -o -name '*.so*' \) -exec sh -c \
  'for f; do case "$(head -c4 "$f" | od -An -c | tr -d " ")" in *ELF*) ldd "$f" 2>/dev/null;; esac; done' sh {} + \
  | awk '$2 == "=>" && $3 ~ /^\// {print $3}' | sort -u > /out/libs.txt
: > /out/packages-common.txt
while read -r lib; do
  real=$(readlink -f "$lib")
  for p in "$lib" "$real" "/usr${lib}" "/usr${real}"; do
    owner=$(dpkg -S "$p" 2>/dev/null | head -n1 | cut -d: -f1) && [ -n "$owner" ] && break
  done
  [ -n "${owner:-}" ] && echo "$owner" >> /out/packages-common.txt
  owner=
done < /out/libs.txt
echo python3 >> /out/packages-common.txt   # the hooks' and commands' interpreter
sort -u -o /out/packages-common.txt /out/packages-common.txt
printf '%s\n' $SERVER_PACKAGES > /out/packages-server.txt
cd /
tar --sort=name --numeric-owner -czf /out/opt-pbs.tar.gz opt/pbs
"""

_FETCH_SCRIPT = r"""
set -eu
export DEBIAN_FRONTEND=noninteractive
printf 'deb %s %s main\n' "$MIRROR" "$SUITE" > /etc/apt/sources.list
apt-get -q update
mkdir -p /out/debs/common /out/debs/server
fetch() {  # what installing these would add to this layer, downloaded into $1
  rm -f /var/cache/apt/archives/*.deb
  apt-get -q install -y --no-install-recommends --download-only $(cat "$2")
  cp /var/cache/apt/archives/*.deb "$1"/ 2>/dev/null || true
}
fetch /out/debs/common /out/packages-common.txt
apt-get -q install -y --no-install-recommends $(cat /out/packages-common.txt)
fetch /out/debs/server /out/packages-server.txt
"""


def _nspawn(rootfs: Path, upper: Path, machine: str, binds: list[str], env: dict[str, str],
            script: str, log_fh) -> None:
    cmd = [
        "systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--as-pid2",
        "--link-journal=no",
        f"--machine={machine}", f"--directory={rootfs}", f"--overlay={rootfs}:{upper}:/",
        *binds, *(f"--setenv={k}={v}" for k, v in env.items()),
        "/bin/sh", "-c", script,
    ]
    log_fh.write(f"$ {' '.join(cmd[:-1])} <script>\n")
    log_fh.flush()
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=log_fh,
                              stderr=subprocess.STDOUT, check=False)
    finally:
        for leftover in (Path("/run/systemd/nspawn/propagate") / machine,
                         Path("/run/systemd/nspawn/unix-export") / machine):
            shutil.rmtree(leftover, ignore_errors=True)
    if proc.returncode != 0:
        raise PbsBuildError(
            f"building OpenPBS failed in its container (exit {proc.returncode}); see "
            f"{log_fh.name}"
        )


def _build(build: Build, rootfs: Path) -> None:
    work = build.directory.with_name(build.directory.name + ".tmp")
    shutil.rmtree(work, ignore_errors=True)
    out = work / "out"
    out.mkdir(parents=True)
    env = {
        "MIRROR": os.environ.get("VIOCLUSTER_LAB_MIRROR", DEFAULT_MIRROR),
        "SUITE": SUITE,
        "BUILD_PACKAGES": " ".join(BUILD_PACKAGES),
        "SERVER_PACKAGES": " ".join(SERVER_PACKAGES),
        "CONFIGURE": CONFIGURE,
    }
    tag = build.sha256[:8]
    log_path = build.directory.with_name(build.directory.name + ".log")
    try:
        with open(log_path, "w") as log_fh:
            (work / "upper-build").mkdir()
            _nspawn(rootfs, work / "upper-build", f"pbsbuild-{tag}",
                    [f"--bind-ro={build.source}:/build/source.tar.gz", f"--bind={out}:/out"],
                    env, _BUILD_SCRIPT, log_fh)
            (work / "upper-fetch").mkdir()
            _nspawn(rootfs, work / "upper-fetch", f"pbsfetch-{tag}", [f"--bind={out}:/out"],
                    env, _FETCH_SCRIPT, log_fh)
        _pack(build, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _pack(build: Build, out: Path) -> None:
    """One archive: the tree, the packages and what they are, in a fixed order."""
    stage = out / "stage"
    meta = stage / "viocluster-pbs"
    meta.mkdir(parents=True)
    subprocess.run(["tar", "-xzpf", str(out / "opt-pbs.tar.gz"), "-C", str(stage)], check=True)
    shutil.copytree(out / "debs", meta / "debs")
    for name in ("packages-common.txt", "packages-server.txt"):
        shutil.copy(out / name, meta / name)
    info = (f"source {build.source.name}\nsha256 {build.sha256}\nrecipe {RECIPE_VERSION}\n"
            f"configure {CONFIGURE}\nsuite {SUITE}\n")
    (meta / "BUILD").write_text(info)
    tmp_dir = build.directory.with_name(build.directory.name + ".new")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir()
    subprocess.run(
        ["tar", "--sort=name", "--mtime=@0", "--numeric-owner", "-czf",
         str(tmp_dir / ARCHIVE_NAME), "-C", str(stage), "opt", "viocluster-pbs"],
        check=True,
    )
    (tmp_dir / "BUILD").write_text(info + f"archive_sha256 {sha256_of(tmp_dir / ARCHIVE_NAME)}\n")
    shutil.rmtree(build.directory, ignore_errors=True)
    tmp_dir.rename(build.directory)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m broker.lab.pbs_build", description=(
        "Build OpenPBS once from its source tarball (cached by its sha256) and print where "
        "the archive is."))
    parser.add_argument("--source", type=Path, help="the source tarball (default: "
                        "openpbs-*.tar.gz in $VIOCLUSTER_VENDOR or ../shared/vendor)")
    parser.add_argument("--print-archive", action="store_true",
                        help="print only the archive's path (for the pbs role)")
    args = parser.parse_args(argv)
    quiet = args.print_archive
    try:
        build, seconds = ensure_build(
            build_for(args.source), log=(lambda m: print(m, file=sys.stderr)) if quiet else print)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_status
    if quiet:
        print(build.archive)
    else:
        how = f"built in {seconds:.0f} s" if seconds else "cached"
        print(f"{build.archive} ({how})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
