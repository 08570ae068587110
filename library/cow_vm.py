#!/usr/bin/python
# -*- coding: utf-8 -*-
# Apache-2.0
"""Ansible module: run or kill a copy-on-write VM (User Mode Linux or QEMU) as a peer account."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: cow_vm
short_description: Run or kill a copy-on-write VM (User Mode Linux or QEMU) as a peer account
description:
  - Boots a VM from a read-only base image plus a per-VM copy-on-write file, as the unprivileged
    account of the peer domain that borrows the machine, on a TAP that account owns, and waits
    until the VM answers (ping, a TCP port, or its console's ready line).
  - C(state=absent) kills the VM's whole process group at once (the COW is disposable) and
    removes what the hypervisor leaves behind (UML's C(~/.uml/NAME)).
  - The VM runs in a process group of its own, recorded in C(STATE_DIR/NAME.json), so the
    module works with and without systemd; where systemd runs and the module runs as root, the
    VM can instead be a transient unit (O(launcher=systemd)).
  - The guest learns its identity from the kernel command line (C(vc_ip), C(vc_name), ...) and
    from O(config_dir), which UML exposes to the guest through hostfs limited to that directory.
version_added: "0.1.0"
author: VioCluster authors
options:
  name:
    description: VM name; also UML's umid and the default hostname. Letters, digits, C(._-).
    type: str
    required: true
  state:
    description: C(running) boots the VM if it is not running as specified; C(absent) kills it.
    type: str
    choices: [running, absent]
    default: running
  hypervisor:
    description: C(uml) (User Mode Linux, COW natively) or C(qemu) (qcow2 overlay).
    type: str
    choices: [uml, qemu]
    default: uml
  user:
    description:
      - Peer account that runs the VM. Default is the account running the module.
      - Only root may name another account; the VM then runs with that account's uid.
    type: str
  base_image:
    description: Read-only base image (raw ext4), at the same path on every lender.
    type: path
  cow:
    description:
      - The VM's copy-on-write file (UML COW or qcow2), created when missing, owned by O(user).
      - An existing COW must have been made on O(base_image) as it is now (path, size, mtime).
    type: path
  memory:
    description: Guest memory, like C(256M) or C(1G).
    type: str
    default: 256M
  cpus:
    description: Virtual CPUs (QEMU only; a UML guest has one).
    type: int
    default: 1
  tap:
    description: TAP device owned by O(user), in the network namespace the module runs in.
    type: str
  mac:
    description: MAC address of the guest's eth0 (default chosen by the hypervisor).
    type: str
  address:
    description: Guest address with prefix length, like C(10.1.0.5/24) (kernel arg C(vc_ip)).
    type: str
  gateway:
    description: Guest default gateway (kernel arg C(vc_gw)).
    type: str
  hostname:
    description: Guest hostname (kernel arg C(vc_name)); default O(name).
    type: str
  config_dir:
    description:
      - Directory of O(user) (mode 0700) with C(node.env), C(munge.key), optional C(slurm.conf)
        and C(hosts); UML's hostfs shows the guest this directory and nothing else.
      - Without it, UML still gets C(hostfs=) an empty directory.
      - Under QEMU, those files are passed with C(-fw_cfg opt/vc/NAME) (read when QEMU starts).
    type: path
  kernel_args:
    description: Extra kernel arguments (no spaces inside one argument), passed on to the guest.
    type: list
    elements: str
    default: []
  init:
    description: The guest's init program.
    type: str
    default: /sbin/viocluster-init
  kernel:
    description: Kernel image for QEMU (C(vmlinuz) from C(build_image.py build qemu-boot)).
    type: path
  initrd:
    description: Initramfs for QEMU (C(initrd.img) from C(build_image.py build qemu-boot)).
    type: path
  accel:
    description:
      - QEMU accelerator. C(auto) uses KVM only where it really runs (/dev/kvm usable and the
        CPU not itself virtualised), else TCG.
    type: str
    choices: [auto, tcg, kvm]
    default: auto
  ready_probe:
    description:
      - How to know the VM is up. C(auto) is C(ping) when O(address) is set, else C(console).
      - C(ping) and C(tcp) need a route from where the module runs to O(address).
      - C(console) waits for the line C(VIOCLUSTER-READY) the image's init prints.
    type: str
    choices: [auto, ping, tcp, console, none]
    default: auto
  ready_port:
    description: TCP port for O(ready_probe=tcp) (6818 is slurmd's).
    type: int
  ready_timeout:
    description: Seconds to wait for readiness; past it the VM is killed and the task fails.
    type: float
    default: 60
  state_dir:
    description: Where the VM's pid record and console log go. Default C(~USER/.viocluster/vms).
    type: path
  limits_file:
    description:
      - C(max_vms=N) and C(max_memory_mb=N) lines for O(user), written by the lending_host
        role. Default C(/etc/viocluster/peers/USER.limits); no file means no limit.
    type: path
  remove_cow:
    description: With C(state=absent), also delete the COW file (and its C(.base) note).
    type: bool
    default: false
  launcher:
    description:
      - C(session) forks the VM into a new session dropped to O(user). C(systemd) runs it as a
        transient unit (root only). C(auto) picks C(systemd) where systemd runs and the module
        is root, else C(session). Both kill the VM's whole process group on C(absent).
    type: str
    choices: [auto, session, systemd]
    default: auto
attributes:
  check_mode:
    support: full
    description: Validates everything and reports whether the VM would be started, restarted or
      killed, without doing it.
  diff_mode:
    support: full
    description: Shows the VM's state and specification before and after.
notes:
  - A running VM whose specification differs from the task's is killed and booted again.
  - The TAP is opened in the module's network namespace; run the module inside the lending
    host's namespace.
  - Secrets (the domain's munge key) go in O(config_dir), never in O(kernel_args) which every
    user of the host can read in C(ps).
"""

