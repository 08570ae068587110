# -*- coding: utf-8 -*-
# Apache-2.0
"""Shared code of the cow_image and cow_vm modules (imported as ansible.module_utils.viocluster_vm).

Plain functions and dataclasses, no AnsibleModule: COW headers (UML COW v3, qcow2 through
qemu-img), hypervisor command lines (UML, QEMU), process groups of VMs, readiness probes,
peer limits. The modules hold only argument handling and the run/skip decisions.

Commands run through the module's ``run_command`` (a module calls :func:`use_module` first);
callers outside Ansible (tests, benchmarks) get a stand-in with the same signature.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import pwd
import re
import signal
import socket
import struct
import subprocess
import shutil
import time
from dataclasses import asdict, dataclass, field

# ---------------------------------------------------------------------------- UML COW files
# arch/um/drivers/cow_user.c: header v3 is big-endian, packed:
#   u32 magic, u32 version, u32 mtime, u64 size, u32 sectorsize, u32 alignment, u32 cow_format,
#   char backing_file[4096]; then a bitmap of one bit per sector; data at an aligned offset.
COW_MAGIC = 0x4F4F4F4D  # "OOOM"
COW_V3 = struct.Struct(">IIIQIII4096s")
COW_V2 = struct.Struct(">II256sqQI")  # v1/v2: native-endian in old files; read for diagnosis only
UML_SECTOR = 512
UML_ALIGN = 4096
READY_MARKER = "VIOCLUSTER-READY"
CONFIG_FILES = ("node.env", "munge.key", "slurm.conf", "hosts", "pbs.conf", "passwd", "group")


class _Local:
    """``AnsibleModule.run_command``'s signature for callers outside a module (tests, bench)."""

    def run_command(self, args, check_rc=False, data=None, **_ignored):
        proc = subprocess.run(args, capture_output=True, text=True, input=data)
        return proc.returncode, proc.stdout, proc.stderr


_runner = _Local()


def use_module(module) -> None:
    """Run every command of this module_utils through ``module.run_command``."""
    global _runner
    _runner = module


def execute(args: list[str]) -> tuple[int, str, str]:
    """rc, stdout, stderr of one command (never raises for a non-zero exit)."""
    return _runner.run_command(args, check_rc=False)


def _need(tool: str, package: str) -> None:
    if shutil.which(tool) is None:
        raise VMError(f"{tool} not found: install {package}")


class VMError(Exception):
    """Something a user or peer can fix; the message says what and how."""


@dataclass
class BackingInfo:
    """What an overlay pins about its base: path, size and (UML) mtime."""

    fmt: str
    backing_file: str
    size: int
    mtime: int | None = None
    version: int | None = None


def read_uml_cow_header(path: str) -> BackingInfo:
    try:
        with open(path, "rb") as f:
            raw = f.read(COW_V3.size)
    except OSError as exc:
        raise VMError(f"cannot read COW file {path}: {exc.strerror}") from exc
    if len(raw) < 8:
        raise VMError(f"{path} is not a UML COW file (too short); remove it or pass another cow")
    magic, version = struct.unpack(">II", raw[:8])
    if magic != COW_MAGIC:
        magic_le = struct.unpack("<I", raw[:4])[0]
        if magic_le == COW_MAGIC and len(raw) >= 284:
            _, ver, bfile, mtime, size, _ = struct.unpack("<ii256sqQi", raw[:284])
            return BackingInfo("uml", bfile.split(b"\0", 1)[0].decode(errors="replace"), size,
                               mtime, ver)
        raise VMError(f"{path} is not a UML COW file (bad magic); remove it or pass another cow")
    if version != 3 or len(raw) < COW_V3.size:
        raise VMError(f"{path}: UML COW version {version} is not supported (v3 only)")
    _, _, mtime, size, _sector, _align, _fmt, bfile = COW_V3.unpack(raw)
    return BackingInfo("uml", bfile.split(b"\0", 1)[0].decode(errors="replace"), size, mtime, 3)


