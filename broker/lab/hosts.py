"""Lab hosts: systemd-nspawn machines with real systemd, one network namespace each.

A *host* boots the shared read-only root filesystem (:mod:`broker.lab.rootfs`) through an
overlay of its own, so /etc, /var/lib and the rest are private to it, and systemd gives it a
private /run. It sits in its own network namespace with ``eth0`` on a bridge, and is reached by
real SSH with a key the lab makes. Everything made is written to a state file first, so
``destroy`` removes exactly that (and still works after a crash half way through ``create``).

Each host runs in a cgroup of its own (on the cgroup v2 hierarchy, where there is one), so
everything it runs can be killed at once, as by a power cut: :func:`power_cut`; :func:`boot`
starts it again from its persistent overlay.

This module is the thin I/O layer: :class:`Plan` says what to build, :func:`create` and
:func:`destroy` do it with ``ip`` and ``systemd-nspawn``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass, field
from ipaddress import IPv4Interface
from pathlib import Path

from broker.errors import UserError

NETNS_DIR = Path("/run/netns")
#: Under the cgroup v2 hierarchy: one cgroup per host, named after its machine.
CGROUP_PARENT = "viocluster-lab"


class LabHostError(UserError):
    """A lab host or network could not be made; the message says what to do."""


@dataclass
class Bind:
    source: str  # a directory on this machine (made when missing)
    target: str  # where the host sees it
    read_only: bool = False


@dataclass
class Bridge:
    name: str  # at most 15 characters
    netns: str | None  # None: the root network namespace
    address: str | None = None  # "10.205.3.1/24" gives the bridge (the gateway) an address
    domain: str | None = None  # the lab domain whose physical network this is


@dataclass
class Link:
    """A veth pair joining two namespaces (None: root), with optional addresses and routes."""

    name_a: str
    netns_a: str | None
    name_b: str
    netns_b: str | None
    address_a: str | None = None
    address_b: str | None = None
    routes_a: list[tuple[str, str]] = field(default_factory=list)  # (destination, via)
    routes_b: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Host:
    name: str  # hostname and inventory name
    machine: str  # unique on this machine: nspawn machine name and network namespace
    address: str  # "10.205.3.11/24" on eth0
    gateway: str  # default route
    bridge: str  # Bridge.name it is plugged into
    port: str  # the bridge-side veth name, at most 15 characters
    binds: list[Bind] = field(default_factory=list)
    extra_hosts: dict[str, str] = field(default_factory=dict)  # name -> address for /etc/hosts
    pid: int | None = None  # the nspawn process while the host runs
    cgroup: str | None = None  # the cgroup v2 directory it runs in (None: no cgroup v2 here)
    crashed: bool = False  # powered off by a fault (power_cut) and not started since

    @property
    def ip(self) -> str:
        return str(IPv4Interface(self.address).ip)


@dataclass
class Plan:
    """Everything one lab (or one molecule scenario) consists of."""

    name: str
    state_dir: str
    rootfs: str
    netns: list[str] = field(default_factory=list)  # extra namespaces (routers, switches)
    bridges: list[Bridge] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)
    hosts: list[Host] = field(default_factory=list)
    sysctls: list[tuple[str | None, str, str]] = field(default_factory=list)  # (netns, key, value)
    # faults in force (broker.lab.faults): domain pairs cut apart, hosts whose cable is pulled
    partitions: list[tuple[str, str]] = field(default_factory=list)
    cut: list[str] = field(default_factory=list)

    @property
    def state_file(self) -> Path:
        return Path(self.state_dir) / "state.json"

    @property
    def key_file(self) -> Path:
        return Path(self.state_dir) / "id_ed25519"

    def save(self) -> None:
        Path(self.state_dir).mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        tmp.rename(self.state_file)

    @classmethod
    def load(cls, state_dir: str | Path) -> Plan | None:
        path = Path(state_dir) / "state.json"
        if not path.is_file():
            return None
        try:
            raw = json.loads(path.read_text())
            return cls(
                name=raw["name"],
                state_dir=raw["state_dir"],
                rootfs=raw["rootfs"],
                netns=raw["netns"],
                bridges=[Bridge(**b) for b in raw["bridges"]],
                links=[Link(**{**k, "routes_a": [tuple(r) for r in k["routes_a"]],
                               "routes_b": [tuple(r) for r in k["routes_b"]]})
                       for k in raw["links"]],
                hosts=[Host(**{**h, "binds": [Bind(**b) for b in h["binds"]]})
                       for h in raw["hosts"]],
                sysctls=[tuple(s) for s in raw["sysctls"]],
                partitions=[tuple(p) for p in raw.get("partitions", [])],
                cut=list(raw.get("cut", [])),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise LabHostError(
                f"lab state {path} is unreadable ({exc}); remove what it names by hand "
                "(ip netns list, ip link) and delete the file"
            ) from exc


# ---------------------------------------------------------------------------------------------
# small wrappers


def _run(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise LabHostError(f"`{' '.join(cmd)}` failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def _ip(netns: str | None, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run(["ip", *(["-n", netns] if netns else []), *args], check=check)


def netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def link_exists(name: str, netns: str | None = None) -> bool:
    if netns and not netns_exists(netns):
        return False
    return _ip(netns, "link", "show", "dev", name, check=False).returncode == 0


def _add_netns(name: str) -> None:
    if not netns_exists(name):
        _run(["ip", "netns", "add", name])
    _ip(name, "link", "set", "lo", "up")


def _sysctl(netns: str | None, key: str, value: str) -> None:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    _run([*prefix, "sysctl", "-q", "-w", f"{key}={value}"])


# ---------------------------------------------------------------------------------------------
# create


def check_free(plan: Plan) -> None:
    """Refuse to build over namespaces or links that exist but this plan did not record."""
    taken = [n for n in plan.netns if netns_exists(n)]
    taken += [h.machine for h in plan.hosts if netns_exists(h.machine)]
    taken += [b.name for b in plan.bridges if b.netns is None and link_exists(b.name)]
    if taken:
        raise LabHostError(
            f"{', '.join(taken)} already exist; a lab of this name is up or was left behind. "
            f"Take it down first (state in {plan.state_dir})"
        )


def create(plan: Plan, ssh_timeout: float = 90.0) -> None:
    """Build the networks, boot every host, wait until each answers SSH."""
    if not Path(plan.rootfs, ".viocluster-rootfs").is_file():
        raise LabHostError(f"root filesystem {plan.rootfs} is not built")
    for tool in ("ip", "systemd-nspawn", "ssh-keygen"):
        if shutil.which(tool) is None:
            raise LabHostError(f"{tool} is not installed; run `make setup`")
    check_free(plan)
    plan.save()  # before anything exists: destroy can always clean up from here
    state = Path(plan.state_dir)
    if not plan.key_file.exists():
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", plan.name,
              "-f", str(plan.key_file)])
    for ns in plan.netns:
        _add_netns(ns)
    for ns, key, value in plan.sysctls:
        _sysctl(ns, key, value)
    for br in plan.bridges:
        if not link_exists(br.name, br.netns):
            _ip(br.netns, "link", "add", br.name, "type", "bridge")
        if br.address:
            _ip(br.netns, "addr", "replace", br.address, "dev", br.name)
        _ip(br.netns, "link", "set", br.name, "up")
    for link in plan.links:
        _make_link(link)
    for host in plan.hosts:
        _make_host_net(plan, host)
        _write_upper(plan, host, state / host.machine)
    for host in plan.hosts:
        host.cgroup = _make_cgroup(host.machine)
        plan.save()
        host.pid = _boot(plan, host, state / host.machine)
        plan.save()
    deadline = time.monotonic() + ssh_timeout
    for host in plan.hosts:
        _wait_ssh(host, state / host.machine, deadline)


def boot(plan: Plan, host: Host, ssh_timeout: float = 90.0) -> None:
    """Boot one host that is down, from its persistent overlay, as when power comes back.

    Its network namespace and port are still there (a dead host stays plugged in); its
    ``eth0`` comes up again, and what is missing is made again. Its private layer is kept as
    it is: what roles wrote stays, and the services enabled in it start at boot. Returns once
    it answers SSH.
    """
    hdir = Path(plan.state_dir) / host.machine
    if not (hdir / "upper").is_dir():
        raise LabHostError(f"host {host.name} has no private layer in {hdir}; the lab is broken, "
                           "take it down and up again")
    _make_host_net(plan, host)
    if host.cgroup:
        remove_cgroup(host.cgroup)  # what a crashed host left (empty by now)
    host.cgroup = _make_cgroup(host.machine)
    host.pid = _boot(plan, host, hdir)
    host.crashed = False
    plan.save()
    _wait_ssh(host, hdir, time.monotonic() + ssh_timeout)


def _make_link(link: Link) -> None:
    if not link_exists(link.name_a, link.netns_a):
        _ip(link.netns_a, "link", "add", link.name_a, "type", "veth", "peer", "name",
            link.name_b, *(["netns", link.netns_b] if link.netns_b else []))
    for name, ns, addr, routes in (
        (link.name_a, link.netns_a, link.address_a, link.routes_a),
        (link.name_b, link.netns_b, link.address_b, link.routes_b),
    ):
        if addr:
            _ip(ns, "addr", "replace", addr, "dev", name)
        _ip(ns, "link", "set", name, "up")
        for dest, via in routes:
            _ip(ns, "route", "replace", dest, "via", via)


def _bridge_ns(plan: Plan, name: str) -> str | None:
    for br in plan.bridges:
        if br.name == name:
            return br.netns
    raise LabHostError(f"host plan names bridge {name}, which the plan does not make")


def _make_host_net(plan: Plan, host: Host) -> None:
    br_ns = _bridge_ns(plan, host.bridge)
    _add_netns(host.machine)
    if not link_exists("eth0", host.machine):
        _ip(br_ns, "link", "add", host.port, "type", "veth", "peer", "name", "eth0",
            "netns", host.machine)
    _ip(br_ns, "link", "set", host.port, "master", host.bridge, "up")
    _ip(host.machine, "addr", "replace", host.address, "dev", "eth0")
    _ip(host.machine, "link", "set", "eth0", "up")
    _ip(host.machine, "route", "replace", "default", "via", host.gateway)


def _write_upper(plan: Plan, host: Host, hdir: Path) -> None:
    """The host's private layer: identity, SSH keys, /etc/hosts."""
    upper = hdir / "upper"
    ssh_dir = upper / "root/.ssh"
    ssh_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(ssh_dir, 0o700)
    auth = ssh_dir / "authorized_keys"
    auth.write_text(Path(str(plan.key_file) + ".pub").read_text())
    os.chmod(auth, 0o600)
    etc_ssh = upper / "etc/ssh"
    (etc_ssh / "sshd_config.d").mkdir(parents=True, exist_ok=True)
    hostkey = etc_ssh / "ssh_host_ed25519_key"
    if not hostkey.exists():
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", host.name, "-f", str(hostkey)])
    (etc_ssh / "sshd_config.d/viocluster-lab.conf").write_text(
        "# written by the lab: one host key per host, keys only\n"
        "HostKey /etc/ssh/ssh_host_ed25519_key\n"
        "PasswordAuthentication no\nUseDNS no\nMaxSessions 50\nMaxStartups 50\n"
    )
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    names = {h.name: h.ip for h in plan.hosts}
    names.update(host.extra_hosts)
    lines += [f"{addr}\t{name}" for name, addr in names.items()]
    (upper / "etc/hosts").write_text("\n".join(lines) + "\n")
    # No name server: every name a lab host needs is in /etc/hosts, and this machine's name
    # server (which nspawn would otherwise copy or bind in) is out of the hosts' reach, so each
    # lookup of a name not in /etc/hosts (PBS's start-up asks for its host's IPv6 address
    # several times) would wait for the resolver's 10 s time-out.
    (upper / "etc/resolv.conf").unlink(missing_ok=True)
    (upper / "etc/resolv.conf").write_text("# no name server: every lab name is in /etc/hosts\n")
    (upper / "etc/hostname").write_text(host.name + "\n")
    for bind in host.binds:
        Path(bind.source).mkdir(parents=True, exist_ok=True)