EXAMPLES = r"""
- name: Boot a borrowed compute node as the peer account of domain A
  cow_vm:
    name: a-node1
    user: vcpeer-a
    base_image: /var/lib/viocluster/images/node.img
    cow: /home/vcpeer-a/vms/a-node1.cow
    memory: 256M
    tap: vctapa0
    mac: "02:00:0a:01:00:32"
    address: 10.1.0.50/24
    config_dir: /home/vcpeer-a/config/a-node1
    kernel_args: [vc_ctl=a-head:10.1.0.1, vc_feat=borrowed]
    ready_probe: console
  register: vm

- name: Reclaim it (kill at once; the COW is disposable)
  cow_vm:
    name: a-node1
    user: vcpeer-a
    state: absent
    remove_cow: true

- name: The same image under QEMU (TCG unless KVM really runs)
  cow_vm:
    name: a-node2
    hypervisor: qemu
    base_image: /var/lib/viocluster/images/node.img
    cow: /home/vcpeer-a/vms/a-node2.qcow2
    kernel: /var/lib/viocluster/images/vmlinuz
    initrd: /var/lib/viocluster/images/initrd.img
    tap: vctapa1
    address: 10.1.0.51/24
    ready_timeout: 120
"""

RETURN = r"""
pid:
  description: Pid (and process-group id) of the hypervisor; 0 when absent.
  returned: always
  type: int
  sample: 12345
boot_seconds:
  description: Seconds from launch to ready in this run; null when the VM was already running.
  returned: always
  type: float
  sample: 1.62
kill_seconds:
  description: Seconds from SIGKILL to no process of the VM left (state=absent).
  returned: when a VM was killed
  type: float
  sample: 0.01
cow_allocated_bytes:
  description: Bytes the COW file occupies on disk (it is sparse).
  returned: always
  type: int
  sample: 450560
console:
  description: Console log of the VM.
  returned: always
  type: str
command:
  description: The hypervisor command line.
  returned: when running
  type: list
  elements: str
accel:
  description: QEMU accelerator used (tcg or kvm); null for UML.
  returned: always
  type: str
"""

import ipaddress
import json
import os
import re
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.viocluster_vm import (
    Account,
    VMError,
    VMSpec,
    allocated_bytes,
    backing_problem,
    create_qcow2,
    ensure_private_dir,
    execute,
    kill_group,
    kvm_usable,
    limits_problem,
    memory_mb,
    proc_info,
    qemu_command,
    read_backing,
    read_limits,
    remove_tree,
    reset_tap_offloads,
    spawn_detached,
    spawn_systemd,
    systemd_available,
    tap_problem,
    uml_command,
    unit_name,
    use_module,
    vm_processes,
    wait_ready,
    write_uml_cow,
)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


