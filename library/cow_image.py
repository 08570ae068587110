#!/usr/bin/python
# -*- coding: utf-8 -*-
# Apache-2.0
"""Ansible module: a copy-on-write overlay (UML COW or qcow2) on a read-only base image."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: cow_image
short_description: Create or remove a copy-on-write overlay on a VM base image
description:
  - Creates a sparse UML COW file (format C(uml)) or a qcow2 overlay (format C(qcow2)) on a
    read-only base image, or removes one.
  - A UML COW header pins the base image's path, size and modification time; a qcow2 overlay
    pins its path and size, and this module keeps the base's mtime in C(PATH.base) beside it.
    An existing overlay whose base moved or changed is an error unless O(recreate=true), as the
    overlay's blocks would be applied to the wrong base.
  - The overlay is owned by O(owner) with mode 0600 (the peer account that runs the VM).
version_added: "0.1.0"
author: VioCluster authors
options:
  path:
    description: Path of the overlay file.
    type: path
    required: true
  base_image:
    description:
      - The read-only base image (raw ext4). Required for O(state=present).
      - Give the same path the VM will use; UML opens the base by this path.
    type: path
  format:
    description: C(uml) for User Mode Linux (ubd0=COW,BASE), C(qcow2) for QEMU.
    type: str
    choices: [uml, qcow2]
    default: uml
  state:
    description: C(present) creates the overlay when missing; C(absent) removes it.
    type: str
    choices: [present, absent]
    default: present
  owner:
    description:
      - Account that owns the overlay. Default is the account running the module.
      - Only root can give another account's name.
    type: str
  recreate:
    description:
      - Replace an existing overlay whose base changed (its writes are lost) instead of failing.
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    description: Works out whether the overlay would be created, replaced or removed.
  diff_mode:
    support: full
    description: Shows the overlay's backing file, size and mtime before and after.
notes:
  - Creating a UML COW here or letting UML create it at first boot gives the same file.
"""

EXAMPLES = r"""
- name: A COW for a borrowed node, on the pre-distributed base
  cow_image:
    path: /home/vcpeer-a/vms/node1.cow
    base_image: /var/lib/viocluster/images/node.img
    owner: vcpeer-a

- name: A qcow2 overlay for QEMU
  cow_image:
    path: /home/vcpeer-a/vms/node1.qcow2
    base_image: /var/lib/viocluster/images/node.img
    format: qcow2

- name: Drop the COW after a reclaim (it is disposable)
  cow_image:
    path: /home/vcpeer-a/vms/node1.cow
    state: absent
"""

RETURN = r"""
path:
  description: The overlay's path.
  returned: always
  type: str
backing:
  description: What the overlay pins about its base (absent when there is no overlay).
  returned: always
  type: dict
  sample: {"backing_file": "/var/lib/viocluster/images/node.img", "size": 1073741824,
           "mtime": 1700000000, "fmt": "uml"}
allocated_bytes:
  description: Bytes the overlay really occupies on disk (it is sparse).
  returned: always
  type: int
  sample: 12288
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.viocluster_vm import (
    Account,
    VMError,
    allocated_bytes,
    backing_problem,
    create_qcow2,
    read_backing,
    use_module,
    write_uml_cow,
)


def describe(path: str, fmt: str) -> dict:
    if not os.path.exists(path):
        return {}
    info = read_backing(path, fmt)
    return {"fmt": info.fmt, "backing_file": info.backing_file, "size": info.size,
            "mtime": info.mtime}


def run(module: AnsibleModule) -> dict:
    p = module.params
    path, fmt, base = p["path"], p["format"], p["base_image"]
    account = Account.lookup(p["owner"])
    if p["owner"] and os.geteuid() != 0 and account.uid != os.geteuid():
        raise VMError(f"only root can create an overlay for {account.name}; run as that account")
    before = describe(path, fmt) if p["state"] == "present" or os.path.exists(path) else {}
    if p["state"] == "absent":
        if os.path.exists(path) and not module.check_mode:
            os.unlink(path)
            if os.path.exists(path + ".base"):
                os.unlink(path + ".base")
        return {"changed": bool(before) or os.path.exists(path), "path": path, "backing": {},
                "allocated_bytes": 0, "diff": {"before": before, "after": {}}}

    if not base:
        raise VMError("base_image is required with state=present")
    if not os.path.isfile(base):
        raise VMError(f"base image {base} is missing: the cow_base_image role copies it to "
                      f"every lending host")
    if not os.access(base, os.R_OK):
        raise VMError(f"base image {base} is not readable")
    changed = False
    if before:
        problem = backing_problem(read_backing(path, fmt), base)
        if problem and not p["recreate"]:
            raise VMError(f"overlay {path} does not fit base {base}: {problem}. Remove the "
                          f"overlay (it is disposable) or pass recreate=true")
        changed = bool(problem)
    else:
        parent = os.path.dirname(path) or "."
        if not os.path.isdir(parent):
            raise VMError(f"directory {parent} for the overlay does not exist")
        changed = True
    if changed and not module.check_mode:
        if os.path.exists(path):
            os.unlink(path)
        if fmt == "uml":
            write_uml_cow(path, base)
        else:
            create_qcow2(path, base)
        os.chmod(path, 0o600)
        if os.geteuid() == 0:
            os.chown(path, account.uid, account.gid)
            if os.path.exists(path + ".base"):
                os.chown(path + ".base", account.uid, account.gid)
    if changed and module.check_mode:
        st = os.stat(base)
        after = {"fmt": fmt, "backing_file": base, "size": st.st_size,
                 "mtime": int(st.st_mtime)}
    else:
        after = describe(path, fmt)
    return {"changed": changed, "path": path, "backing": after,
            "allocated_bytes": allocated_bytes(path), "diff": {"before": before, "after": after}}


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "base_image": {"type": "path"},
            "format": {"type": "str", "choices": ["uml", "qcow2"], "default": "uml"},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            "owner": {"type": "str"},
            "recreate": {"type": "bool", "default": False},
        },
        required_if=[("state", "present", ["base_image"])],
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
