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
                    "or written. A CA key is encrypted with the passphrase when one is given "
                    "(--ca-passphrase-file or --ca-passphrase-env); domain keys never are. "
                    "Prints NAME<TAB>FINGERPRINT<TAB>created|kept|renewed (renewed adds "
                    "<TAB>OLD-FINGERPRINT), and KEYFILE<TAB>encrypted for each CA key "
                    "--encrypt-ca encrypted.")
    certs.add_argument("--dir", required=True, type=Path,
                       help="where ca.crt/ca.key (or DOMAIN-ca.crt/.key) and DOMAIN.crt/.key go; "
                            "keep it outside any checkout, and back it up")
    certs.add_argument("--domain", action="append", default=[], metavar="NAME[=HOST,...]",
                       help="a domain and the names/addresses its broker is reached at")
    certs.add_argument("--deployment", default="viocluster", help="name of the deployment CA")
    certs.add_argument("--own-ca", action="store_true",
                       help="sign each domain with a CA of its own, DOMAIN-ca.crt (made if "
                            "missing); a certificate another CA signed is reissued from it")
    certs.add_argument("--renew", action="append", default=[], metavar="NAME[=HOST,...]",
                       help="issue a new certificate for an existing domain, with the same key, "
                            "from the CA that signed it (from DOMAIN-ca.crt with --own-ca); "
                            "host names default to the old certificate's")
    certs.add_argument("--renew-within", type=int, default=None, metavar="DAYS",
                       help="renew (as --renew does) each --domain certificate that ends within "
                            "DAYS days")
    certs.add_argument("--days", type=int, default=None, metavar="N",
                       help="validity of what is made (default 825; a certificate never "
                            "outlives its CA)")
    secret = certs.add_mutually_exclusive_group()
    secret.add_argument("--ca-passphrase-file", type=Path, metavar="FILE",
                        help="the CA keys' passphrase: the first line of FILE")
    secret.add_argument("--ca-passphrase-env", metavar="NAME",
                        help="the CA keys' passphrase: the value of environment variable NAME")
    certs.add_argument("--encrypt-ca", action="store_true",
                       help="encrypt with the passphrase each CA key used here that is stored "
                            "unencrypted (alone: every CA key in --dir)")
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


_PASSPHRASE_HINT = "give its passphrase with --ca-passphrase-file FILE or --ca-passphrase-env NAME"


def _ca_passphrase(args: argparse.Namespace) -> bytes | None:
    """The CA keys' passphrase from --ca-passphrase-file or --ca-passphrase-env, or None."""
    import os

    if args.ca_passphrase_file is not None:
        path = args.ca_passphrase_file
        try:
            text = path.read_bytes()
        except OSError as exc:
            raise UserError(f"--ca-passphrase-file {path}: cannot read it ({exc.strerror}); give "
                            "a file whose first line is the CA keys' passphrase") from None
        passphrase = text.splitlines()[0] if text.strip() else b""
        if not passphrase:
            raise UserError(f"--ca-passphrase-file {path} is empty; put the CA keys' passphrase "
                            "on its first line")
        return passphrase
    if args.ca_passphrase_env is not None:
        value = os.environ.get(args.ca_passphrase_env, "")
        if not value:
            raise UserError(f"--ca-passphrase-env {args.ca_passphrase_env}: that environment "
                            "variable is not set or empty; set it to the CA keys' passphrase")
        return value.encode()
    return None