def _cgroup_mount(kind: str, option: str | None = None) -> Path | None:
    try:
        with open("/proc/self/mounts") as fh:
            for line in fh:
                fields = line.split()
                if len(fields) > 3 and fields[2] == kind and (
                        option is None or option in fields[3].split(",")):
                    return Path(fields[1])
    except OSError:
        pass
    return None


def cgroup2_root() -> Path | None:
    """Where the cgroup v2 hierarchy is mounted (``/sys/fs/cgroup``, or its ``unified``
    directory on a hybrid set-up); None where there is none."""
    return _cgroup_mount("cgroup2")


def host_cgroups(cgroup: str) -> list[Path]:
    """The host's cgroup, and on a hybrid set-up the one nspawn mirrors it to in the
    ``name=systemd`` hierarchy."""
    path = Path(cgroup)
    found = [path]
    named = _cgroup_mount("cgroup", "name=systemd")
    if named is not None and path.parent.name == CGROUP_PARENT:
        found.append(named / CGROUP_PARENT / path.name)
    return found


def _make_cgroup(machine: str) -> str | None:
    """A cgroup v2 directory for one host, so that all it runs can be killed at once."""
    root = cgroup2_root()
    if root is None:
        return None
    path = root / CGROUP_PARENT / machine
    for attempt in range(3):
        try:
            path.mkdir(parents=True, exist_ok=True)
            break
        except FileNotFoundError:  # the parent removed by another lab's last host meanwhile
            if attempt == 2:
                raise LabHostError(f"cannot make the host's cgroup {path}") from None
        except OSError as exc:
            raise LabHostError(f"cannot make the host's cgroup {path}: {exc}") from exc
    return str(path)


