#!/usr/bin/python
# Apache-2.0
"""Ansible module: a persistent TAP device owned by an unprivileged user, with MTU, GSO limit,
addresses and routes, checked against the running state (``ip -j``) before anything changes."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: violin_tap
short_description: A persistent TAP device for a VIOLIN switch daemon
description:
  - Creates (or removes) a persistent TAP device owned by an unprivileged user, so that the
    user's switch daemon can attach to it without privilege; sets its MTU, its GSO limit
    (C(gso_max_size), so that a TSO super-frame fits one UDP datagram), its addresses and
    routes, and brings it up.
  - Reads the current state with C(ip -j) and changes only what differs. A TAP owned by another
    user, or without virtio-net headers, is re-created.
version_added: "0.1.0"
options:
  name:
    description: Interface name (at most 15 characters).
    type: str
    required: true
  state:
    description: C(present) or C(absent).
    type: str
    choices: [present, absent]
    default: present
  user:
    description: Owner of the TAP (user name or uid); the daemon runs as this user.
    type: str
  mtu:
    description: MTU of the TAP (the virtual domain's MTU).
    type: int
    default: 1500
  gso_max_size:
    description:
      - Largest GSO super-frame the kernel hands to the daemon. Keep it at or below 65397 so a
        super-frame plus the daemon's headers fits a UDP datagram.
    type: int
    default: 65000
  vnet_hdr:
    description: Open with virtio-net headers (needed for offloads).
    type: bool
    default: true
  addresses:
    description: Addresses in CIDR form (the host's address in its domain's subnet). Others are removed.
    type: list
    elements: str
    default: []
  routes:
    description: Extra destination networks (CIDR) routed through the TAP.
    type: list
    elements: str
    default: []
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
author:
  - VioCluster
"""

EXAMPLES = r"""
- name: TAP of domain a for the violin account
  violin_tap:
    name: vio-a
    user: violin
    mtu: 1500
    addresses: [10.210.1.11/24]

- name: Remove it
  violin_tap:
    name: vio-a
    state: absent
"""

RETURN = r"""
tap:
  description: The TAP's state after the run (before it, in check mode, with the planned changes applied).
  returned: always
  type: dict
  sample: {name: vio-a, user: violin, mtu: 1500, gso_max_size: 65000, vnet_hdr: true, up: true,
           addresses: [10.210.1.11/24], routes: []}
commands:
  description: The ip commands run (or that would run in check mode).
  returned: always
  type: list
  elements: str
"""

import ipaddress
import json
import pwd

from ansible.module_utils.basic import AnsibleModule


def ip_json(module, *args):
    rc, out, err = module.run_command(["ip", "-j", *args])
    if rc != 0:
        return None
    try:
        return json.loads(out or "[]")
    except ValueError:
        module.fail_json(msg=f"cannot parse the output of ip -j {' '.join(args)}")


def current(module, name):
    links = ip_json(module, "-d", "link", "show", "dev", name)
    if not links:
        return None
    link = links[0]
    info = link.get("linkinfo", {})
    data = info.get("info_data", {})
    addrs = ip_json(module, "addr", "show", "dev", name) or [{}]
    routes = ip_json(module, "route", "show", "dev", name, "proto", "static") or []
    return {
        "name": name,
        "kind": info.get("info_kind"),
        "type": data.get("type"),
        "user": str(data.get("user", "")),
        "vnet_hdr": bool(data.get("vnet_hdr", False)),
        "mtu": link.get("mtu"),
        "gso_max_size": link.get("gso_max_size"),
        "up": "UP" in link.get("flags", []),
        "addresses": sorted(f"{a['local']}/{a['prefixlen']}" for a in addrs[0].get("addr_info", [])
                            if a.get("family") == "inet"),
        "routes": sorted(r["dst"] for r in routes if r.get("dst") and r["dst"] != "default"),
    }


