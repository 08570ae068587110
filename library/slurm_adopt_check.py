#!/usr/bin/python
# -*- coding: utf-8 -*-
# Apache-2.0
"""Read a running Slurm's configuration into facts and say what it lacks for borrowing."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: slurm_adopt_check
short_description: What an existing Slurm cluster lacks for borrowing, one line per gap
description:
  - Runs on the cluster's controller. Reads C(scontrol show config), C(scontrol show partition),
    C(scontrol show node), C(slurmctld -V), the site's slurm.conf and the files it includes, and
    says which settings borrowing needs are missing or differ, each gap in one line with its fix.
  - Optionally checks the munge key and munged on this host, and asks an NFS server
    (C(showmount -e)) whether it exports the shared directory to the virtual subnet.
  - Computes the content of VioCluster's include file (C(viocluster.conf) beside slurm.conf),
    which slurm.conf includes with one marked line; the lines it already holds plus what the
    gaps add. Lines that take effect only at a restart of slurmctld are added only with
    O(restart_allowed).
  - Changes nothing; runs the same in check mode.
version_added: "1.0.0"
options:
  controller_name:
    description: The controller's inventory name (borrowed VMs reach the controller by it).
    type: str
    required: true
  virtual_subnet:
    description: The domain's virtual subnet, where borrowed VMs are.
    type: str
    required: true
  partition:
    description: Partition of borrowed nodes.
    type: str
    default: borrowed
  feature:
    description: Feature borrowed VMs register with.
    type: str
    default: borrowed
  nodeset:
    description: NodeSet of the borrowed partition, when VioCluster makes it.
    type: str
    default: viocluster_borrowed
  partition_tier:
    description: PriorityTier of the borrowed partition VioCluster makes.
    type: int
    default: 1
  max_borrowed:
    description: Dynamic nodes to make room for (MaxNodeCount, TreeWidth).
    type: int
    default: 16
  cred_expire:
    description: Highest AuthInfo cred_expire (seconds) without a note.
    type: int
    default: 10
  fence_s:
    description: The borrowed VMs' fence window (seconds); SlurmdTimeout must outlast it.
    type: int
    default: 10
  restart_allowed:
    description: Lines that need a restart of slurmctld go into the include file.
    type: bool
    default: false
  image_version:
    description: Slurm version of the borrowed VMs' slurmd (the node image); empty when unknown.
    type: str
    default: ""
  image_source:
    description: Where O(image_version) comes from, for the message.
    type: str
    default: node image
  slurm_conf:
    description: The site's slurm.conf; empty takes C(SLURM_CONF) from C(scontrol show config).
    type: str
    default: ""
  munge_key:
    description: The site's munge key on this host; empty skips the munge check.
    type: str
    default: ""
  nfs_server:
    description:
      - NFS server of the shared directory (a name or address this host reaches); empty skips.
    type: str
    default: ""
  nfs_path:
    description: Exported path on O(nfs_server).
    type: str
    default: /home
  nfs_vm_address:
    description:
      - The address borrowed VMs mount the shared directory from, in O(virtual_subnet).
    type: str
    default: ""
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
author: VioCluster
"""

EXAMPLES = r"""
- name: What the site's Slurm lacks for borrowing
  slurm_adopt_check:
    controller_name: "{{ inventory_hostname }}"
    virtual_subnet: 10.210.5.0/24
    munge_key: /etc/munge/munge.key
    nfs_server: north-ctl
    nfs_path: /home
  register: adopt_site
"""

RETURN = r"""
version:
  description: The site's Slurm version (slurmctld -V).
  type: str
  returned: always
  sample: 22.05.8
slurm_conf:
  description: The site's slurm.conf.
  type: str
  returned: always
include_path:
  description: VioCluster's include file, beside slurm.conf.
  type: str
  returned: always
include_line:
  description: The marked line slurm.conf includes it with.
  type: str
  returned: always
include_content:
  description: What the include file must hold.
  type: str
  returned: always
include_present:
  description: slurm.conf holds the marked line already.
  type: bool
  returned: always
include_needed:
  description: The include file has settings to hold (or exists already).
  type: bool
  returned: always
gaps:
  description: Each gap (what, have, fix, how, line, blocking, text).
  type: list
  elements: dict
  returned: always
gap_lines:
  description: Each gap in one line.
  type: list
  elements: str
  returned: always
left:
  description: Blocking gaps site.yml does not close (the site's settings, a restart not allowed).
  type: list
  elements: str
  returned: always
apply:
  description: What applies the include file once written (restart, reconfigure or none).
  type: str
  returned: always
config:
  description: The running configuration, key to value.
  type: dict
  returned: always
partitions:
  description: The partitions' names.
  type: list
  elements: str
  returned: always
"""