def cgroup_pids(cgroup: str | None) -> list[int]:
    """Every process in the cgroup and the cgroups below it."""
    if not cgroup or not Path(cgroup).is_dir():
        return []
    pids: list[int] = []
    for dirpath, _, files in os.walk(cgroup):
        if "cgroup.procs" in files:
            try:
                pids += [int(p) for p in Path(dirpath, "cgroup.procs").read_text().split()]
            except OSError:
                pass
    return pids


def remove_cgroup(cgroup: str) -> None:
    """Remove an empty host cgroup, the ones its systemd made below it first; and the lab's
    parent cgroup when no other host is left in it."""
    for path in host_cgroups(cgroup):
        if path.is_dir():
            for dirpath, _, _ in sorted(os.walk(path), key=lambda w: -len(w[0])):
                try:
                    os.rmdir(dirpath)
                except OSError:
                    pass
        if path.parent.name == CGROUP_PARENT:
            try:
                path.parent.rmdir()
            except OSError:  # another host (of this lab or a molecule scenario) is in it
                pass


def _boot(plan: Plan, host: Host, hdir: Path) -> int:
    cmd = [
        "systemd-nspawn", "--boot", "--quiet",
        f"--directory={plan.rootfs}",
        f"--overlay={plan.rootfs}:{hdir / 'upper'}:/",
        f"--machine={host.machine}",
        f"--hostname={host.name}",
        f"--network-namespace-path={NETNS_DIR / host.machine}",
        "--register=no", "--keep-unit", "--link-journal=no",
        # the host's own resolv.conf (no name server, written above), not this machine's
        "--resolv-conf=off",
        # root in a host makes TAPs (switch daemon, UML VMs of lending accounts)
        "--capability=CAP_NET_ADMIN",
        # nfs-ganesha's VFS backend needs open_by_handle_at, which the default filter blocks
        "--system-call-filter=open_by_handle_at",
    ]
    for bind in host.binds:
        flag = "--bind-ro" if bind.read_only else "--bind"
        cmd.append(f"{flag}={bind.source}:{bind.target}")
    if host.cgroup:
        # The shell moves itself into the host's cgroup, then becomes nspawn (same pid): every
        # process of the host starts inside it.
        cmd = ["sh", "-c", 'echo 0 > "$0/cgroup.procs" && exec "$@"', host.cgroup, *cmd]
    console = open(hdir / "console.log", "ab")  # noqa: SIM115 - handed to the child
    try:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        console.close()
    return proc.pid


