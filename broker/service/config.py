"""The broker's service config file (YAML), read and checked in one place.

Every wrong key, type or value raises :class:`~broker.errors.ConfigError` naming the key by its
path (``peers.b.fingerprint``), what was given and what is expected. docs/broker.md shows a
complete example.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker.errors import ConfigError
from broker.validation import Reader, show, read_yaml_file
from broker.policy import DomainPolicy, load_policy, parse_policy
from broker.service.addresses import AddressPool, PoolError
from broker.service.ratelimit import RateLimit
from broker.service.tls import TlsFiles

FINGERPRINT_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
TOP_KEYS = {
    "domain", "site", "state_dir", "listen", "status_listen", "tls", "peers", "policy",
    "interval_s", "request_timeout_s", "offer_ttl_s", "needs", "scheduler", "lending",
    "executor", "probes", "vm_addresses", "node_down_grace_s", "peer_lost_timeout_s",
    "contract_retention_days", "rate_limit",
}


@dataclass(frozen=True)
class Listen:
    host: str
    port: int


@dataclass(frozen=True)
class Peer:
    name: str
    url: str
    fingerprint: str  # the first pin
    # every pin, the first included: during a renewal a peer lists the old certificate's and
    # the new one's; empty means (fingerprint,)
    fingerprints: tuple[str, ...] = ()
    ca: Path | None = None  # the peer's own CA, when it is not ours (tls.ca)

    @property
    def pins(self) -> tuple[str, ...]:
        return self.fingerprints or (self.fingerprint,)


@dataclass(frozen=True)
class LendingHost:
    """One of our own nodes we may lend: its scheduler node name and how to reach it."""

    node: str
    address: str
    account: str  # may hold "{borrower}": the peer domain's name goes there
    disk_path: str = "/var/lib/viocluster"
    measure_prefix: tuple[str, ...] = ()  # empty: the host is this machine (measure here)


@dataclass(frozen=True)
class ExecutorConfig:
    playbook_dir: Path
    borrow_playbook: str = "borrow.yml"
    reclaim_playbook: str = "reclaim.yml"
    inventory: str | None = None
    extravars: dict[str, Any] = field(default_factory=dict)
    timeout_s: float = 300.0
    admit_timeout_s: float = 60.0


@dataclass(frozen=True)
class ProbeConfig:
    """Commands that list what runs (one name a line) and remove one (``{name}`` replaced)."""

    list: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.list)


@dataclass(frozen=True)
class BrokerConfig:
    source: str
    domain: str
    site: str
    state_dir: Path
    listen: Listen
    status_listen: Listen | None
    tls: TlsFiles
    peers: dict[str, Peer]
    policy: DomainPolicy
    interval_s: float
    request_timeout_s: float
    offer_ttl_s: float
    needs: dict[str, int]
    scheduler: dict[str, Any]
    lending_hosts: tuple[LendingHost, ...]
    executor: ExecutorConfig
    vm_probe: ProbeConfig
    switch_probe: ProbeConfig
    vm_pool: AddressPool | None = None  # None: borrow.yml derives each VM's address from its name
    # Reconciliation (docs/broker.md, "Reconciliation"): how long a borrowed node may be down
    # or not responding, or a lent VM missing, before the contract is ended; how long a lender
    # waits without a word from a borrower before it takes its hosts back; how long closed
    # contracts are kept.
    node_down_grace_s: float = 20.0
    peer_lost_timeout_s: float = 120.0
    contract_retention_days: float = 30.0
    # Requests each peer (each client certificate) may send: per second sustained, and at
    # once after a quiet spell (docs/broker.md, "Rate limits").
    rate_limit: RateLimit = field(default_factory=RateLimit)
    # A certificate (ours, a peer's, a CA) expiring within this many days is logged as a
    # warning at start and once a day (tls.expiry_warning_days).
    cert_warn_days: float = 30.0

    @property
    def db_path(self) -> Path:
        return self.state_dir / "contracts.db"

    def peer_by_fingerprint(self, fingerprint: str) -> Peer | None:
        for peer in self.peers.values():
            if fingerprint in peer.pins:
                return peer
        return None


def _account(r: "_Reader", raw: Any, path: str) -> str:
    """An account name, or a pattern with ``{borrower}`` (one account per peer domain)."""
    if isinstance(raw, str) and "{borrower}" in raw:
        r.name(raw.replace("{borrower}", "x"), path)
        return raw
    return r.name(raw, path)


class _Reader(Reader):
    """The shared checks (:mod:`broker.validation`), with the config's own: paths relative to
    the config file, listen addresses, commands, rate limits."""

    error = ConfigError

    def __init__(self, source: str, base: Path) -> None:
        super().__init__(source)
        self.base = base

    def mapping(self, raw: Any, path: str, keys: Collection[str],
                required: Collection[str] = ()) -> dict:
        return super().mapping(raw, path, sorted(keys, key=str), sorted(required, key=str))

    def number(self, raw: Any, path: str, minimum: float = 0.0,  # type: ignore[override]
               maximum: float = 1e9) -> float:
        return super().number(raw, path, minimum, maximum, above=True)

    def rate_limit(self, raw: Any, path: str) -> RateLimit:
        default = RateLimit()
        obj = self.mapping(raw, path, {"per_s", "burst"})
        return RateLimit(
            per_s=self.number(obj.get("per_s", default.per_s), f"{path}.per_s", 0.0, 1e6),
            burst=self.integer(obj.get("burst", default.burst), f"{path}.burst", 1, 1_000_000),
        )

    def path(self, raw: Any, path: str) -> Path:
        p = Path(self.text(raw, path)).expanduser()
        return p if p.is_absolute() else (self.base / p)

    def listen(self, raw: Any, path: str) -> Listen:
        obj = self.mapping(raw, path, {"host", "port"}, {"host", "port"})
        port = self.integer(obj["port"], f"{path}.port", 0, 65535)
        return Listen(self.text(obj["host"], f"{path}.host"), port)

    def commands(self, raw: Any, path: str) -> tuple[str, ...]:
        if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
            raise self.wrong(path, raw, "a command as a list of strings")
        return tuple(raw)


def load_config(path: Path | str) -> BrokerConfig:
    """Read and check the broker config at ``path``."""
    path = Path(path)
    source = str(path)
    raw = read_yaml_file(path, "broker config", "pass the broker's config with --config",
                         "the config must be a YAML mapping", ConfigError)
    return parse_config(raw, source, path.parent)


def parse_config(raw: Any, source: str, base: Path) -> BrokerConfig:
    r = _Reader(source, base)
    top = r.mapping(raw, "", TOP_KEYS, {"domain", "state_dir", "listen", "tls", "peers"})
    domain = r.name(top["domain"], "domain")

    tls_raw = r.mapping(top["tls"], "tls", {"cert", "key", "ca", "expiry_warning_days"},
                        {"cert", "key", "ca"})
    cert_warn_days = r.number(tls_raw.get("expiry_warning_days", 30), "tls.expiry_warning_days",
                              0.0, 3650)

    peers: dict[str, Peer] = {}
    peers_raw = r.mapping(top["peers"], "peers", set(top["peers"]) if isinstance(top["peers"], dict) else set())
    for name, value in peers_raw.items():
        where = f"peers.{name}"
        r.name(name, where)
        if name == domain:
            raise r.fail(where, "a broker cannot be its own peer")
        obj = r.mapping(value, where, {"url", "fingerprint", "ca"}, {"url", "fingerprint"})
        url = r.text(obj["url"], f"{where}.url")
        if not url.startswith("https://"):
            raise r.fail(f"{where}.url", f"got {url!r}; peers are reached over https://")
        raw_fps = obj["fingerprint"]
        if raw_fps == []:
            raise r.fail(f"{where}.fingerprint", "got an empty list; pin at least one certificate")
        listed = raw_fps if isinstance(raw_fps, list) else [raw_fps]
        for i, fp in enumerate(listed):
            if not isinstance(fp, str) or not FINGERPRINT_RE.match(fp):
                at = f"{where}.fingerprint" + (f"[{i}]" if isinstance(raw_fps, list) else "")
                raise r.fail(
                    at,
                    f"got {show(fp)}; expected 'sha256:' and 64 lower-case hex digits, or a "
                    "list of them (`viocluster broker certs` prints it)",
                )
        if len(set(listed)) != len(listed):
            raise r.fail(f"{where}.fingerprint", "a fingerprint is listed twice")
        ca = r.path(obj["ca"], f"{where}.ca") if "ca" in obj else None
        peers[name] = Peer(name, url.rstrip("/"), listed[0], tuple(listed), ca)
    fps = [fp for p in peers.values() for fp in p.pins]
    if len(set(fps)) != len(fps):
        raise r.fail("peers", "two peers are pinned to the same certificate")
    own_ca = r.path(tls_raw["ca"], "tls.ca")
    with_ca = [p for p in peers.values() if p.ca is not None and p.ca != own_ca]
    tls = TlsFiles(r.path(tls_raw["cert"], "tls.cert"), r.path(tls_raw["key"], "tls.key"), own_ca,
                   tuple(p.ca for p in with_ca if p.ca is not None),
                   tuple(f"peers.{p.name}.ca" for p in with_ca))

    policy_raw = top.get("policy")
    if policy_raw is None:
        policy = DomainPolicy()
    elif isinstance(policy_raw, str):
        policy = load_policy(r.path(policy_raw, "policy"))
    elif isinstance(policy_raw, dict):
        policy = parse_policy(policy_raw, f"{source}: policy")
    else:
        raise r.wrong("policy", policy_raw, "a path to a policy file or a mapping")

    needs_raw = r.mapping(top.get("needs", {}), "needs", {"cpus", "memory_mb", "disk_gb"})
    needs = {"cpus": 1, "memory_mb": 0, "disk_gb": 0}
    for key, value in needs_raw.items():
        needs[key] = r.integer(value, f"needs.{key}", 0)

    scheduler = top.get("scheduler", {"kind": "slurm"})
    r.mapping(scheduler, "scheduler", set(scheduler) if isinstance(scheduler, dict) else set())

    lending_raw = r.mapping(top.get("lending", {}), "lending", {"hosts"})
    hosts = []
    for i, item in enumerate(lending_raw.get("hosts", []) or []):
        where = f"lending.hosts[{i}]"
        obj = r.mapping(item, where, {"node", "address", "account", "disk_path", "measure_prefix"},
                        {"node", "address", "account"})
        hosts.append(
            LendingHost(
                node=r.name(obj["node"], f"{where}.node"),
                address=r.name(obj["address"], f"{where}.address"),
                account=_account(r, obj["account"], f"{where}.account"),
                disk_path=r.text(obj.get("disk_path", "/var/lib/viocluster"), f"{where}.disk_path"),
                measure_prefix=r.commands(obj.get("measure_prefix", []), f"{where}.measure_prefix"),
            )
        )
    if len({h.node for h in hosts}) != len(hosts):
        raise r.fail("lending.hosts", "a node is listed twice")

    ex_keys = {"playbook_dir", "borrow_playbook", "reclaim_playbook", "inventory", "extravars",
               "timeout_s", "admit_timeout_s"}
    ex = r.mapping(top.get("executor", {}), "executor", ex_keys)
    ev = ex.get("extravars", {})
    extravars = r.mapping(ev, "executor.extravars", list(ev) if isinstance(ev, dict) else [])
    executor = ExecutorConfig(
        playbook_dir=r.path(ex.get("playbook_dir", "playbooks"), "executor.playbook_dir"),
        borrow_playbook=r.text(ex.get("borrow_playbook", "borrow.yml"), "executor.borrow_playbook"),
        reclaim_playbook=r.text(ex.get("reclaim_playbook", "reclaim.yml"), "executor.reclaim_playbook"),
        inventory=str(r.path(ex["inventory"], "executor.inventory")) if ex.get("inventory") else None,
        extravars=extravars,
        timeout_s=r.number(ex.get("timeout_s", 300), "executor.timeout_s"),
        admit_timeout_s=r.number(ex.get("admit_timeout_s", 60), "executor.admit_timeout_s"),
    )

    probes = r.mapping(top.get("probes", {}), "probes", {"vms", "switch"})
    found = {}
    for kind in ("vms", "switch"):
        obj = r.mapping(probes.get(kind, {}), f"probes.{kind}", {"list", "remove"})
        found[kind] = ProbeConfig(
            list=r.commands(obj.get("list", []), f"probes.{kind}.list"),
            remove=r.commands(obj.get("remove", []), f"probes.{kind}.remove"),
        )
        if found[kind].enabled and not found[kind].remove:
            raise r.fail(f"probes.{kind}", "a probe that lists must also say how to remove")

    vm_pool = None
    if top.get("vm_addresses") is not None:
        va = r.mapping(top["vm_addresses"], "vm_addresses", {"pool", "prefixlen"}, {"pool"})
        try:
            vm_pool = AddressPool.parse(va["pool"], va.get("prefixlen", 24))
        except PoolError as exc:
            raise r.fail(f"vm_addresses.{exc.where}", exc.message) from None

    interval_s = r.number(top.get("interval_s", 10), "interval_s")
    peer_lost = r.number(top.get("peer_lost_timeout_s", 120), "peer_lost_timeout_s")
    if peer_lost < 3 * interval_s:
        raise r.fail("peer_lost_timeout_s", f"got {peer_lost:g}; expected at least 3 x interval_s "
                     f"({3 * interval_s:g}): a peer heartbeats once an interval, and a missed "
                     "heartbeat or two is not a lost peer")

    return BrokerConfig(
        source=source,
        domain=domain,
        site=r.name(top.get("site", domain), "site"),
        state_dir=r.path(top["state_dir"], "state_dir"),
        listen=r.listen(top["listen"], "listen"),
        status_listen=r.listen(top["status_listen"], "status_listen") if top.get("status_listen") else None,
        tls=tls,
        peers=peers,
        policy=policy,
        interval_s=interval_s,
        request_timeout_s=r.number(top.get("request_timeout_s", 5), "request_timeout_s"),
        offer_ttl_s=r.number(top.get("offer_ttl_s", 60), "offer_ttl_s"),
        needs=needs,
        scheduler=dict(scheduler),
        lending_hosts=tuple(hosts),
        executor=executor,
        vm_probe=found["vms"],
        switch_probe=found["switch"],
        vm_pool=vm_pool,
        node_down_grace_s=r.number(top.get("node_down_grace_s", 20), "node_down_grace_s"),
        peer_lost_timeout_s=peer_lost,
        contract_retention_days=r.number(top.get("contract_retention_days", 30),
                                         "contract_retention_days"),
        rate_limit=r.rate_limit(top.get("rate_limit", {}), "rate_limit"),
        cert_warn_days=cert_warn_days,
    )
