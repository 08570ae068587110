"""COW VM tests: real UML VMs on real TAPs, run by unprivileged peer accounts, inside a network
namespace the tests create (the "lending host"), driven through ansible-playbook.

Images are built once per session (images/build_image.py) into the shared image cache
(VIOCLUSTER_IMAGE_CACHE, default /var/cache/viocluster/images), keyed by their build inputs, so
a warm cache costs nothing. Every account, namespace, TAP and VM made here is removed on teardown.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from broker.lab.devnode import PrivateTun

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("VIOCLUSTER_IMAGE_CACHE", "/var/cache/viocluster/images"))
NETNS = "vvmlend"
PEERS = {"vvma": ("vvmtapa0", "10.202.1.1/24"), "vvmb": ("vvmtapb0", "10.202.2.1/24")}
VENV_BIN = Path(sys.executable).parent
#: The lending host's private /dev/net/tun while the ``lender`` fixture is up.
_TUN: list[PrivateTun] = []


def tun_prefix() -> list[str]:
    """Run a command with the lending host's /dev/net/tun (0666) instead of this machine's."""
    return list(_TUN[0].prefix) if _TUN else []


def sh(*cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, text=True, capture_output=True, **kw)


def build(kind: str) -> dict:
    proc = subprocess.run([sys.executable, str(REPO / "images" / "build_image.py"), "build", kind,
                           "--cache", str(CACHE)], text=True, capture_output=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"building the {kind} image failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)


def _need_tools() -> None:
    missing = [t for t in ("linux", "mkfs.ext4", "ip", "ping") if not shutil.which(t)]
    if missing:
        pytest.skip(f"{', '.join(missing)} missing: run scripts/bootstrap.sh (packaging/apt-packages.txt)")


@pytest.fixture(scope="session")
def busybox_image(as_root: None) -> str:
    _need_tools()
    return build("busybox")["image"]


@pytest.fixture(scope="session")
def node_image(as_root: None) -> str:
    _need_tools()
    if not shutil.which("debootstrap"):
        pytest.skip("debootstrap missing: run scripts/bootstrap.sh")
    return build("node")["image"]


@dataclass
class Peer:
    name: str
    uid: int
    gid: int
    home: Path
    tap: str
    host_address: str

    @property
    def vms(self) -> Path:
        return self.home / "vms"


def _kill_account(uid: int) -> None:
    """SIGKILL the process groups our test accounts lead (VMs left by a failed test)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != uid:
                continue
            os.killpg(int(entry), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass


@pytest.fixture(scope="session")
def lender(as_root: None) -> dict[str, Peer]:
    """A lending host: netns vvmlend, one account per peer domain, a TAP owned by each."""
    _need_tools()
    sh("ip", "netns", "del", NETNS, check=False)
    sh("ip", "netns", "add", NETNS)
    sh("ip", "-n", NETNS, "link", "set", "lo", "up")
    peers: dict[str, Peer] = {}
    try:
        for name, (tap, addr) in PEERS.items():
            if sh("id", name, check=False).returncode == 0:
                _kill_account(pwd.getpwnam(name).pw_uid)
                sh("userdel", "-r", name, check=False)
            sh("useradd", "--create-home", "--shell", "/usr/sbin/nologin", name)
            pw = pwd.getpwnam(name)
            home = Path(pw.pw_dir)
            os.chmod(home, 0o700)
            (home / "vms").mkdir(mode=0o700)
            os.chown(home / "vms", pw.pw_uid, pw.pw_gid)
            sh("ip", "-n", NETNS, "tuntap", "add", "dev", tap, "mode", "tap", "user", name)
            sh("ip", "-n", NETNS, "addr", "add", addr, "dev", tap)
            sh("ip", "-n", NETNS, "link", "set", tap, "up")
            peers[name] = Peer(name, pw.pw_uid, pw.pw_gid, home, tap, addr)
        # A lending host's /dev/net/tun is 0666 (udev's default rule, or the roles where udev
        # does not run); this machine's may be 0600 and stays as it is: every command of these
        # tests runs with a private node of that mode mounted over it (PrivateTun).
        with PrivateTun() as tun:
            _TUN.append(tun)
            try:
                yield peers
            finally:
                _TUN.clear()
    finally:
        for name in PEERS:
            try:
                _kill_account(pwd.getpwnam(name).pw_uid)
            except KeyError:
                continue
        time.sleep(0.2)
        sh("ip", "netns", "del", NETNS, check=False)
        for name in PEERS:
            sh("userdel", "-r", name, check=False)


@dataclass
class PlayResult:
    rc: int
    tasks: list[dict]  # one dict per task: {"name", "changed", "failed", "msg", "res"}
    stdout: str

    def task(self, name: str) -> dict:
        for t in self.tasks:
            if t["name"] == name:
                return t
        raise AssertionError(f"task {name!r} not in the play: {[t['name'] for t in self.tasks]}"
                             f"\n{self.stdout[-3000:]}")


def run_play(tasks: list[dict], *, check: bool = False, diff: bool = False,
             as_user: str | None = None, netns: str = NETNS) -> PlayResult:
    """ansible-playbook on localhost (connection local) inside the lending host's namespace,
    as root or as a peer account; returns per-task results from the json callback."""
    play = [{"hosts": "localhost", "gather_facts": False, "tasks": tasks}]
    workdir = Path(tempfile.mkdtemp(prefix="vvmplay-"))
    os.chmod(workdir, 0o755)
    book = workdir / "play.yml"
    book.write_text(yaml.safe_dump(play, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    results = workdir / "results.json"
    env.update(ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), TASK_RESULTS_FILE=str(results),
               ANSIBLE_CALLBACK_PLUGINS=str(Path(__file__).parent / "callback_plugins"),
               ANSIBLE_CALLBACKS_ENABLED="task_results",
               ANSIBLE_LIBRARY=str(REPO / "library"), ANSIBLE_MODULE_UTILS=str(REPO / "module_utils"),
               ANSIBLE_LOCAL_TEMP=str(workdir / "tmp"), ANSIBLE_REMOTE_TEMP=str(workdir / "tmp"),
               ANSIBLE_PYTHON_INTERPRETER=sys.executable, PATH=f"{VENV_BIN}:{env.get('PATH', '')}",
               ANSIBLE_NOCOLOR="1")
    cmd = [str(VENV_BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", str(book)]
    if check:
        cmd.append("--check")
    if diff:
        cmd.append("--diff")
    if as_user:
        pw = pwd.getpwnam(as_user)
        # The peer account cannot read root's Python; lending hosts have Debian's python3.
        env.update(HOME=pw.pw_dir, USER=as_user, ANSIBLE_PYTHON_INTERPRETER="/usr/bin/python3")
        os.chown(workdir, pw.pw_uid, pw.pw_gid)
        cmd = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--"] + cmd
    if netns:
        cmd = ["ip", "netns", "exec", netns] + cmd
    cmd = tun_prefix() + cmd
    try:
        proc = subprocess.run(cmd, text=True, capture_output=True, env=env, timeout=300,
                              cwd=workdir)
        if not results.is_file():
            raise AssertionError(f"ansible-playbook wrote no results (rc {proc.returncode}):\n"
                                 f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        tasks = json.loads(results.read_text())
        return PlayResult(proc.returncode, tasks, proc.stdout + proc.stderr)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def netns_ping(address: str, netns: str = NETNS) -> bool:
    return subprocess.run(["ip", "netns", "exec", netns, "ping", "-n", "-q", "-c", "1", "-W", "1",
                           address], capture_output=True).returncode == 0


def group_alive(pgid: int) -> list[int]:
    alive = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        rest = stat[stat.rindex(")") + 2:].split()
        if int(rest[2]) == pgid and rest[0] != "Z":
            alive.append(int(entry))
    return alive


@pytest.fixture()
def vm_task():
    """Build a cow_vm task dict (for a peer) with defaults for the busybox image."""

    def make(name: str, peer: Peer, image: str, task: str | None = None, **kw) -> dict:
        args = {"name": name, "user": peer.name, "base_image": image,
                "cow": str(peer.vms / f"{name}.cow"), "memory": "64M", "tap": peer.tap,
                "ready_timeout": 60}
        args.update(kw)
        return {"name": task or name, "cow_vm": args, "ignore_errors": True}

    return make
