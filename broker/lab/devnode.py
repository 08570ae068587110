"""A private ``/dev/net/tun`` for commands that play a lending host on this very machine.

A TAP's owner attaches to its TAP by opening ``/dev/net/tun``; udev's default rule makes that
node 0666 on a real host, and the ``violin_tap`` and ``lending_host`` roles set it so where
udev does not run. Tests and benchmarks that turn a network namespace of this machine into a
host (switch daemons and UML VMs run by unprivileged accounts) need the same mode, but must
not change this machine's own ``/dev``. :class:`PrivateTun` makes a second node for the same
device on a small tmpfs of its own and gives a command prefix that runs a command in a private
mount namespace where that node is bind-mounted over ``/dev/net/tun``. Everything the command
starts (``ip netns exec``, ``setpriv``, ansible-playbook, UML) inherits the private view; the
machine's node, its mode and ``/dev`` itself are never touched.

    with PrivateTun() as tun:
        subprocess.run(tun.prefix + ["ip", "netns", "exec", "ns1", "setpriv", ...])
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

from broker.errors import UserError

TUN = Path("/dev/net/tun")


class PrivateTunError(UserError):
    """The private node cannot be made (not root, no /dev/net/tun, no unshare)."""


class PrivateTun:
    """A tun node with ``mode`` on a private tmpfs, and the prefix that mounts it in place."""

    def __init__(self, mode: int = 0o666) -> None:
        self.mode = mode
        self.dir: Path | None = None

    @property
    def node(self) -> Path:
        if self.dir is None:
            raise PrivateTunError("the private tun node is not made: use PrivateTun as a context")
        return self.dir / "tun"

    @property
    def prefix(self) -> list[str]:
        """``unshare`` into a private mount namespace (slave: mounts made later on the machine,
        such as ``ip netns add``, still show), bind the node over /dev/net/tun, exec the rest."""
        return ["unshare", "--mount", "--propagation", "slave", "--", "sh", "-c",
                'mount --bind "$0" /dev/net/tun && exec "$@"', str(self.node)]

    def __enter__(self) -> PrivateTun:
        if os.geteuid() != 0:
            raise PrivateTunError("a private /dev/net/tun needs root (mount, mknod)")
        try:
            st = TUN.stat()
        except FileNotFoundError:
            raise PrivateTunError("/dev/net/tun is missing: load the tun module (modprobe tun)") from None
        if not stat.S_ISCHR(st.st_mode):
            raise PrivateTunError("/dev/net/tun is not a character device")
        for tool in ("unshare", "mount", "umount"):
            if not shutil.which(tool):
                raise PrivateTunError(f"{tool} is missing: install util-linux and mount")
        self.dir = Path(tempfile.mkdtemp(prefix="viocluster-tun-"))
        try:
            # /tmp and /run are usually nodev: a tmpfs of our own can hold a device node.
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k,mode=0755",
                            "viocluster-tun", str(self.dir)], check=True, capture_output=True)
            os.mknod(self.node, stat.S_IFCHR | self.mode, st.st_rdev)
            os.chmod(self.node, self.mode)  # mknod applies the umask
        except (OSError, subprocess.CalledProcessError) as err:
            self.__exit__(None, None, None)
            raise PrivateTunError(f"cannot make a private tun node: {err}") from None
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.dir is None:
            return
        # Lazy: a daemon still holding the node open must not keep the mount (or fail us).
        subprocess.run(["umount", "-l", str(self.dir)], check=False, capture_output=True)
        try:
            self.dir.rmdir()
        except OSError:
            pass
        self.dir = None


#: Set in the environment of a process already running under :func:`rerun_with_private_tun`.
INSIDE = "VIOCLUSTER_PRIVATE_TUN"


def rerun_with_private_tun(argv: list[str]) -> int | None:
    """Run ``argv`` again under a private 0666 /dev/net/tun and return its exit status, or
    ``None`` when this process already runs under one (then carry on). For scripts (the
    benchmarks) whose unprivileged daemons and VMs must attach to TAPs on this machine."""
    if os.environ.get(INSIDE) == "1":
        return None
    with PrivateTun() as tun:
        return subprocess.run([*tun.prefix, *argv], env={**os.environ, INSIDE: "1"},
                              check=False).returncode