def _wait_ssh(host: Host, hdir: Path, deadline: float) -> None:
    while True:
        if host.pid is not None and not _alive(host.pid):
            tail = (hdir / "console.log").read_text(errors="replace")[-800:]
            raise LabHostError(f"host {host.name} stopped while booting:\n{tail}")
        try:
            with socket.create_connection((host.ip, 22), timeout=1.0) as sock:
                sock.settimeout(2.0)
                if sock.recv(8).startswith(b"SSH-"):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise LabHostError(
                f"host {host.name} ({host.ip}) does not answer SSH; see {hdir / 'console.log'}"
            )
        time.sleep(0.1)


# ---------------------------------------------------------------------------------------------
# destroy


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie child of ours is gone for our purpose
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _is_our_nspawn(pid: int, machine: str) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return bool(cmdline) and cmdline[0].endswith(b"systemd-nspawn") and (
        f"--machine={machine}".encode() in cmdline
    )


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)  # when it is our own child
    except ChildProcessError:
        pass


def _nspawn_running(host: Host) -> bool:
    return bool(host.pid) and _alive(host.pid) and _is_our_nspawn(host.pid, host.machine)


def host_running(host: Host) -> bool:
    """Whether anything of the host runs: its nspawn, or processes left in its cgroup."""
    return _nspawn_running(host) or bool(cgroup_pids(host.cgroup))


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def power_cut(host: Host, timeout: float = 10.0) -> None:
    """Kill every process of the host at once, as a power cut: nothing shuts down.

    A SIGKILL to nspawn alone is not enough: the host's init is nspawn's child in a PID
    namespace of its own and lives on, reparented, with all it runs. With the host in a cgroup
    v2 of its own, ``cgroup.kill`` kills every process in it (nspawn, the host's init and
    everything below) in one step. Without one, SIGKILL to the host's init ends its PID
    namespace (the kernel kills every process in it), then nspawn goes.
    """
    kill_file = Path(host.cgroup, "cgroup.kill") if host.cgroup else None
    if kill_file is not None and kill_file.exists():
        kill_file.write_text("1")
    elif host.pid and _is_our_nspawn(host.pid, host.machine):
        for child in _children(host.pid):
            os.kill(child, signal.SIGKILL)
        os.kill(host.pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while True:
        if host.pid:
            _reap(host.pid)
        left = cgroup_pids(host.cgroup)
        if not left and not _nspawn_running(host):
            break
        if time.monotonic() > deadline:
            raise LabHostError(f"host {host.name}: processes {left or [host.pid]} outlived "
                               "a SIGKILL; see `ps` and kill them by hand")
        time.sleep(0.02)
    if host.cgroup:
        remove_cgroup(host.cgroup)


def stop_hosts(hosts: list[Host], timeout: float = 6.0) -> None:
    """Orderly poweroff (SIGTERM to nspawn), then a power cut of what is left after ``timeout``.

    Nothing of a host outlives it: its processes die with its cgroup and PID namespace, its
    mounts with its mount namespace; the lab removes its network namespace and overlay
    afterwards.
    """
    running = [h for h in hosts if _nspawn_running(h)]
    for host in running:
        assert host.pid is not None
        os.kill(host.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for host in running:
        assert host.pid is not None
        while _alive(host.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
    for host in hosts:
        if host.pid:
            _reap(host.pid)
        if host_running(host):
            power_cut(host)
        elif host.cgroup:
            remove_cgroup(host.cgroup)


def destroy(plan: Plan) -> list[str]:
    """Remove everything the plan made; return what was still there."""
    removed: list[str] = []
    stop_hosts(plan.hosts)
    for host in plan.hosts:
        if netns_exists(host.machine):
            _run(["ip", "netns", "del", host.machine], check=False)
            removed.append(f"netns {host.machine}")
        for leftover in (Path("/run/systemd/nspawn/propagate") / host.machine,
                         Path("/run/systemd/nspawn/unix-export") / host.machine):
            if leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)
    for link in plan.links:  # a veth in the root namespace outlives the peer's namespace
        for name, ns in ((link.name_a, link.netns_a), (link.name_b, link.netns_b)):
            if ns is None and link_exists(name):
                _ip(None, "link", "del", name, check=False)
                removed.append(f"link {name}")
    for br in plan.bridges:
        if br.netns is None and link_exists(br.name):
            _ip(None, "link", "del", br.name, check=False)
            removed.append(f"bridge {br.name}")
    for ns in plan.netns:
        if netns_exists(ns):
            _run(["ip", "netns", "del", ns], check=False)
            removed.append(f"netns {ns}")
    for host in plan.hosts:  # a host port in the root namespace (molecule bridges)
        if _bridge_ns_or_none(plan, host.bridge) is None and link_exists(host.port):
            _ip(None, "link", "del", host.port, check=False)
    shutil.rmtree(plan.state_dir, ignore_errors=True)
    return removed


def _bridge_ns_or_none(plan: Plan, name: str) -> str | None:
    for br in plan.bridges:
        if br.name == name:
            return br.netns
    return None


def leftovers(plan: Plan) -> list[str]:
    """What of the plan still exists on this machine (empty after a clean destroy)."""
    found = [f"netns {n}" for n in [*plan.netns, *(h.machine for h in plan.hosts)]
             if netns_exists(n)]
    found += [f"bridge {b.name}" for b in plan.bridges if b.netns is None and link_exists(b.name)]
    found += [f"link {h.port}" for h in plan.hosts
              if _bridge_ns_or_none(plan, h.bridge) is None and link_exists(h.port)]
    found += [f"nspawn {h.machine} (pid {h.pid})" for h in plan.hosts if _nspawn_running(h)]
    found += [f"cgroup {path}" for h in plan.hosts if h.cgroup
              for path in host_cgroups(h.cgroup) if path.exists()]
    if Path(plan.state_dir).exists():
        found.append(f"directory {plan.state_dir}")
    with open("/proc/self/mountinfo") as fh:
        mounts = fh.read()
    found += [f"mount under {plan.state_dir}" for _ in range(mounts.count(plan.state_dir))]
    return found