import glob
import ipaddress
import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.viocluster_adopt import (
    INCLUDE_NAME, MARK, AdoptError, Gap, SiteConf, Want, export_gap, include_lines, include_text,
    keep_lines, parse_records, parse_show_config, parse_slurm_conf, parse_version, slurm_gaps,
    version_gap)


def run(module: AnsibleModule, argv: list[str], what: str) -> str:
    try:
        rc, out, err = module.run_command(argv)
    except OSError as exc:
        module.fail_json(msg=f"{what}: {exc}")
    if rc != 0:
        module.fail_json(msg=f"{what} failed (`{' '.join(argv)}`, exit {rc}): "
                             f"{(err or out).strip()[-300:]}; is this the cluster's controller "
                             "and slurmctld running?")
    return out


def read_site(path: str) -> tuple[SiteConf, str]:
    """The keys of slurm.conf and every file it includes (VioCluster's own left out)."""
    conf = SiteConf()
    base = os.path.dirname(path)
    todo, seen = [path], set()
    text = ""
    while todo:
        name = todo.pop(0)
        if name in seen:
            continue
        seen.add(name)
        with open(name, encoding="utf-8", errors="replace") as f:
            body = f.read()
        if name == path:
            text = body
        before = len(conf.includes)
        parse_slurm_conf(body, name, conf)
        for inc in conf.includes[before:]:
            full = inc if os.path.isabs(inc) else os.path.join(base, inc)
            if os.path.basename(full) == INCLUDE_NAME and os.path.dirname(full) == base:
                continue
            todo.extend(sorted(glob.glob(full)))
    return conf, text


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            controller_name=dict(type="str", required=True),
            virtual_subnet=dict(type="str", required=True),
            partition=dict(type="str", default="borrowed"),
            feature=dict(type="str", default="borrowed"),
            nodeset=dict(type="str", default="viocluster_borrowed"),
            partition_tier=dict(type="int", default=1),
            max_borrowed=dict(type="int", default=16),
            cred_expire=dict(type="int", default=10),
            fence_s=dict(type="int", default=10),
            restart_allowed=dict(type="bool", default=False),
            image_version=dict(type="str", default=""),
            image_source=dict(type="str", default="node image"),
            slurm_conf=dict(type="str", default=""),
            munge_key=dict(type="str", default=""),
            nfs_server=dict(type="str", default=""),
            nfs_path=dict(type="str", default="/home"),
            nfs_vm_address=dict(type="str", default=""),
        ),
        supports_check_mode=True,
    )
    p = module.params
    if module.get_bin_path("scontrol") is None:
        module.fail_json(msg="scontrol is not installed here: run the check on the cluster's "
                             "controller (viocluster_head_node)")
    want = Want(controller_name=p["controller_name"], virtual_subnet=p["virtual_subnet"],
                partition=p["partition"], feature=p["feature"], nodeset=p["nodeset"],
                partition_tier=p["partition_tier"], max_borrowed=p["max_borrowed"],
                cred_expire=p["cred_expire"], fence_s=p["fence_s"])
    try:
        config = parse_show_config(run(module, ["scontrol", "show", "config"],
                                       "reading the configuration"))
        partitions = parse_records(run(module, ["scontrol", "show", "partition", "-o"],
                                       "reading the partitions"))
        nodes = parse_records(run(module, ["scontrol", "show", "node", "-o"], "reading the nodes"))
        ctld = module.get_bin_path("slurmctld")
        version = parse_version(run(module, [ctld, "-V"], "reading slurmctld's version") if ctld
                                else config.get("SLURM_VERSION", ""))
        path = p["slurm_conf"] or config.get("SLURM_CONF", "")
        if not path or not os.path.isfile(path):
            module.fail_json(msg=f"the site's slurm.conf ({path or 'SLURM_CONF unset'}) is not a "
                                 "file here: set viocluster_adopt_slurm_conf to its path")
        site, site_text = read_site(path)
        include_path = os.path.join(os.path.dirname(path), INCLUDE_NAME)
        current = ""
        if os.path.isfile(include_path):
            with open(include_path, encoding="utf-8", errors="replace") as f:
                current = f.read()

        gaps = slurm_gaps(config, partitions, nodes, site, want)
        vgap = version_gap(version, parse_version(p["image_version"]) if p["image_version"] else "",
                           p["image_source"])
        if vgap:
            gaps.append(vgap)
    except AdoptError as exc:
        module.fail_json(msg=str(exc))
    except OSError as exc:
        module.fail_json(msg=f"cannot read the site's configuration: {exc}")

    if p["munge_key"]:
        gaps.extend(munge_gaps(module, p["munge_key"]))
    if p["nfs_server"]:
        if module.get_bin_path("showmount"):
            rc, out, err = module.run_command(["showmount", "-e", "--no-headers", p["nfs_server"]])
        else:
            rc, out, err = 127, "", "showmount is not installed (nfs-common)"
        gap = export_gap(p["nfs_server"], p["nfs_path"], out, p["virtual_subnet"],
                         "" if rc == 0 else (err or out or f"exit {rc}"))
        if gap:
            gaps.append(gap)
    if p["nfs_vm_address"] and not address_in(p["nfs_vm_address"], p["virtual_subnet"]):
        gaps.append(Gap("shared filesystem",
                        f"borrowed VMs would mount it from {p['nfs_vm_address']}, outside the "
                        f"virtual subnet {p['virtual_subnet']} they are on",
                        "serve it from a host of the domain (a head or compute node of the "
                        "inventory, which gets a virtual address) and name that host in "
                        "viocluster_adopt_shared_fs", "site"))

    # Kept: the lines the include file holds already, unless the site now sets the key itself.
    restart = p["restart_allowed"]
    keep = keep_lines(include_lines(current), site, gaps, restart)
    content = include_text(gaps, restart, keep)
    written = [g for g in gaps if g.how == "reconfigure" or (g.how == "restart" and restart)]
    line = f"Include {INCLUDE_NAME}  {MARK}"
    present = MARK in site_text
    if any(g.how == "restart" for g in written):
        apply = "restart"
    elif written or content != current or not present:
        apply = "reconfigure"
    else:
        apply = "none"
    left = [g.text(restart) for g in gaps if g.blocking and g not in written]
    module.exit_json(
        changed=False, version=version, slurm_conf=path, include_path=include_path,
        include_line=line, include_content=content, include_present=present,
        include_needed=bool(include_lines(content)) or bool(current) or present,
        gaps=[g.as_dict(restart) for g in gaps], gap_lines=[g.text(restart) for g in gaps],
        left=left, apply=apply, config=config,
        partitions=[part.get("PartitionName", "") for part in partitions],
    )


def address_in(address: str, subnet: str) -> bool:
    try:
        return ipaddress.ip_address(address) in ipaddress.ip_network(subnet, strict=False)
    except ValueError:
        return False


def munge_gaps(module: AnsibleModule, key: str) -> list[Gap]:
    if not os.path.isfile(key):
        return [Gap("munge key", f"no file {key} on the controller",
                    "set viocluster_adopt_munge_key to the site's munge key (borrowed VMs "
                    "authenticate with it)", "site")]
    if module.get_bin_path("munge") is None or module.get_bin_path("unmunge") is None:
        return [Gap("munged", "munge/unmunge are not installed on the controller",
                    "install munge on the controller", "site")]
    rc, out, err = module.run_command("munge -n | unmunge", use_unsafe_shell=True)
    if rc != 0:
        why = (err or out).strip()[:120]
        return [Gap("munged", f"a credential does not decode on the controller ({why})",
                    "start munged with the site's key on the controller", "site")]
    return []


if __name__ == "__main__":
    main()