def user_matches(want, have):
    if want is None or have == want:
        return True
    try:
        if want.isdigit():
            return have == pwd.getpwuid(int(want)).pw_name
        return have == str(pwd.getpwnam(want).pw_uid)
    except KeyError:
        return False


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", required=True),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            user=dict(type="str"),
            mtu=dict(type="int", default=1500),
            gso_max_size=dict(type="int", default=65000),
            vnet_hdr=dict(type="bool", default=True),
            addresses=dict(type="list", elements="str", default=[]),
            routes=dict(type="list", elements="str", default=[]),
        ),
        required_if=[("state", "present", ["user"])],
        supports_check_mode=True,
    )
    p = module.params
    name = p["name"]
    if len(name) > 15:
        module.fail_json(msg=f"TAP name {name} is longer than 15 characters")
    if not 68 <= p["mtu"] <= 65521:
        module.fail_json(msg=f"mtu {p['mtu']} is out of range 68-65521")
    if not 1500 <= p["gso_max_size"] <= 65536:
        module.fail_json(msg=f"gso_max_size {p['gso_max_size']} is out of range 1500-65536")
    try:
        addresses = sorted(str(ipaddress.IPv4Interface(a)) for a in p["addresses"])
        routes = sorted(str(ipaddress.IPv4Network(r, strict=False)) for r in p["routes"])
    except ValueError as err:
        module.fail_json(msg=f"bad address or route: {err}; write them as 10.210.1.11/24")
    if p["user"] is not None and not p["user"].isdigit():
        try:
            pwd.getpwnam(p["user"])
        except KeyError:
            if not module.check_mode:
                module.fail_json(msg=f"user {p['user']} does not exist; create the daemon's account first")
            # A dry run before the account exists: a TAP would be made (or remade) for it.
            module.warn(f"user {p['user']} does not exist yet; a real run needs it")

    before = current(module, name)
    commands = []
    if p["state"] == "absent":
        if before is not None:
            commands.append(["ip", "link", "del", "dev", name])
        after = None
    else:
        recreate = before is not None and (
            before["kind"] != "tun" or before["type"] != "tap" or before["vnet_hdr"] != p["vnet_hdr"]
            or not user_matches(p["user"], before["user"]))
        if before is not None and before["kind"] != "tun":
            module.fail_json(msg=f"{name} exists and is not a TAP ({before['kind']}); remove it or "
                                 "choose another name")
        state = before if before is not None and not recreate else None
        if recreate:
            commands.append(["ip", "link", "del", "dev", name])
        if state is None:
            add = ["ip", "tuntap", "add", "dev", name, "mode", "tap", "user", p["user"]]
            if p["vnet_hdr"]:
                add.append("vnet_hdr")
            commands.append(add)
            state = {"mtu": None, "gso_max_size": None, "up": False, "addresses": [], "routes": []}
        if state["mtu"] != p["mtu"]:
            commands.append(["ip", "link", "set", "dev", name, "mtu", str(p["mtu"])])
        if state["gso_max_size"] != p["gso_max_size"]:
            commands.append(["ip", "link", "set", "dev", name, "gso_max_size", str(p["gso_max_size"])])
        if not state["up"]:
            commands.append(["ip", "link", "set", "dev", name, "up"])
        for addr in sorted(set(state["addresses"]) - set(addresses)):
            commands.append(["ip", "addr", "del", addr, "dev", name])
        for addr in sorted(set(addresses) - set(state["addresses"])):
            commands.append(["ip", "addr", "add", addr, "dev", name])
        for route in sorted(set(state["routes"]) - set(routes)):
            commands.append(["ip", "route", "del", route, "dev", name, "proto", "static"])
        for route in sorted(set(routes) - set(state["routes"])):
            commands.append(["ip", "route", "replace", route, "dev", name, "proto", "static"])
        after = {"name": name, "kind": "tun", "type": "tap", "user": p["user"], "vnet_hdr": p["vnet_hdr"],
                 "mtu": p["mtu"], "gso_max_size": p["gso_max_size"], "up": True,
                 "addresses": addresses, "routes": routes}

    if commands and not module.check_mode:
        for cmd in commands:
            rc, _, err = module.run_command(cmd)
            if rc != 0:
                module.fail_json(msg=f"{' '.join(cmd)} failed: {err.strip()}", commands=[" ".join(c) for c in commands])
        if p["state"] == "present":
            after = current(module, name)
    result = {
        "changed": bool(commands),
        "commands": [" ".join(c) for c in commands],
        "tap": after or {},
    }
    if module._diff:
        result["diff"] = {"before": json.dumps(before, indent=2, sort_keys=True) + "\n" if before else "",
                          "after": json.dumps(after, indent=2, sort_keys=True) + "\n" if after else ""}
    module.exit_json(**result)


if __name__ == "__main__":
    main()
