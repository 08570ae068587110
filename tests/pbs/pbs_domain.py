"""A live OpenPBS domain for the adapter tests: three nspawn hosts, installed by the pbs role.

* ``pbst-head`` runs the server, scheduler, comm, the PostgreSQL datastore and a MoM (node
  ``head``); ``pbst-node1`` runs a MoM (node ``node1``): the domain's two physical nodes.
* ``pbst-vm1`` runs a MoM of the same build that no server knows yet: it stands in for a
  borrowed VM, which the adapter admits as node ``vm1``.

The hosts boot the lab's root filesystem, each in a network namespace of its own, plugged into
the bridge ``pbst-br`` (10.209.0.0/24, apart from the lab's 10.203 and molecule's 10.205; real
addresses, as the PBS server will not start on a host whose name resolves only to a loopback
address). The role is applied by ``ansible-playbook`` over SSH, as on any domain; the adapter
reaches the server's commands through ``nsenter`` into the head's namespaces.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from broker.lab import hosts as labhosts
from broker.lab.pbs_build import ensure_build
from broker.lab.rootfs import ensure_rootfs

REPO = Path(__file__).resolve().parents[2]
NAME = "pbst"
BRIDGE = "pbst-br"
SUBNET = "10.209.0"
STATE_DIR = Path("/var/tmp/pbst")
USER = "pbst"  # jobs run as this account (PBS runs no job as root)
UID = 3911
HOSTS = {"head": 11, "node1": 12, "vm1": 13}
#: A name that resolves on the head but where no MoM runs: a VM that never comes up.
GHOST = ("ghost", f"{SUBNET}.99")
RESOLV_CONF = "# no name server: every name is in /etc/hosts"
PATH = "/opt/pbs/bin:/opt/pbs/sbin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class PbsDomain:
    plan: labhosts.Plan

    def host(self, name: str) -> labhosts.Host:
        return next(h for h in self.plan.hosts if h.name == name)

    def prefix(self, name: str = "head") -> list[str]:
        """``nsenter`` into a host's mount, UTS, network, IPC and PID namespaces."""
        init = labhosts._children(self.host(name).pid or 0)
        if not init:
            raise RuntimeError(f"host {name} is not running")
        return ["nsenter", "-t", str(init[0]), "-m", "-u", "-n", "-i", "-p", "--"]

    @property
    def env(self) -> dict[str, str]:
        return {"PATH": PATH}

    def run(self, *args: str, host: str = "head", check: bool = True) -> str:
        proc = subprocess.run([*self.prefix(host), *args], capture_output=True, text=True,
                              env={"PATH": PATH}, timeout=60, check=False)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} on {host}: {proc.stderr.strip() or proc.stdout}")
        return proc.stdout

    def submit(self, *args: str) -> str:
        """qsub as the test account; returns the job id."""
        return self.run("runuser", "-u", USER, "--", "/opt/pbs/bin/qsub", "-j", "oe",
                        "-o", "/dev/null", *args).strip()

    def job(self, job_id: str) -> dict:
        out = self.run("qstat", "-f", "-F", "json", job_id, check=False)
        try:
            return json.loads(out).get("Jobs", {}).get(job_id, {})
        except json.JSONDecodeError:
            return {}

    def nodes(self) -> dict[str, dict]:
        return json.loads(self.run("pbsnodes", "-a", "-F", "json")).get("nodes", {})

    def wait(self, what: str, ok: Callable[[], bool], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not ok():
            if time.monotonic() > deadline:
                raise AssertionError(f"waited {timeout:g} s for {what}")
            time.sleep(0.3)

    def kick(self) -> None:
        """Start a scheduling cycle now."""
        self.run("qmgr", "-c", "set server scheduling = True")

    def clear_queue(self) -> None:
        ids = [j for j in json.loads(self.run("qstat", "-f", "-F", "json")).get("Jobs", {})]
        if ids:
            self.run("qdel", "-W", "force", *ids, check=False)
        self.wait("an empty queue", lambda: not json.loads(
            self.run("qstat", "-f", "-F", "json")).get("Jobs"))


def plan() -> labhosts.Plan:
    rootfs, _ = ensure_rootfs()
    hosts = [
        labhosts.Host(
            name=name, machine=f"{NAME}-{name}", address=f"{SUBNET}.{octet}/24",
            gateway=f"{SUBNET}.1", bridge=BRIDGE, port=f"{NAME}-{name}-p",
            extra_hosts=dict([GHOST]) if name == "head" else {},
        )
        for name, octet in HOSTS.items()
    ]
    return labhosts.Plan(
        name=NAME, state_dir=str(STATE_DIR), rootfs=str(rootfs.path),
        bridges=[labhosts.Bridge(BRIDGE, None, f"{SUBNET}.1/24")], hosts=hosts,
    )


def _inventory(p: labhosts.Plan, archive: Path) -> dict:
    ssh_args = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"
    return {
        "all": {
            "vars": {
                "ansible_user": "root",
                "ansible_ssh_private_key_file": str(p.key_file),
                "ansible_ssh_common_args": ssh_args,
                "ansible_python_interpreter": "/usr/bin/python3",
                "pbs_server_name": "head",
                "pbs_archive": str(archive),
            },
            "children": {
                "head": {"hosts": {"head": {"ansible_host": p.hosts[0].ip}}},
                "moms": {"hosts": {h.name: {"ansible_host": h.ip} for h in p.hosts[1:]}},
            },
        }
    }


PLAYBOOK = f"""
- name: PBS server and a MoM on the head
  hosts: head
  gather_facts: false
  roles:
    - role: pbs
      vars: {{pbs_role: server, pbs_server_mom: true, pbs_nodes: [node1]}}
- name: MoMs (node1, and vm1 that no server knows yet)
  hosts: moms
  gather_facts: false
  roles:
    - role: pbs
      vars: {{pbs_role: mom}}
- name: The account jobs run as
  hosts: all
  gather_facts: false
  tasks:
    - name: Account {USER}
      ansible.builtin.user: {{name: {USER}, uid: {UID}, create_home: true, shell: /bin/bash}}
"""


def start(log: Path) -> PbsDomain:
    """Boot the hosts and apply the pbs role; on any failure take everything down again."""
    build, _ = ensure_build(log=lambda m: print(m, file=sys.stderr))
    old = labhosts.Plan.load(STATE_DIR)
    if old is not None:
        labhosts.destroy(old)  # a run killed half way left it
    p = plan()
    try:
        labhosts.create(p)
        domain = PbsDomain(p)
        for host in HOSTS:
            # Every name is in /etc/hosts, and the name server the hosts inherit (nspawn binds
            # this machine's resolv.conf) is out of their reach: without one, a lookup PBS's
            # start-up makes (an IPv6 address of the host's name) fails at once instead of
            # after a 10 s time-out, several times.
            domain.run("sh", "-c", "if mountpoint -q /etc/resolv.conf; then umount /etc/resolv.conf; fi"
                       f" && echo '{RESOLV_CONF}' > /etc/resolv.conf", host=host)
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        (STATE_DIR / "inventory.json").write_text(json.dumps(_inventory(p, build.archive)))
        (STATE_DIR / "site.yml").write_text(PLAYBOOK)
        venv_bin = Path(sys.executable).parent
        env = {
            "PATH": f"{venv_bin}:/usr/sbin:/usr/bin:/sbin:/bin",
            "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
            "ANSIBLE_ROLES_PATH": str(REPO / "roles"),
            "ANSIBLE_HOST_KEY_CHECKING": "False",
            "ANSIBLE_SSH_ARGS": "-o ControlMaster=no",  # no SSH master outlives the run
            "ANSIBLE_FORCE_COLOR": "0",
            "HOME": str(STATE_DIR),
        }
        if "ANSIBLE_LOG_PATH" in os.environ:  # a timed log of the role's run, when asked for
            env["ANSIBLE_LOG_PATH"] = os.environ["ANSIBLE_LOG_PATH"]
        with open(log, "w") as out:
            proc = subprocess.run(
                [str(venv_bin / "ansible-playbook"),
                 "-i", str(STATE_DIR / "inventory.json"), str(STATE_DIR / "site.yml")],
                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=1200,
                check=False,
            )
        if proc.returncode != 0:
            raise RuntimeError(f"the pbs role failed on the test hosts; see {log}:\n"
                               + log.read_text(errors="replace")[-4000:])
        return domain
    except BaseException:
        labhosts.destroy(p)
        raise


def stop(domain: PbsDomain) -> list[str]:
    labhosts.destroy(domain.plan)
    return labhosts.leftovers(domain.plan)
