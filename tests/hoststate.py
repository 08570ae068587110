"""What the tests must leave as they found it on this machine: /dev/net/tun, sysctls, /etc.

Tests build namespaces, TAPs, accounts, VMs and nspawn hosts, and remove them again; none may
leave the machine changed (a fresh machine has none of an earlier run's changes, so a test
that changed it would hide a missing set-up step). :func:`snapshot` reads the state;
:func:`differences` names what changed between two snapshots.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

#: Files that change on their own or as a side effect of adding and removing an account again
#: (shadow's backup copies), not as a change of configuration.
_ETC_IGNORED = {"passwd-", "group-", "shadow-", "gshadow-", "subuid-", "subgid-", "mtab",
                "ld.so.cache", "adjtime"}
#: Sysctls that move by themselves (counters, random values, clocks).
_SYSCTL_IGNORED = ("kernel/random/", "kernel/ns_last_pid", "fs/dentry-state", "fs/file-nr",
                   "fs/inode-", "kernel/pty/nr", "net/netfilter/nf_conntrack_count",
                   "fs/quota/", "kernel/tainted", "kernel/sched_domain", "vm/stat_refresh",
                   "net/ipv4/route/flush", "net/ipv6/route/flush", "fs/binfmt_misc",
                   "kernel/keys/", "kernel/perf_event_max_sample_rate", "fs/aio-nr",
                   "user/", "net/core/netdev_rss_key", "kernel/osrelease")
_SYSCTL_ROOTS = ("net/core", "net/ipv4", "net/ipv6/conf/all", "net/ipv6/conf/default",
                 "net/bridge", "kernel", "vm", "fs")


def _file_digest(path: Path) -> str:
    try:
        st = path.lstat()
    except OSError:
        return "gone"
    if stat.S_ISLNK(st.st_mode):
        return "link:" + os.readlink(path)
    meta = f"{stat.S_IMODE(st.st_mode):o}:{st.st_uid}:{st.st_gid}"
    if stat.S_ISDIR(st.st_mode):
        return "dir:" + meta
    try:
        return meta + ":" + hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return meta + ":unreadable"


def _etc(root: Path = Path("/etc")) -> dict[str, str]:
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            if name in _ETC_IGNORED:
                continue
            path = Path(dirpath) / name
            out[str(path)] = _file_digest(path)
    return out


def _per_device(key: str) -> bool:
    """net/ipv4/conf/DEV/..., net/ipv4/neigh/DEV/...: they come and go with their devices (and
    a device left over is a leftover, not a changed setting); all and default stay."""
    parts = key.split("/")
    return (len(parts) > 3 and parts[0] == "net" and parts[2] in ("conf", "neigh")
            and parts[3] not in ("all", "default"))


def _sysctls() -> dict[str, str]:
    out: dict[str, str] = {}
    base = Path("/proc/sys")
    for root in _SYSCTL_ROOTS:
        for dirpath, _dirs, filenames in os.walk(base / root):
            for name in filenames:
                path = Path(dirpath) / name
                key = str(path.relative_to(base))
                if key.startswith(_SYSCTL_IGNORED) or _per_device(key) \
                        or not os.access(path, os.R_OK):
                    continue
                try:
                    out[key] = path.read_text().strip()
                except OSError:
                    continue
    return out


def _dev() -> dict[str, str]:
    out = {}
    for name in ("/dev/net/tun", "/dev/kvm", "/dev/fuse"):
        try:
            st = os.stat(name)
        except OSError:
            out[name] = "absent"
            continue
        out[name] = f"{stat.S_IMODE(st.st_mode):o}:{st.st_uid}:{st.st_gid}"
    return out


def snapshot_dev() -> dict[str, dict[str, str]]:
    return {"dev": _dev()}


def snapshot() -> dict[str, dict[str, str]]:
    return {"dev": _dev(), "sysctl": _sysctls(), "etc": _etc()}


def differences(before: dict[str, dict[str, str]], after: dict[str, dict[str, str]],
                limit: int = 12) -> list[str]:
    found: list[str] = []
    for part in ("dev", "sysctl", "etc"):
        b, a = before.get(part, {}), after.get(part, {})
        for key in sorted(set(b) | set(a)):
            if b.get(key) != a.get(key):
                found.append(f"{part} {key}: {b.get(key, 'absent')} -> {a.get(key, 'absent')}")
    return found[:limit] + ([f"... and {len(found) - limit} more"] if len(found) > limit else [])
