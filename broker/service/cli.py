"""``viocluster broker run|certs``, ``viocluster status`` and ``viocluster contracts``."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from broker.errors import UserError


def register(subparsers: Any) -> None:
    broker = subparsers.add_parser("broker", help="run a domain's machine broker")
    verbs = broker.add_subparsers(dest="broker_command", metavar="VERB")
    verbs.required = True

    run = verbs.add_parser("run", help="run the broker service until SIGTERM")
    run.add_argument("--config", required=True, type=Path, help="the broker's config file")
    run.add_argument("--log-level", default="INFO",
                     choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    run.set_defaults(func=_run)

    check = verbs.add_parser("check", help="read and check a broker config, then exit")
    check.add_argument("--config", required=True, type=Path)
    check.set_defaults(func=_check)

    certs = verbs.add_parser(
        "certs", help="make the CA(s) and per-domain certificates, or renew a certificate",
        description="Makes what is missing and keeps what exists. By default one deployment CA "
                    "(ca.crt, ca.key) signs every domain; with --own-ca each domain gets a CA of "
                    "its own (DOMAIN-ca.crt, DOMAIN-ca.key) and no other domain's file is read "
                    "or written. Prints NAME<TAB>FINGERPRINT<TAB>created|kept|renewed (renewed "
                    "adds <TAB>OLD-FINGERPRINT).")
    certs.add_argument("--dir", required=True, type=Path,
                       help="where ca.crt/ca.key (or DOMAIN-ca.crt/.key) and DOMAIN.crt/.key go")
    certs.add_argument("--domain", action="append", default=[], metavar="NAME[=HOST,...]",
                       help="a domain and the names/addresses its broker is reached at")
    certs.add_argument("--deployment", default="viocluster", help="name of the deployment CA")
    certs.add_argument("--own-ca", action="store_true",
                       help="sign each domain with a CA of its own, DOMAIN-ca.crt (made if missing)")
    certs.add_argument("--renew", action="append", default=[], metavar="NAME[=HOST,...]",
                       help="issue a new certificate for an existing domain, with the same key, "
                            "from the CA that signed it (from DOMAIN-ca.crt with --own-ca); "
                            "host names default to the old certificate's")
    certs.add_argument("--days", type=int, default=None, metavar="N",
                       help="validity of what is made (default 825; a certificate never "
                            "outlives its CA)")
    certs.set_defaults(func=_certs)

    status = subparsers.add_parser("status", help="domains, demand, lent and borrowed nodes, contracts")
    status.add_argument("--config", required=True, type=Path)
    status.add_argument("--json", action="store_true", help="print the raw status")
    status.set_defaults(func=_status)

    contracts = subparsers.add_parser("contracts", help="the broker's contracts and their log")
    contracts.add_argument("--config", required=True, type=Path)
    contracts.add_argument("--all", action="store_true", help="closed and failed ones too")
    contracts.add_argument("--history", metavar="ID",
                           help="every transition of one contract, open or closed (closed ones "
                                "are kept contract_retention_days, then compacted)")
    contracts.add_argument("--json", action="store_true",
                           help="print JSON: the contracts (with --all, every one) and each one's transitions")
    contracts.set_defaults(func=_contracts)


def _run(args: argparse.Namespace) -> int:
    from broker.service.config import load_config
    from broker.service.runtime import run

    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return run(load_config(args.config))


def _certs(args: argparse.Namespace) -> int:
    from broker.negotiation.messages import NAME_RE
    from broker.service.tls import (
        VALID_DAYS, KeyPair, alt_names, fingerprint_pem, issued_by, make_ca, make_domain_cert,
        write_atomic,
    )

    if not args.domain and not args.renew:
        raise UserError("name at least one --domain NAME[=HOST,...] or --renew NAME")
    days = VALID_DAYS if args.days is None else args.days
    if not 1 <= days <= 36500:
        raise UserError(f"--days {days}: give a number of days from 1 to 36500")
    specs = [(spec, False) for spec in args.domain] + [(spec, True) for spec in args.renew]
    for spec, _renew in specs:
        name = spec.partition("=")[0]
        if not NAME_RE.match(name):
            raise UserError(f"--domain {spec!r}: the name must be letters, digits, '.', '_', '-'")
        if name == "ca" or (args.own_ca and name.endswith("-ca")):
            raise UserError(f"--domain {spec!r}: a domain name must not be 'ca', nor end in "
                            "'-ca' with --own-ca (the CA files are named so)")
    args.dir.mkdir(parents=True, exist_ok=True)

    def ca_of(name: str) -> KeyPair:
        stem = f"{name}-ca" if args.own_ca else "ca"
        crt, key = args.dir / f"{stem}.crt", args.dir / f"{stem}.key"
        if crt.exists() and key.exists():
            return KeyPair(crt.read_bytes(), key.read_bytes())
        made = make_ca(name if args.own_ca else args.deployment, days)
        made.write(crt, key)
        return made

    for spec, renew in specs:
        name, _, hosts = spec.partition("=")
        names = [h for h in hosts.split(",") if h]
        crt, key = args.dir / f"{name}.crt", args.dir / f"{name}.key"
        if renew:
            if not (crt.exists() and key.exists()):
                raise UserError(f"--renew {name}: {crt} and {key} must exist; make them with "
                                f"--domain {name} first")
            old = crt.read_bytes()
            if args.own_ca:
                ca = ca_of(name)
            else:
                found = [(c_crt, c_key) for stem in (f"{name}-ca", "ca")
                         for c_crt, c_key in [(args.dir / f"{stem}.crt", args.dir / f"{stem}.key")]
                         if c_crt.exists() and c_key.exists()
                         and issued_by(old, c_crt.read_bytes())]
                if not found:
                    raise UserError(f"--renew {name}: neither {name}-ca.crt nor ca.crt (with its "
                                    f"key) in {args.dir} signed {crt}; give --own-ca to sign it "
                                    "with a new CA of the domain's own")
                ca = KeyPair(found[0][0].read_bytes(), found[0][1].read_bytes())
            new = make_domain_cert(ca, name, names or alt_names(old), days, key.read_bytes())
            write_atomic(crt, new.cert_pem)
            print(f"{name}\t{fingerprint_pem(new.cert_pem)}\trenewed\t{fingerprint_pem(old)}")
            continue
        made = "kept"
        if not (crt.exists() and key.exists()):
            make_domain_cert(ca_of(name), name, names or ["localhost", "127.0.0.1"],
                             days).write(crt, key)
            made = "created"
        print(f"{name}\t{fingerprint_pem(crt.read_bytes())}\t{made}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from broker.scheduler import make_adapter
    from broker.service.config import load_config

    config = load_config(args.config)
    make_adapter(config.scheduler, f"{config.source}: scheduler")
    print(f"{config.source}: broker of domain {config.domain} with "
          f"{len(config.peers)} peer(s): OK")
    return 0


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths)).rstrip()]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def _live_status(config: Any) -> dict[str, Any] | None:
    if config.status_listen is None:
        return None
    url = f"http://{config.status_listen.host}:{config.status_listen.port}/status"
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _status(args: argparse.Namespace) -> int:
    from broker.service.config import load_config
    from broker.service.store import Store

    config = load_config(args.config)
    live = _live_status(config)
    if live is None:
        store = Store(config.db_path)
        contracts = store.contracts()
        store.close()
        live = {
            "domain": config.domain, "demand": None, "need": None, "physical": None,
            "lent": [], "borrowed": [], "intent": "broker not running",
            "peers": {p: {"last_seen": None} for p in config.peers},
            "contracts": [{"id": c.id, "role": c.role.value, "peer": c.peer,
                           "state": c.state.value, "nodes": list(c.node_names),
                           "addresses": [a for _n, a in c.addresses],
                           "updated_at": c.updated_at, "reason": c.reason} for c in contracts],
        }
    if args.json:
        print(json.dumps(live, indent=2))
        return 0
    open_ = [c for c in live["contracts"] if c["state"] not in ("closed", "failed")]
    rows = [[live["domain"] + " (this broker)", str(live["demand"] if live["demand"] is not None else "-"),
             str(live["physical"] if live["physical"] is not None else "-"),
             ",".join(live["lent"]) or "-", ",".join(live["borrowed"]) or "-",
             str(len(open_)), live.get("intent") or "-"]]
    for peer, info in sorted(live["peers"].items()):
        mine = [c for c in open_ if c["peer"] == peer]
        lent = [n for c in mine if c["role"] == "lender" for n in c["nodes"]]
        borrowed = [n for c in mine if c["role"] == "borrower" for n in c["nodes"]]
        rows.append([peer, "-", "-", ",".join(lent) or "-", ",".join(borrowed) or "-",
                     str(len(mine)), f"last seen {_when(info.get('last_seen'))}"])
    print(_table(rows, ["DOMAIN", "DEMAND", "PHYSICAL", "LENT (to us: their VMs)",
                        "BORROWED", "CONTRACTS", "NOTE"]))
    if open_:
        print()
        print(_contract_table(open_))
    return 0


def _contract_table(contracts: list[dict[str, Any]]) -> str:
    rows = [[c["id"], c["role"], c["peer"], c["state"], ",".join(c["nodes"]) or "-",
             ",".join(c.get("addresses") or []) or "-", _when(c["updated_at"]), c["reason"][:60]]
            for c in contracts]
    return _table(rows, ["CONTRACT", "ROLE", "PEER", "STATE", "NODES", "ADDRESSES", "SINCE",
                         "REASON"])


def _contracts(args: argparse.Namespace) -> int:
    from broker.service.config import load_config
    from broker.service.store import Store

    config = load_config(args.config)
    if not config.db_path.exists():
        raise UserError(f"{config.db_path}: no contract database yet; has the broker run?")
    store = Store(config.db_path)
    try:
        if args.history:
            history = store.history(args.history)
            if not history:
                raise UserError(
                    f"no contract {args.history} in {config.db_path}: closed and failed contracts "
                    f"are kept {config.contract_retention_days:g} days (contract_retention_days), "
                    "proposals that were refused are only counted; `viocluster contracts --all` "
                    "lists those kept")
            rows = [[_when(t.at), t.from_state.value if t.from_state else "-", t.to_state.value,
                     t.reason] for t in history]
            print(_table(rows, ["AT", "FROM", "TO", "REASON"]))
            return 0
        contracts = store.contracts(open_only=not args.all)
        if args.json:
            print(json.dumps([{
                "id": c.id, "role": c.role.value, "peer": c.peer, "state": c.state.value,
                "nodes": list(c.node_names), "hosts": list(c.host_names),
                "addresses": [a for _n, a in c.addresses], "created_at": c.created_at,
                "updated_at": c.updated_at, "reason": c.reason,
                "transitions": [{"at": t.at, "from": t.from_state.value if t.from_state else None,
                                 "to": t.to_state.value, "reason": t.reason}
                                for t in store.history(c.id)],
            } for c in contracts], indent=2))
            return 0
        print(_contract_table([{"id": c.id, "role": c.role.value, "peer": c.peer,
                                "state": c.state.value, "nodes": list(c.node_names),
                                "addresses": [a for _n, a in c.addresses],
                                "updated_at": c.updated_at, "reason": c.reason}
                               for c in contracts]))
        refusals = store.refusals()
        if args.all and refusals:
            print()
            print("Proposals that ended without agreement (counted, not kept):")
            print(_table([[r.peer, r.role.value, str(r.count), _when(r.first_at), _when(r.last_at),
                           r.last_reason[:60]] for r in refusals],
                         ["PEER", "ROLE", "COUNT", "FIRST", "LAST", "LAST REASON"]))
    finally:
        store.close()
    return 0