def uml_cow_layout(size: int) -> int:
    """Data offset of a v3 COW for a base of `size` bytes (bitmap right after the header)."""
    bitmap = ((size + UML_SECTOR - 1) // UML_SECTOR + 7) // 8
    end = COW_V3.size + bitmap
    return (end + UML_ALIGN - 1) // UML_ALIGN * UML_ALIGN


def write_uml_cow(path: str, base: str) -> None:
    """Create a sparse UML COW v3 file on base, as UML itself would at first boot."""
    st = os.stat(base)
    header = COW_V3.pack(COW_MAGIC, 3, int(st.st_mtime) & 0xFFFFFFFF, st.st_size, UML_SECTOR,
                         UML_ALIGN, 0, base.encode())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, header)
        os.ftruncate(fd, uml_cow_layout(st.st_size) + st.st_size)
    finally:
        os.close(fd)


def qcow2_info(path: str) -> BackingInfo:
    _need("qemu-img", "qemu-utils")
    rc, out, err = execute(["qemu-img", "info", "--force-share", "--output=json", path])
    if rc != 0:
        raise VMError(f"{path} is not a readable qcow2 file: {err.strip()}")
    info = json.loads(out)
    if info.get("format") != "qcow2":
        raise VMError(f"{path} is {info.get('format')}, not qcow2; remove it or pass another cow")
    mtime = None
    side = path + ".base"
    if os.path.isfile(side):  # qcow2 does not pin the base's mtime: we keep it beside the overlay
        try:
            mtime = int(json.loads(open(side).read())["mtime"])
        except (ValueError, KeyError, OSError):
            mtime = None
    return BackingInfo("qcow2", info.get("full-backing-filename") or info.get("backing-filename", ""),
                       int(info.get("virtual-size", 0)), mtime)


def create_qcow2(path: str, base: str) -> None:
    st = os.stat(base)
    _need("qemu-img", "qemu-utils")
    rc, _out, err = execute(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "raw",
                             path])
    if rc != 0:
        raise VMError(f"qemu-img create {path} failed: {err.strip()}")
    with open(path + ".base", "w") as f:
        json.dump({"path": base, "size": st.st_size, "mtime": int(st.st_mtime)}, f)


def read_backing(path: str, fmt: str) -> BackingInfo:
    return read_uml_cow_header(path) if fmt == "uml" else qcow2_info(path)


def backing_problem(info: BackingInfo, base: str) -> str | None:
    """Why an overlay cannot be used on base, or None when the base is the one it was made on."""
    try:
        st = os.stat(base)
    except OSError:
        return f"base image {base} is missing"
    if os.path.realpath(info.backing_file) != os.path.realpath(base):
        return (f"it was made on {info.backing_file}, not on {base} (UML opens the base by the "
                f"path in the header; keep base images at the same path on every lender)")
    if info.size != st.st_size:
        return f"the base's size changed ({info.size} bytes when made, {st.st_size} now)"
    if info.mtime is not None and info.mtime != (int(st.st_mtime) & 0xFFFFFFFF):
        return (f"the base's mtime changed ({info.mtime} when made, {int(st.st_mtime)} now): "
                f"the base was rebuilt or copied without preserving mtime")
    return None


def allocated_bytes(path: str) -> int:
    try:
        return os.stat(path).st_blocks * 512
    except OSError:
        return 0


# ---------------------------------------------------------------------------- accounts, TAPs
@dataclass
class Account:
    name: str
    uid: int
    gid: int
    home: str

    @classmethod
    def lookup(cls, name: str | None) -> "Account":
        try:
            pw = pwd.getpwnam(name) if name else pwd.getpwuid(os.geteuid())
        except KeyError as exc:
            raise VMError(f"user {name} does not exist: the lending_host role creates one "
                          f"account per peer domain") from exc
        return cls(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir)