class VM:
    """One VM of one account: its files, its record, its process."""

    def __init__(self, params: dict, account: Account):
        self.p = params
        self.account = account
        self.name = params["name"]
        self.state_dir = params["state_dir"] or os.path.join(account.home, ".viocluster", "vms")
        self.record_path = os.path.join(self.state_dir, f"{self.name}.json")
        self.console = os.path.join(self.state_dir, f"{self.name}.console")
        self.uml_dir = os.path.join(account.home, ".uml")

    # -------------------------------------------------------------- what is running
    def record(self) -> dict | None:
        try:
            with open(self.record_path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def running_pid(self) -> tuple[int, dict | None]:
        """(pid, record) of the live VM, or (0, record-or-None)."""
        rec = self.record()
        if rec:
            info = proc_info(int(rec.get("pid", 0)))
            if (info and info.state != "Z" and info.uid == self.account.uid
                    and info.pgid == info.pid and info.starttime == rec.get("starttime")):
                return info.pid, rec
        for info in vm_processes(self.account.uid):  # running without a record (lost state dir)
            cmd = info.cmdline
            if f"umid={self.name}" in cmd or (self.name in cmd and "-name" in cmd
                                              and cmd[cmd.index("-name") + 1] == self.name):
                return info.pid, None
        return 0, rec

    def stale_leftovers(self) -> list[str]:
        return [p for p in (self.record_path, os.path.join(self.uml_dir, self.name))
                if os.path.lexists(p)]

    # -------------------------------------------------------------- desired spec
    def spec(self) -> VMSpec:
        p = self.p
        accel = "tcg"
        if p["hypervisor"] == "qemu":
            if p["accel"] == "kvm" and not kvm_usable():
                raise VMError("accel=kvm asked, but KVM does not really run here (no usable "
                              "/dev/kvm, or nested under another hypervisor): use auto or tcg")
            accel = "kvm" if p["accel"] == "kvm" or (p["accel"] == "auto" and kvm_usable()) else "tcg"
        return VMSpec(name=self.name, hypervisor=p["hypervisor"], base_image=p["base_image"],
                      cow=p["cow"], memory=p["memory"], tap=p["tap"], mac=p["mac"],
                      address=p["address"], gateway=p["gateway"], hostname=p["hostname"],
                      config_dir=p["config_dir"], init=p["init"], kernel_args=p["kernel_args"],
                      kernel=p["kernel"], initrd=p["initrd"], accel=accel, cpus=p["cpus"])

    def command(self, spec: VMSpec) -> list[str]:
        if spec.hypervisor == "uml":
            return uml_command(spec, self.uml_dir, os.path.join(self.state_dir, "empty"))
        return qemu_command(spec)


def validate(p: dict, account: Account) -> None:
    """Bad parameters and unusable files fail here, before anything changes."""
    if not NAME_RE.match(p["name"]):
        raise VMError(f"name {p['name']!r}: use 1-32 letters, digits, '.', '_' or '-'")
    if p["state"] == "absent":
        return
    for key in ("base_image", "cow"):
        if not p[key]:
            raise VMError(f"{key} is required with state=running")
    memory_mb(p["memory"])
    if p["mac"] and not MAC_RE.match(p["mac"]):
        raise VMError(f"mac {p['mac']!r} is not like 02:00:0a:01:00:32")
    if p["address"]:
        try:
            iface = ipaddress.ip_interface(p["address"])
        except ValueError as exc:
            raise VMError(f"address {p['address']!r} is not ADDRESS/PREFIX like 10.1.0.5/24") from exc
        if "/" not in p["address"]:
            raise VMError(f"address {p['address']!r} needs a prefix length, like {iface.ip}/24")
    if p["gateway"]:
        try:
            ipaddress.ip_address(p["gateway"])
        except ValueError as exc:
            raise VMError(f"gateway {p['gateway']!r} is not an IP address") from exc
    for arg in p["kernel_args"]:
        if not arg or any(c.isspace() for c in arg):
            raise VMError(f"kernel argument {arg!r} is empty or contains whitespace")
    if p["hostname"] and not re.match(r"^[A-Za-z0-9][A-Za-z0-9-]{0,62}$", p["hostname"]):
        raise VMError(f"hostname {p['hostname']!r} is not a valid host name")
    probe = p["ready_probe"]
    if probe in ("ping", "tcp") and not p["address"]:
        raise VMError(f"ready_probe={probe} needs address")
    if probe == "tcp" and not p["ready_port"]:
        raise VMError("ready_probe=tcp needs ready_port")
    if p["ready_timeout"] <= 0:
        raise VMError("ready_timeout must be positive")
    if p["hypervisor"] == "qemu":
        for key in ("kernel", "initrd"):
            if not p[key]:
                raise VMError(f"hypervisor qemu needs {key} (build_image.py build qemu-boot)")
            if not os.path.isfile(p[key]):
                raise VMError(f"{key} {p[key]} does not exist")
    base = p["base_image"]
    if not os.path.isfile(base):
        raise VMError(f"base image {base} is missing: the cow_base_image role copies it to "
                      f"every lending host")
    if os.path.exists(p["cow"]):
        st = os.stat(p["cow"])
        if st.st_uid != account.uid:
            raise VMError(f"COW {p['cow']} belongs to uid {st.st_uid}, not to {account.name}: "
                          f"a VM may use only its own account's files")
        fmt = "uml" if p["hypervisor"] == "uml" else "qcow2"
        problem = backing_problem(read_backing(p["cow"], fmt), base)
        if problem:
            raise VMError(f"COW {p['cow']} no longer fits base image {base}: {problem}. Remove "
                          f"the COW (cow_image state=absent; it is disposable) and boot again")
    else:
        parent = os.path.dirname(p["cow"]) or "."
        if not os.path.isdir(parent):
            raise VMError(f"directory {parent} for the COW does not exist")
        if os.stat(parent).st_uid != account.uid:
            raise VMError(f"directory {parent} for the COW is not {account.name}'s")
    if p["tap"]:
        problem = tap_problem(p["tap"], account.uid)
        if problem:
            raise VMError(problem)
    if p["config_dir"]:
        d = p["config_dir"]
        if not os.path.isdir(d):
            raise VMError(f"config_dir {d} is not a directory")
        st = os.stat(d)
        if st.st_uid != account.uid:
            raise VMError(f"config_dir {d} is not {account.name}'s")
        if st.st_mode & 0o077:
            raise VMError(f"config_dir {d} is readable by other accounts (mode "
                          f"{st.st_mode & 0o777:o}); it holds the domain's key: chmod 0700")


def start(vm: VM, spec: VMSpec, cmd: list[str]) -> tuple[int, float]:
    p, account = vm.p, vm.account
    ensure_private_dir(vm.state_dir, account)
    ensure_private_dir(os.path.join(vm.state_dir, "empty"), account)
    ensure_private_dir(vm.uml_dir, account)
    remove_tree(os.path.join(vm.uml_dir, vm.name))
    if not os.path.exists(spec.cow):
        if spec.hypervisor == "uml":
            write_uml_cow(spec.cow, spec.base_image)
        else:
            create_qcow2(spec.cow, spec.base_image)
        if os.geteuid() == 0:
            for f in (spec.cow, spec.cow + ".base"):
                if os.path.exists(f):
                    os.chown(f, account.uid, account.gid)
    with open(vm.console, "w"):
        pass
    if os.geteuid() == 0:
        os.chown(vm.console, account.uid, account.gid)
    os.chmod(vm.console, 0o600)
    if spec.tap and spec.hypervisor == "uml":
        try:
            reset_tap_offloads(spec.tap)
        except OSError as exc:
            raise VMError(f"cannot attach to TAP {spec.tap} as {account.name}: {exc.strerror} "
                          f"(is another VM using it?)") from exc
    launcher = p["launcher"]
    if launcher == "auto":
        launcher = "systemd" if systemd_available() else "session"
    t0 = time.monotonic()
    if launcher == "systemd":
        if os.geteuid() != 0:
            raise VMError("launcher=systemd needs root; use launcher=session")
        pid = spawn_systemd(cmd, account, vm.console, account.home, vm.name)
    else:
        pid = spawn_detached(cmd, account, vm.console, account.home)
    probe = p["ready_probe"]
    if probe == "auto":
        probe = "ping" if spec.address else "console"
    address = spec.address.split("/")[0] if spec.address else None
    try:
        wait_ready(probe, pid, vm.console, address, p["ready_port"], p["ready_timeout"])
    except VMError:
        try:
            kill_group(pid)
        finally:
            remove_tree(os.path.join(vm.uml_dir, vm.name))
        raise
    boot = time.monotonic() - t0
    info = proc_info(pid)
    rec = {"pid": pid, "starttime": info.starttime if info else None, "spec": spec.to_dict(),
           "command": cmd, "launcher": launcher, "boot_seconds": round(boot, 3),
           "started": time.time()}
    tmp = vm.record_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(rec, f, indent=1)
    if os.geteuid() == 0:
        os.chown(tmp, account.uid, account.gid)
    os.replace(tmp, vm.record_path)
    return pid, boot


def stop(vm: VM, pid: int) -> float:
    took = kill_group(pid) if pid else 0.0
    if vm.p["launcher"] != "session" and systemd_available():
        execute(["systemctl", "reset-failed", unit_name(vm.account, vm.name)])
    remove_tree(os.path.join(vm.uml_dir, vm.name))
    for f in (vm.record_path,):
        if os.path.exists(f):
            os.unlink(f)
    return took


def run(module: AnsibleModule) -> dict:
    p = module.params
    account = _account(p["user"])
    validate(p, account)
    vm = VM(p, account)
    pid, rec = vm.running_pid()
    before_spec = (rec or {}).get("spec") if pid else None
    before = {"state": "running" if pid else "absent", "pid": pid, "spec": before_spec}
    result = {"pid": pid, "boot_seconds": None, "console": vm.console, "accel": None,
              "cow_allocated_bytes": allocated_bytes(p["cow"]) if p["cow"] else 0}

    if p["state"] == "absent":
        leftovers = vm.stale_leftovers()
        changed = bool(pid) or bool(leftovers)
        cow = p["cow"] or ((rec or {}).get("spec") or {}).get("cow")
        cow_gone = p["remove_cow"] and cow and os.path.exists(cow)
        changed = changed or bool(cow_gone)
        if changed and not module.check_mode:
            result["kill_seconds"] = round(stop(vm, pid), 4)
            if cow_gone:
                for f in (cow, cow + ".base"):
                    if os.path.exists(f):
                        os.unlink(f)
        result.update(changed=changed, pid=0,
                      diff={"before": before, "after": {"state": "absent", "pid": 0, "spec": None}})
        if not module.check_mode:
            result["cow_allocated_bytes"] = allocated_bytes(cow) if cow else 0
        return result

    spec = vm.spec()
    cmd = vm.command(spec)
    want = spec.to_dict()
    result.update(command=cmd, accel=spec.accel if spec.hypervisor == "qemu" else None)
    if pid and before_spec == want:
        result.update(changed=False, diff={"before": before, "after": before})
        return result
    lim = read_limits(p["limits_file"] or f"/etc/viocluster/peers/{account.name}.limits")
    problem = limits_problem(lim, account, spec.memory, exclude_pid=pid or None)
    if problem:
        raise VMError(problem)
    after = {"state": "running", "pid": "(new)", "spec": want}
    if module.check_mode:
        result.update(changed=True, diff={"before": before, "after": after})
        return result
    if pid:
        stop(vm, pid)
    pid, boot = start(vm, spec, cmd)
    after["pid"] = pid
    result.update(changed=True, pid=pid, boot_seconds=round(boot, 3),
                  cow_allocated_bytes=allocated_bytes(spec.cow),
                  diff={"before": before, "after": after})
    return result


def _account(user: str | None) -> Account:
    account = Account.lookup(user)
    if os.geteuid() != 0 and account.uid != os.geteuid():
        raise VMError(f"the module runs as uid {os.geteuid()}, not as {account.name}: connect as "
                      f"that account (or become it), or run as root")
    return account


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "state": {"type": "str", "choices": ["running", "absent"], "default": "running"},
            "hypervisor": {"type": "str", "choices": ["uml", "qemu"], "default": "uml"},
            "user": {"type": "str"},
            "base_image": {"type": "path"},
            "cow": {"type": "path"},
            "memory": {"type": "str", "default": "256M"},
            "cpus": {"type": "int", "default": 1},
            "tap": {"type": "str"},
            "mac": {"type": "str"},
            "address": {"type": "str"},
            "gateway": {"type": "str"},
            "hostname": {"type": "str"},
            "config_dir": {"type": "path"},
            "kernel_args": {"type": "list", "elements": "str", "default": []},
            "init": {"type": "str", "default": "/sbin/viocluster-init"},
            "kernel": {"type": "path"},
            "initrd": {"type": "path"},
            "accel": {"type": "str", "choices": ["auto", "tcg", "kvm"], "default": "auto"},
            "ready_probe": {"type": "str", "default": "auto",
                            "choices": ["auto", "ping", "tcp", "console", "none"]},
            "ready_port": {"type": "int"},
            "ready_timeout": {"type": "float", "default": 60},
            "state_dir": {"type": "path"},
            "limits_file": {"type": "path"},
            "remove_cow": {"type": "bool", "default": False},
            "launcher": {"type": "str", "choices": ["auto", "session", "systemd"],
                         "default": "auto"},
        },
        required_if=[("state", "running", ["base_image", "cow"])],
        supports_check_mode=True,
    )
    use_module(module)
    try:
        result = run(module)
    except VMError as exc:
        module.fail_json(msg=str(exc))
    if not module._diff:
        result.pop("diff", None)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
