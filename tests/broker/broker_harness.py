"""Certificates, configs, stand-in playbooks and broker processes for broker tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from broker.negotiation.contracts import ContractState
from broker.service.api import peer_app
from broker.service.store import Store
from broker.service.tls import KeyPair, fingerprint_pem, make_ca, make_domain_cert, server_context

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Pki:
    dir: Path
    fingerprints: dict[str, str]
    own_cas: bool = False  # each domain has its own CA, DOMAIN-ca.crt

    def ca(self, domain: str) -> str:
        return str(self.dir / (f"{domain}-ca.crt" if self.own_cas else "ca.crt"))

    def files(self, domain: str) -> dict[str, str]:
        return {"cert": str(self.dir / f"{domain}.crt"), "key": str(self.dir / f"{domain}.key"),
                "ca": self.ca(domain)}

    def peer(self, name: str, port: int) -> dict[str, Any]:
        """A peer's entry in a broker config: URL, pin and, with own CAs, its CA."""
        entry: dict[str, Any] = {"url": f"https://127.0.0.1:{port}",
                                 "fingerprint": self.fingerprints[name]}
        if self.own_cas:
            entry["ca"] = self.ca(name)
        return entry


def make_own_ca_pki(dir: Path, domains: tuple[str, ...] = ("a", "b")) -> Pki:
    """Each domain makes its own CA and certificate with `viocluster broker certs --own-ca`,
    each in a directory of its own (no domain sees another's keys); the public CA certificates
    and the certificates are then gathered in ``dir``, as peers would exchange them."""
    import contextlib
    import io
    import shutil

    from broker.cli import main

    dir.mkdir(parents=True, exist_ok=True)
    fps = {}
    for d in domains:
        own = dir.parent / f"{dir.name}-{d}"
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(["broker", "certs", "--dir", str(own), "--own-ca",
                         "--domain", f"{d}=127.0.0.1,localhost"]) == 0
        name, fps[d], made = out.getvalue().strip().split("\t")
        assert (name, made) == (d, "created")
        assert sorted(f.name for f in own.iterdir()) == sorted(
            [f"{d}.crt", f"{d}.key", f"{d}-ca.crt", f"{d}-ca.key"])
        for f in (f"{d}.crt", f"{d}.key", f"{d}-ca.crt"):
            shutil.copy2(own / f, dir / f)
    return Pki(dir, fps, own_cas=True)


def make_pki(dir: Path, domains: tuple[str, ...] = ("a", "b", "c")) -> Pki:
    """One deployment CA signing every domain in ``domains``; plus ``x``, signed by a foreign CA."""
    dir.mkdir(parents=True, exist_ok=True)
    ca = make_ca("vbk-test")
    (dir / "ca.crt").write_bytes(ca.cert_pem)
    fps = {}
    for d in domains:
        pair = make_domain_cert(ca, d, ["127.0.0.1", "localhost"])
        pair.write(dir / f"{d}.crt", dir / f"{d}.key")
        fps[d] = fingerprint_pem(pair.cert_pem)
    foreign = make_ca("vbk-foreign")
    x: KeyPair = make_domain_cert(foreign, "a", ["127.0.0.1"])
    x.write(dir / "x.crt", dir / "x.key")
    fps["x"] = fingerprint_pem(x.cert_pem)
    return Pki(dir, fps)


def write_config(
    path: Path,
    domain: str,
    port: int,
    pki: Pki,
    peers: dict[str, int],
    cluster: Any,
    extra: dict[str, Any] | None = None,
) -> Path:
    """A broker config for ``domain`` whose scheduler is the test Slurm ``cluster``."""
    config: dict[str, Any] = {
        "domain": domain,
        "site": f"site-{domain}",
        "state_dir": str(path.parent / f"state-{domain}"),
        "listen": {"host": "127.0.0.1", "port": port},
        "tls": pki.files(domain),
        "peers": {name: pki.peer(name, p) for name, p in peers.items()},
        "interval_s": 1,
        "request_timeout_s": 20,
        "scheduler": {
            "kind": "slurm",
            "command_prefix": list(cluster.prefix),
            "env": dict(cluster.env),
        },
        "lending": {
            "hosts": [
                {"node": n, "address": "127.0.0.1", "account": f"vbk{domain}", "disk_path": str(path.parent)}
                for n in ("n1", "n2")
            ]
        },
        "executor": {
            "playbook_dir": str(HERE / "playbooks"),
            "inventory": str(HERE / "playbooks" / "hosts.ini"),
            "timeout_s": 120,
            "admit_timeout_s": 60,
        },
    }
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    path.write_text(yaml.safe_dump(config))
    return path


