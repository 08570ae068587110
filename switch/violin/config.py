"""The daemon's configuration file (YAML, rendered by Ansible) and its validation.

Every mistake becomes a ConfigError naming the file, the key and what to write instead; nothing
is started from a configuration that does not validate.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import stat
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from .codec import CIPHERS
from .errors import ConfigError, KeyFileError
from .peers import Peer, check_peer

DEFAULT_PORT = 5300
TAP_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
KEYS = {
    "network", "network_id", "key_file", "cipher", "tap", "listen", "port", "sender_id", "offload",
    "socket_buffer", "fdb_ageing", "fdb_max_entries", "control_socket", "metrics", "peers",
    "log_level", "datapath",
}
DATAPATHS = ("c", "python")
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class Config:
    network: str
    network_id: int
    key_file: Path
    tap: str
    listen: str
    port: int = DEFAULT_PORT
    cipher: str = "aes-256-gcm"
    sender_id: int | None = None
    offload: bool = True
    socket_buffer: int = 4 << 20
    fdb_ageing: float = 300.0
    fdb_max_entries: int = 8192
    control_socket: Path | None = None
    metrics: tuple[str, int] | None = None
    peers: tuple[tuple[str, str, int], ...] = field(default_factory=tuple)
    log_level: str = "info"
    datapath: str = "c"
    source: str = "<flags>"

    def effective_sender_id(self) -> int:
        """Sender id in every datagram's nonce; unique per daemon of a network. Defaults to a hash
        of this daemon's listen address and port (distinct peers have distinct addresses)."""
        if self.sender_id is not None:
            return self.sender_id
        digest = hashlib.sha256(f"{self.listen}:{self.port}".encode()).digest()
        return int.from_bytes(digest[:4], "big") or 1

    def peer_objects(self) -> list[Peer]:
        return [Peer(name, address, port, "config") for name, address, port in self.peers]

    def secret(self) -> bytes:
        return read_key_file(self.key_file)


def _fail(source: str, key: str, message: str) -> ConfigError:
    return ConfigError(f"{source}: {key}: {message}")


def _int(source: str, data: dict, key: str, default: Any, lo: int, hi: int) -> Any:
    value = data.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _fail(source, key, f"must be an integer from {lo} to {hi}, got {value!r}")
    return value


def parse_endpoint(text: str, what: str) -> tuple[str, int]:
    host, sep, port = str(text).rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{what} must look like ADDRESS:PORT (e.g. 127.0.0.1:9300), got {text!r}")
    ipaddress.ip_address(host)
    return host, int(port)


