"""Opening the TAP (python-pytun) with virtio-net headers and TSO offloads.

The device is pre-created by root for the daemon's user (``ip tuntap add dev X mode tap user U
vnet_hdr``, MTU, address, ``gso_max_size``); the daemon only attaches to it, which needs no
privilege.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytun

from .codec import HEADER_LEN, MAX_DATAGRAM, TAG_LEN
from .errors import TapError
from .frames import VNET_HDR_LEN

log = logging.getLogger("violin.tap")
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 = 0x01, 0x02, 0x04
# the largest GSO frame whose datagram still fits one UDP payload
GSO_LIMIT = MAX_DATAGRAM - HEADER_LEN - TAG_LEN - VNET_HDR_LEN - 64


@dataclass
class Tap:
    device: pytun.TunTapDevice
    fd: int
    name: str
    mtu: int
    tso: bool

    def close(self) -> None:
        self.device.close()


def _sysfs(name: str, attr: str) -> int | None:
    try:
        return int(Path(f"/sys/class/net/{name}/{attr}").read_text())
    except (OSError, ValueError):
        return None


def gso_max_size(name: str) -> int | None:
    """The device's GSO limit (netlink only, so through ``ip -j -d link``; no privilege needed)."""
    try:
        out = subprocess.run(["ip", "-j", "-d", "link", "show", "dev", name], capture_output=True,
                             text=True, timeout=10, check=True).stdout
        info = json.loads(out)[0]
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None
    sizes = [info[k] for k in ("gso_max_size", "gso_ipv4_max_size") if isinstance(info.get(k), int)]
    return min(sizes) if sizes else None


def open_tap(name: str, offload: bool = True) -> Tap:
    try:
        device = pytun.TunTapDevice(name=name, flags=pytun.IFF_TAP | pytun.IFF_NO_PI | pytun.IFF_VNET_HDR)
    except pytun.Error as err:
        raise TapError(
            f"cannot open TAP {name} as uid {os.getuid()}: {err}. Create it for this user first, as "
            f"root: ip tuntap add dev {name} mode tap user {os.getuid()} vnet_hdr "
            f"(the violin_tap role does this)") from None
    fd = device.fileno()
    fcntl.ioctl(fd, TUNSETVNETHDRSZ, VNET_HDR_LEN.to_bytes(4, "little"))
    gso_max = gso_max_size(name)
    tso = offload
    if offload and (gso_max is None or gso_max > GSO_LIMIT):
        log.warning("TAP %s has gso_max_size %s, more than a UDP datagram can carry (%d); TSO "
                    "offload is off. Set it as root: ip link set %s gso_max_size 65000",
                    name, gso_max, GSO_LIMIT, name)
        tso = False
    flags = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 if tso else 0
    try:
        fcntl.ioctl(fd, TUNSETOFFLOAD, flags)
    except OSError as err:
        device.close()
        raise TapError(f"TAP {name}: cannot set offloads 0x{flags:x}: {err.strerror}") from None
    mtu = _sysfs(name, "mtu") or 1500
    log.info("TAP %s open: mtu %d, gso_max_size %s, TSO %s", name, mtu, gso_max, "on" if tso else "off")
    return Tap(device, fd, name, mtu, tso)