def tap_problem(tap: str, uid: int) -> str | None:
    """Why the account with uid cannot use tap, or None. Asks iproute2 (netlink), not sysfs:
    in a container sysfs may show another network namespace's devices."""
    rc, out, _err = execute(["ip", "-details", "-json", "link", "show", "dev", tap])
    if rc != 0:
        return (f"TAP {tap} does not exist in this network namespace: the lending_host role "
                f"creates one TAP per VM slot (ip tuntap add dev {tap} mode tap user USER)")
    try:
        link = json.loads(out)[0]
    except (ValueError, IndexError):
        return f"cannot read the details of {tap} from ip"
    info = link.get("linkinfo", {})
    data = info.get("info_data", {})
    if info.get("info_kind") != "tun":
        return f"{tap} is not a TAP device"
    if data.get("type") != "tap":
        return f"{tap} is a TUN, not a TAP device"
    owner = str(data.get("user", ""))
    if owner not in (str(uid), _user_name(uid)):
        who = owner or "nobody"
        return f"TAP {tap} is owned by {who}, not by the VM's user ({_user_name(uid)})"
    return None


TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0


def reset_tap_offloads(tap: str) -> None:
    """Turn off the checksum/segmentation offloads a previous reader left on a persistent TAP.
    QEMU enables them (vnet headers); they outlive it, and the next reader that does not speak
    vnet headers (UML's tuntap) then gets TCP segments with partial checksums that it drops:
    ping works, TCP does not. Any account that may attach to the TAP may do this."""
    fd = os.open("/dev/net/tun", os.O_RDWR)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", tap.encode(), 0x0002 | 0x1000))
        fcntl.ioctl(fd, TUNSETOFFLOAD, 0)
    finally:
        os.close(fd)


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


# ---------------------------------------------------------------------------- VM specification
@dataclass
class VMSpec:
    """Everything that decides how a VM runs; equal specs mean an unchanged VM."""

    name: str
    hypervisor: str
    base_image: str
    cow: str
    memory: str
    tap: str | None = None
    mac: str | None = None
    address: str | None = None
    gateway: str | None = None
    hostname: str | None = None
    config_dir: str | None = None
    init: str = "/sbin/viocluster-init"
    kernel_args: list[str] = field(default_factory=list)
    kernel: str | None = None
    initrd: str | None = None
    accel: str = "tcg"
    cpus: int = 1

    def to_dict(self) -> dict:
        return asdict(self)