def parse(data: Any, source: str) -> Config:
    """Builds a Config from a parsed YAML mapping."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the file must hold a mapping of settings (network, network_id, "
                          f"key_file, tap, listen, peers, ...), got {type(data).__name__}")
    unknown = sorted(set(map(str, data)) - KEYS)
    if unknown:
        raise ConfigError(f"{source}: unknown setting(s) {', '.join(unknown)}; "
                          f"known ones are {', '.join(sorted(KEYS))}")
    for key in ("network", "network_id", "key_file", "tap", "listen"):
        if data.get(key) in (None, ""):
            raise _fail(source, key, "is required")
    network = data["network"]
    if not isinstance(network, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", network):
        raise _fail(source, "network", f"must be a name of letters, digits, '.', '_' or '-', got {network!r}")
    network_id = _int(source, data, "network_id", None, 1, 2**32 - 1)
    tap = data["tap"]
    if not isinstance(tap, str) or not TAP_NAME.match(tap):
        raise _fail(source, "tap", f"must be an interface name of at most 15 characters, got {tap!r}")
    try:
        listen = str(ipaddress.IPv4Address(str(data["listen"])))
    except ValueError:
        raise _fail(source, "listen", f"must be this host's IPv4 address on the physical network, "
                                      f"got {data['listen']!r}") from None
    port = _int(source, data, "port", DEFAULT_PORT, 1, 65535)
    cipher = data.get("cipher", "aes-256-gcm")
    if cipher not in CIPHERS:
        raise _fail(source, "cipher", f"must be one of {', '.join(CIPHERS)}, got {cipher!r}")
    offload = data.get("offload", True)
    if not isinstance(offload, bool):
        raise _fail(source, "offload", f"must be true or false, got {offload!r}")
    ageing = data.get("fdb_ageing", 300.0)
    if isinstance(ageing, bool) or not isinstance(ageing, (int, float)) or not 1 <= ageing <= 86400:
        raise _fail(source, "fdb_ageing", f"must be a number of seconds from 1 to 86400, got {ageing!r}")
    log_level = data.get("log_level", "info")
    if log_level not in LOG_LEVELS:
        raise _fail(source, "log_level", f"must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}")
    datapath = data.get("datapath", "c")
    if datapath not in DATAPATHS:
        raise _fail(source, "datapath", f"must be one of {', '.join(DATAPATHS)}, got {datapath!r}")
    metrics = data.get("metrics")
    if metrics not in (None, ""):
        try:
            metrics = parse_endpoint(metrics, "metrics")
        except ValueError as err:
            raise _fail(source, "metrics", str(err)) from None
    else:
        metrics = None
    control = data.get("control_socket")
    raw_peers = data.get("peers") or []
    if not isinstance(raw_peers, list):
        raise _fail(source, "peers", "must be a list of {name, address, port} mappings")
    peers = []
    seen_names: set[str] = set()
    seen_keys: set[tuple[str, int]] = set()
    for index, item in enumerate(raw_peers):
        if not isinstance(item, dict) or set(item) - {"name", "address", "port"}:
            raise _fail(source, f"peers[{index}]", "must be a mapping with name, address and "
                                                   f"optional port, got {item!r}")
        try:
            name, address, pport = check_peer(item.get("name"), item.get("address"),
                                              item.get("port", port))
        except ValueError as err:
            raise _fail(source, f"peers[{index}]", str(err)) from None
        if (address, pport) == (listen, port):
            raise _fail(source, f"peers[{index}]", f"{name} is this daemon's own address "
                                                   f"{listen}:{port}; leave it out of its peers")
        if name in seen_names or (address, pport) in seen_keys:
            raise _fail(source, f"peers[{index}]", f"{name} ({address}:{pport}) is listed twice")
        seen_names.add(name)
        seen_keys.add((address, pport))
        peers.append((name, address, pport))
    return Config(
        network=network,
        network_id=network_id,
        key_file=Path(str(data["key_file"])),
        tap=tap,
        listen=listen,
        port=port,
        cipher=cipher,
        sender_id=_int(source, data, "sender_id", None, 1, 2**32 - 1),
        offload=offload,
        socket_buffer=_int(source, data, "socket_buffer", 4 << 20, 65536, 1 << 30),
        fdb_ageing=float(ageing),
        fdb_max_entries=_int(source, data, "fdb_max_entries", 8192, 16, 1 << 20),
        control_socket=Path(str(control)) if control else None,
        metrics=metrics,
        peers=tuple(peers),
        log_level=log_level,
        datapath=datapath,
        source=source,
    )


def load(path: str | os.PathLike) -> Config:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"cannot read the config file {path}: {err.strerror}; "
                          f"pass the right one with --config") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    return parse(data, str(path))


def with_overrides(config: Config, **overrides: Any) -> Config:
    changes = {k: v for k, v in overrides.items() if v is not None}
    return replace(config, **changes) if changes else config


def read_key_file(path: Path) -> bytes:
    """The network secret: 32 random bytes written as 64 hex digits (``violinctl genkey``)."""
    try:
        info = path.stat()
        text = path.read_text().strip()
    except OSError as err:
        raise KeyFileError(f"cannot read the key file {path}: {err.strerror}; create it with "
                           f"'violinctl genkey > {path}' (same content on every host of the network)") from None
    if not re.fullmatch(r"[0-9a-fA-F]{64}", text):
        raise KeyFileError(f"key file {path} must hold exactly 64 hex digits (32 bytes); "
                           f"make one with 'violinctl genkey'")
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO) & ~stat.S_IRGRP:
        raise KeyFileError(f"key file {path} is readable or writable by others (mode "
                           f"{stat.S_IMODE(info.st_mode):o}); chmod 0600 or 0640 it")
    return bytes.fromhex(text)