def standin_vm_probe(cluster: Any, state: Path) -> dict[str, Any]:
    """VM probe of the stand-ins: list the recorded names; remove = stop that slurmd now."""
    stop = (
        f"f={cluster.dir}/slurmd-{{name}}.pid; if [ -f $f ]; then p=$(cat $f); kill $p; "
        "for i in $(seq 100); do kill -0 $p 2>/dev/null || break; sleep 0.05; done; fi; "
        f"sed -i '/^{{name}}$/d' {state}/vms"
    )
    return {"list": ["sh", "-c", f"cat {state}/vms 2>/dev/null || true"],
            "remove": ["sh", "-c", stop]}


def standin_vars(cluster: Any, state: Path) -> dict[str, Any]:
    """Extra vars of the stand-in playbooks: where the borrower's Slurm is, where 'VMs' go."""
    return {
        "trade_test_netns": cluster.ns,
        "trade_test_slurm_conf": cluster.env["SLURM_CONF"],
        "trade_test_piddir": str(cluster.dir),
        "trade_test_state": str(state),
    }


@contextlib.asynccontextmanager
async def api(broker):
    runner = web.AppRunner(peer_app(broker), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", broker.config.listen.port,
                       ssl_context=server_context(broker.config.tls))
    await site.start()
    try:
        yield broker
    finally:
        await runner.cleanup()
        await broker.client.close()


class BrokerProcess:
    """A broker run as a real ``viocluster broker run`` process in a session of its own."""

    def __init__(self, name: str, conf: Path, port: int, log: Path) -> None:
        self.name, self.conf, self.port, self.log = name, conf, port, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.db = conf.parent / f"state-{name}" / "contracts.db"

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "broker.cli", "broker", "run", "--config", str(self.conf)],
                cwd=REPO, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return
            time.sleep(0.1)
        raise AssertionError(f"broker {self.name} did not listen: {self.log.read_text()[-3000:]}")

    def kill9(self) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.kill9()

    def contracts(self):
        with contextlib.closing(Store(self.db)) as store:
            return store.contracts()

    def store_history(self, cid: str) -> str:
        """Every transition's reason of one contract, one a line."""
        with contextlib.closing(Store(self.db)) as store:
            return "\n".join(f"{t.to_state.value}: {t.reason}" for t in store.history(cid))

    def refusals(self):
        with contextlib.closing(Store(self.db)) as store:
            return store.refusals()

    def wait_state(self, state: ContractState, timeout: float = 120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.db.exists():
                found = [c for c in self.contracts() if c.state is state]
                if found:
                    return found[-1]
            time.sleep(0.1)
        raise AssertionError(f"{self.name}: no contract {state.value} in {timeout} s; "
                             f"have {[(c.id, c.state.value, c.reason) for c in self.contracts()]}\n"
                             f"{self.log.read_text()[-4000:]}")

    def wait_contract(self, cid: str, state: ContractState, timeout: float = 120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for c in self.contracts():
                if c.id == cid and c.state is state:
                    return c
            time.sleep(0.1)
        got = [(c.state.value, c.reason) for c in self.contracts() if c.id == cid]
        raise AssertionError(f"{self.name}: {cid} not {state.value} in {timeout} s: {got}\n"
                             f"{self.log.read_text()[-4000:]}")


def stop_standins(cluster) -> None:
    """SIGKILL the stand-in VMs' slurmds (slurmd-a-*.pid) that a borrow started on ``cluster``."""
    for pidfile in cluster.dir.glob("slurmd-a-*.pid"):
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
        pidfile.unlink()