def memory_mb(mem: str) -> int:
    m = re.fullmatch(r"(\d+)([KMG]?)", mem.strip().upper())
    if not m:
        raise VMError(f"memory {mem!r} is not a size like 256M or 1G")
    n, unit = int(m.group(1)), m.group(2) or "M"
    return {"K": n // 1024, "M": n, "G": n * 1024}[unit]


def guest_args(spec: VMSpec) -> list[str]:
    args = []
    if spec.address:
        args.append(f"vc_ip={spec.address}")
    if spec.gateway:
        args.append(f"vc_gw={spec.gateway}")
    args.append(f"vc_name={spec.hostname or spec.name}")
    if spec.config_dir:
        args.append("vc_cfg=1")
    return args + list(spec.kernel_args)


def uml_command(spec: VMSpec, uml_dir: str, empty_dir: str) -> list[str]:
    eth = f"eth0=tuntap,{spec.tap}" + (f",{spec.mac}" if spec.mac else "")
    # hostfs= always: without it the guest could mount any host path its user can read.
    hostfs = spec.config_dir or empty_dir
    cmd = ["linux", f"umid={spec.name}", f"uml_dir={uml_dir}", f"ubd0={spec.cow},{spec.base_image}",
           "root=/dev/ubda", "rw", f"init={spec.init}", f"mem={spec.memory}", f"hostfs={hostfs}",
           "con=null", "ssl=null", "con0=null,fd:1",
           # 256 legacy BSD pty pairs cost 1-3 s of UML boot (pty_init); nobody uses them.
           "pty.legacy_count=0"]
    if spec.tap:
        cmd.insert(7, eth)
    return cmd + guest_args(spec)


def qemu_command(spec: VMSpec) -> list[str]:
    if not spec.kernel or not spec.initrd:
        raise VMError("hypervisor qemu needs kernel and initrd (build_image.py build qemu-boot "
                      "makes both from Debian's linux-image-amd64)")
    append = ["root=/dev/vda", "rw", "console=ttyS0", "quiet", f"vc_init={spec.init}"]
    cmd = ["qemu-system-x86_64", "-name", spec.name, "-machine", f"q35,accel={spec.accel}",
           "-m", str(memory_mb(spec.memory)), "-smp", str(spec.cpus), "-nodefaults", "-no-user-config",
           "-display", "none", "-serial", "stdio", "-monitor", "none",
           "-kernel", spec.kernel, "-initrd", spec.initrd,
           "-drive", f"file={spec.cow},format=qcow2,if=virtio,cache=unsafe"]
    if spec.config_dir:  # the guest's init reads /sys/firmware/qemu_fw_cfg/by_name/opt/vc/*
        for f in CONFIG_FILES:
            path = os.path.join(spec.config_dir, f)
            if os.path.isfile(path):
                cmd += ["-fw_cfg", f"name=opt/vc/{f},file={path}"]
    if spec.tap:
        dev = "virtio-net-pci,netdev=n0" + (f",mac={spec.mac}" if spec.mac else "")
        cmd += ["-netdev", f"tap,id=n0,ifname={spec.tap},script=no,downscript=no", "-device", dev]
    return cmd + ["-append", " ".join(append + guest_args(spec))]


def kvm_usable() -> bool:
    """KVM only where it really runs: /dev/kvm usable and not nested under another hypervisor."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
    except OSError:
        return False
    try:
        if fcntl.ioctl(fd, 0xAE00) != 12:  # KVM_GET_API_VERSION
            return False
    except OSError:
        return False
    finally:
        os.close(fd)
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((l for l in f if l.startswith("flags")), "")
    except OSError:
        return False
    return " hypervisor" not in flags  # nested KVM: here about 1000x slower than TCG


# ---------------------------------------------------------------------------- processes
@dataclass
class ProcInfo:
    pid: int
    pgid: int
    uid: int
    starttime: int
    state: str
    cmdline: list[str]


def proc_info(pid: int) -> ProcInfo | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        uid = os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None
    rest = stat[stat.rindex(")") + 2:].split()
    return ProcInfo(pid, int(rest[2]), uid, int(rest[19]), rest[0], cmd)


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = proc_info(int(entry))
            if info and info.pgid == pgid and info.state != "Z":
                found.append(info.pid)
    return found


def vm_processes(uid: int) -> list[ProcInfo]:
    """Process-group leaders of this uid that are hypervisors (what limits count)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        info = proc_info(int(entry))
        if (info and info.uid == uid and info.pid == info.pgid and info.state != "Z"
                and info.cmdline and os.path.basename(info.cmdline[0]) in ("linux", "vmlinux",
                                                                           "qemu-system-x86_64")):
            found.append(info)
    return found


def vm_memory_mb(info: ProcInfo) -> int:
    for i, a in enumerate(info.cmdline):
        if a.startswith("mem="):
            return memory_mb(a[4:])
        if a == "-m" and i + 1 < len(info.cmdline):
            return memory_mb(info.cmdline[i + 1])
    return 0


def _gone(pid: int) -> bool:
    info = proc_info(pid)
    return info is None or info.state == "Z"


def kill_group(pgid: int, timeout: float = 5.0) -> float:
    """SIGKILL a whole process group (a UML guest's host processes all live in it) and wait
    until none is left. Returns the seconds from the signal until the group's members (listed
    just before it) are gone; a last scan of /proc then confirms nothing else is left."""
    members = group_members(pgid)
    t0 = time.monotonic()
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return 0.0
    took = None
    while time.monotonic() - t0 < timeout:
        try:
            os.waitpid(pgid, os.WNOHANG)  # reap if it is our own child
        except ChildProcessError:
            pass
        if all(_gone(p) for p in members):
            took = time.monotonic() - t0 if took is None else took
            left = group_members(pgid)  # anything forked during the kill?
            if not left:
                return took
            members = left
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                return took
        time.sleep(0.001)
    raise VMError(f"process group {pgid} still alive {timeout} s after SIGKILL")


def spawn_detached(cmd: list[str], account: Account, console: str, cwd: str,
                   env_extra: dict | None = None) -> int:
    """Start cmd in a new session (so its pid is its process-group id), as account, with
    stdout/stderr on the console file; returns the pid. Works with and without systemd."""
    env = {"HOME": account.home, "USER": account.name, "LOGNAME": account.name,
           "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "TMPDIR": "/tmp"}
    env.update(env_extra or {})
    drop = os.geteuid() == 0 and account.uid != 0
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # middle child: fork the VM, report its pid, exit (the VM then belongs to init)
        try:
            os.close(r)
            vm = os.fork()
            if vm == 0:
                try:
                    os.close(w)
                    os.setsid()  # the VM leads its own session and process group: pid == pgid
                    out = os.open(console, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                    if drop:
                        os.fchown(out, account.uid, account.gid)
                        os.initgroups(account.name, account.gid)
                        os.setgid(account.gid)
                        os.setuid(account.uid)
                    os.chdir(cwd)
                    nul = os.open(os.devnull, os.O_RDONLY)
                    os.dup2(nul, 0)
                    os.dup2(out, 1)
                    os.dup2(out, 2)
                    os.closerange(3, 65536)  # nothing of the caller's (ansible's pipes) leaks in
                    os.execvpe(cmd[0], cmd, env)
                except BaseException as exc:  # noqa: BLE001 - goes to the console file
                    os.write(2, f"VIOCLUSTER-ERROR cannot start {cmd[0]}: {exc}\n".encode())
                finally:
                    os._exit(127)
            os.write(w, str(vm).encode())
        except BaseException as exc:  # noqa: BLE001 - report anything to the parent
            os.write(w, f"ERR {exc}".encode())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while True:
        chunk = os.read(r, 256)
        if not chunk:
            break
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    text = data.decode()
    if not text.isdigit():
        raise VMError(f"could not start {cmd[0]}: {text or 'no pid reported'}")
    return int(text)


def systemd_available() -> bool:
    return os.path.isdir("/run/systemd/system") and os.geteuid() == 0


def unit_name(account: Account, name: str) -> str:
    return f"viocluster-vm-{account.name}-{name}"


def spawn_systemd(cmd: list[str], account: Account, console: str, cwd: str, name: str,
                  slice_: str | None = None, memory_max: str | None = None) -> int:
    """Start cmd as a transient service of the account (KillMode=control-group); returns its
    main pid, which systemd made a session leader (pid == pgid), like spawn_detached."""
    unit = unit_name(account, name)
    execute(["systemctl", "reset-failed", unit])
    argv = ["systemd-run", "--quiet", f"--unit={unit}", f"--uid={account.uid}",
            f"--gid={account.gid}", "-p", f"WorkingDirectory={cwd}",
            "-p", f"StandardOutput=append:{console}", "-p", "StandardError=inherit",
            "-p", "KillMode=control-group", "-p", "CollectMode=inactive-or-failed",
            "--setenv", f"HOME={account.home}", "--setenv", "TMPDIR=/tmp"]
    if slice_:
        argv.append(f"--slice={slice_}")
    if memory_max:
        argv += ["-p", f"MemoryMax={memory_max}"]
    rc, _out, err = execute(argv + ["--"] + cmd)
    if rc != 0:
        raise VMError(f"systemd-run {unit} failed: {err.strip()}")
    for _ in range(100):
        out = execute(["systemctl", "show", "-p", "MainPID", "--value", unit])[1].strip()
        if out.isdigit() and int(out) > 0:
            return int(out)
        time.sleep(0.01)
    raise VMError(f"unit {unit} started but has no main pid; see journalctl -u {unit}")


# ---------------------------------------------------------------------------- readiness
def ping_once(address: str, timeout: float = 0.2) -> bool:
    # -W bounds the wait; a ping that cannot run is no answer
    try:
        wait = str(max(timeout, 0.1))
        return execute(["ping", "-n", "-q", "-c", "1", "-W", wait, address])[0] == 0
    except OSError:
        return False


def tcp_once(address: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def console_has(console: str, marker: str) -> bool:
    try:
        with open(console, "rb") as f:
            return marker.encode() in f.read()
    except OSError:
        return False


def console_tail(console: str, lines: int = 15) -> str:
    try:
        with open(console, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            text = f.read().decode(errors="replace")
    except OSError:
        return "(no console output)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty console)"


def wait_ready(probe: str, pid: int, console: str, address: str | None, port: int | None,
               timeout: float, marker: str = READY_MARKER) -> float:
    """Poll the probe until it succeeds; returns seconds waited. Raises VMError with the console
    tail when the VM dies or the timeout passes."""
    t0 = time.monotonic()
    while True:
        if probe == "ping" and ping_once(address or ""):
            return time.monotonic() - t0
        if probe == "tcp" and tcp_once(address or "", port or 0):
            return time.monotonic() - t0
        if probe == "console" and console_has(console, marker):
            return time.monotonic() - t0
        if probe == "none":
            return 0.0
        info = proc_info(pid)
        if info is None or info.state == "Z":
            raise VMError(f"the VM exited during boot; console ({console}) last lines:\n"
                          + console_tail(console))
        if time.monotonic() - t0 > timeout:
            raise VMError(f"the VM was not ready ({probe}) within {timeout:g} s and was stopped; "
                          f"console ({console}) last lines:\n" + console_tail(console))
        time.sleep(0.02 if probe != "ping" else 0.0)


# ---------------------------------------------------------------------------- peer limits
@dataclass
class Limits:
    max_vms: int | None = None
    max_memory_mb: int | None = None


def read_limits(path: str) -> Limits:
    """KEY=VALUE lines (max_vms, max_memory_mb), written by the lending_host role."""
    if not os.path.exists(path):
        return Limits()
    lim = Limits()
    try:
        text = open(path).read()
    except OSError as exc:
        raise VMError(f"cannot read limits file {path}: {exc.strerror}") from exc
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        key, _, val = line.partition("=")
        key = key.strip()
        if key not in ("max_vms", "max_memory_mb") or not val.strip().isdigit():
            raise VMError(f"{path}:{n}: expected max_vms=N or max_memory_mb=N, got {line!r}")
        setattr(lim, key, int(val))
    return lim


def limits_problem(lim: Limits, account: Account, memory: str, exclude_pid: int | None) -> str | None:
    running = [p for p in vm_processes(account.uid) if p.pid != exclude_pid]
    if lim.max_vms is not None and len(running) + 1 > lim.max_vms:
        return (f"{account.name} already runs {len(running)} VM(s); the limit is {lim.max_vms}: "
                f"stop one first")
    if lim.max_memory_mb is not None:
        used = sum(vm_memory_mb(p) for p in running)
        want = memory_mb(memory)
        if used + want > lim.max_memory_mb:
            return (f"{account.name} would use {used + want} MB of VM memory ({used} running + "
                    f"{want}); the limit is {lim.max_memory_mb} MB")
    return None


def ensure_private_dir(path: str, account: Account) -> None:
    if not os.path.isdir(path):
        os.makedirs(path, mode=0o700, exist_ok=True)
        if os.geteuid() == 0:
            os.chown(path, account.uid, account.gid)


def remove_tree(path: str) -> bool:
    if not os.path.lexists(path):
        return False
    for root, dirs, files in os.walk(path, topdown=False):
        for n in files + dirs:
            p = os.path.join(root, n)
            try:
                os.rmdir(p) if os.path.isdir(p) and not os.path.islink(p) else os.unlink(p)
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise
    os.rmdir(path)
    return True