def _certs(args: argparse.Namespace) -> int:
    import time

    from broker.negotiation.messages import NAME_RE
    from broker.service.tls import (
        VALID_DAYS, KeyPair, alt_names, encrypt_key, fingerprint_pem, is_encrypted_key, issued_by,
        load_private_key, make_ca, make_domain_cert, not_after, write_atomic,
    )

    if not args.domain and not args.renew and not args.encrypt_ca:
        raise UserError("name at least one --domain NAME[=HOST,...] or --renew NAME, or give "
                        "--encrypt-ca")
    days = VALID_DAYS if args.days is None else args.days
    if not 1 <= days <= 36500:
        raise UserError(f"--days {days}: give a number of days from 1 to 36500")
    if args.renew_within is not None and not 0 <= args.renew_within <= 36500:
        raise UserError(f"--renew-within {args.renew_within}: give a number of days from 0 to 36500")
    passphrase = _ca_passphrase(args)
    if args.encrypt_ca and passphrase is None:
        raise UserError("--encrypt-ca needs the passphrase: give --ca-passphrase-file FILE or "
                        "--ca-passphrase-env NAME")
    specs = [(spec, False) for spec in args.domain] + [(spec, True) for spec in args.renew]
    for spec, _renew in specs:
        name = spec.partition("=")[0]
        if not NAME_RE.match(name):
            raise UserError(f"--domain {spec!r}: the name must be letters, digits, '.', '_', '-'")
        if name == "ca" or (args.own_ca and name.endswith("-ca")):
            raise UserError(f"--domain {spec!r}: a domain name must not be 'ca', nor end in "
                            "'-ca' with --own-ca (the CA files are named so)")
    if not args.dir.exists():
        args.dir.mkdir(parents=True, mode=0o700)
    opened: dict[Path, KeyPair] = {}

    def warn(text: str) -> None:
        print(f"viocluster: warning: {text}", file=sys.stderr)

    def ca_at(stem: str) -> KeyPair | None:
        """The CA ``stem``.crt/.key in --dir, its key checked against the passphrase (and
        encrypted with --encrypt-ca); None when it is not there."""
        crt, key = args.dir / f"{stem}.crt", args.dir / f"{stem}.key"
        if key in opened:
            return opened[key]
        if not (crt.exists() and key.exists()):
            return None
        pem = key.read_bytes()
        if is_encrypted_key(pem):
            if passphrase is not None:  # a wrong one is refused now, before anything is written
                load_private_key(pem, passphrase, str(key), _PASSPHRASE_HINT)
        elif args.encrypt_ca:
            assert passphrase is not None
            pem = encrypt_key(pem, passphrase, str(key))
            write_atomic(key, pem, 0o600)
            print(f"{key.name}\tencrypted")
        else:
            warn(f"{key} is not encrypted; encrypt it with `viocluster broker certs --dir "
                 f"{args.dir} --encrypt-ca` and the passphrase (--ca-passphrase-file or "
                 "--ca-passphrase-env)")
        opened[key] = KeyPair(crt.read_bytes(), pem)
        return opened[key]

    def ca_of(name: str) -> KeyPair:
        """The CA new certificates of ``name`` come from, made when missing."""
        stem = f"{name}-ca" if args.own_ca else "ca"
        found = ca_at(stem)
        if found is not None:
            return found
        made = make_ca(name if args.own_ca else args.deployment, days, passphrase)
        made.write(args.dir / f"{stem}.crt", args.dir / f"{stem}.key")
        if passphrase is None:
            warn(f"{args.dir / f'{stem}.key'} is stored unencrypted: give --ca-passphrase-file or "
                 "--ca-passphrase-env to encrypt CA keys")
        opened[args.dir / f"{stem}.key"] = made
        return made

    def signer(name: str, cert: bytes) -> KeyPair | None:
        """The CA in --dir (with its key) that signed ``cert``: NAME-ca, then ca."""
        for stem in (f"{name}-ca", "ca"):
            crt = args.dir / f"{stem}.crt"
            if crt.exists() and issued_by(cert, crt.read_bytes()):
                return ca_at(stem)
        return None

    def sign(ca: KeyPair, name: str, names: list[str], key_pem: bytes | None) -> KeyPair:
        where = next((str(path) for path, pair in opened.items() if pair is ca), "the CA key")
        load_private_key(ca.key_pem, passphrase, where, _PASSPHRASE_HINT)  # one clear line
        return make_domain_cert(ca, name, names, days, key_pem, passphrase)

    def renew(name: str, names: list[str], ca: KeyPair) -> None:
        crt, key = args.dir / f"{name}.crt", args.dir / f"{name}.key"
        old = crt.read_bytes()
        new = sign(ca, name, names or alt_names(old), key.read_bytes())
        write_atomic(crt, new.cert_pem)
        print(f"{name}\t{fingerprint_pem(new.cert_pem)}\trenewed\t{fingerprint_pem(old)}")

    if args.encrypt_ca and not specs:
        for key in sorted(args.dir.glob("*.key")):
            if key.name == "ca.key" or key.name.endswith("-ca.key"):
                ca_at(key.name[:-len(".key")])
        return 0

    for spec, renewing in specs:
        name, _, hosts = spec.partition("=")
        names = [h for h in hosts.split(",") if h]
        crt, key = args.dir / f"{name}.crt", args.dir / f"{name}.key"
        exists = crt.exists() and key.exists()
        if renewing:
            if not exists:
                raise UserError(f"--renew {name}: {crt} and {key} must exist; make them with "
                                f"--domain {name} first")
            ca = ca_of(name) if args.own_ca else signer(name, crt.read_bytes())
            if ca is None:
                raise UserError(f"--renew {name}: neither {name}-ca.crt nor ca.crt (with its "
                                f"key) in {args.dir} signed {crt}; give --own-ca to sign it "
                                "with a new CA of the domain's own")
            renew(name, names, ca)
            continue
        if not exists:
            sign(ca_of(name), name, names or ["localhost", "127.0.0.1"], None).write(crt, key)
            print(f"{name}\t{fingerprint_pem(crt.read_bytes())}\tcreated")
            continue
        old = crt.read_bytes()
        if args.own_ca:
            own = ca_of(name)
            if not issued_by(old, own.cert_pem):  # from the deployment CA to the domain's own
                renew(name, names, own)
                continue
            ca: KeyPair | None = own
        else:
            ca = signer(name, old) or ca_at("ca")
        ends = not_after(old)
        if args.renew_within is not None and ends - time.time() < args.renew_within * 86400:
            if ca is None:
                raise UserError(f"{name}: {crt} ends within {args.renew_within} days and no CA "
                                f"in {args.dir} that signed it has its key; renew it where its "
                                "CA is")
            if min(time.time() + days * 86400, not_after(ca.cert_pem)) > ends + 86400:
                renew(name, names, ca)
                continue
            warn(f"{crt} ends within {args.renew_within} days, and so does its CA: a renewed "
                 "certificate would not last longer; make a new CA (docs/broker.md, \"TLS\")")
        print(f"{name}\t{fingerprint_pem(old)}\tkept")
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
