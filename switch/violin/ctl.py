"""violinctl: talks to a running violin-switchd over its control socket."""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import sys

from . import __version__

RUN_DIR = "/run/violin"


class CtlError(Exception):
    pass


def request(path: str, payload: dict, timeout: float = 5.0) -> dict:
    """Sends one request to the daemon's control socket and returns its answer."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
        sock.sendall(json.dumps(payload).encode() + b"\n")
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    except FileNotFoundError:
        raise CtlError(f"no control socket at {path}: is violin-switchd running for this network? "
                       f"(give the socket with -s or the network with -n)") from None
    except PermissionError:
        raise CtlError(f"permission denied on {path}: run as the daemon's user or a member of its "
                       f"group") from None
    except (ConnectionRefusedError, socket.timeout) as err:
        raise CtlError(f"the daemon behind {path} does not answer ({err}); check it with systemctl "
                       f"status") from None
    finally:
        sock.close()
    try:
        answer = json.loads(b"".join(chunks).decode())
    except ValueError:
        raise CtlError(f"unreadable answer from {path}") from None
    if not answer.get("ok"):
        raise CtlError(answer.get("error", "request refused"))
    return answer


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="violinctl", description="Control a running violin-switchd.")
    p.add_argument("-s", "--socket", help="control socket path (default: $VIOLIN_CONTROL_SOCKET, "
                                          f"or {RUN_DIR}/NETWORK.sock with -n)")
    p.add_argument("-n", "--network", help=f"network name: use {RUN_DIR}/NETWORK.sock")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)
    peers = sub.add_parser("peers", help="list, add or remove peers at run time").add_subparsers(
        dest="peers_cmd", required=True)
    peers.add_parser("list", help="list the peers")
    add = peers.add_parser("add", help="add a peer (no restart)")
    add.add_argument("name")
    add.add_argument("address", help="the peer's physical IPv4 address")
    add.add_argument("--port", type=int, help="the peer's UDP port (default: this daemon's port)")
    rm = peers.add_parser("remove", help="remove a peer (no restart); its MACs are forgotten")
    rm.add_argument("peer", help="peer name or ADDRESS:PORT")
    st = sub.add_parser("stats", help="counters (frames, bytes, drops by reason, FDB size)")
    st.add_argument("--json", action="store_true", help="print JSON")
    st.add_argument("--prometheus", action="store_true", help="print Prometheus text exposition")
    sub.add_parser("fdb", help="learnt MAC addresses")
    sub.add_parser("reload", help="re-read the config file (same as SIGHUP)")
    sub.add_parser("genkey", help="print a new random network key (64 hex digits)")
    return p


def socket_path(args: argparse.Namespace) -> str:
    if args.socket:
        return args.socket
    if args.network:
        return os.path.join(RUN_DIR, f"{args.network}.sock")
    env = os.environ.get("VIOLIN_CONTROL_SOCKET")
    if env:
        return env
    raise CtlError("which daemon? give its control socket with -s PATH or its network with -n NAME")


def _print_stats(stats: dict) -> None:
    for key, value in stats.items():
        if key != "drops":
            print(f"{key:20} {value}")
    for reason, count in sorted(stats["drops"].items()):
        print(f"drops.{reason:14} {count}")


def run(args: argparse.Namespace) -> int:
    if args.cmd == "genkey":
        print(secrets.token_hex(32))
        return 0
    path = socket_path(args)
    if args.cmd == "peers":
        if args.peers_cmd == "list":
            for peer in request(path, {"verb": "peers"})["peers"]:
                print(f"{peer['name']:20} {peer['address']}:{peer['port']:<6} {peer['origin']}")
        elif args.peers_cmd == "add":
            payload = {"verb": "peer-add", "name": args.name, "address": args.address}
            if args.port is not None:
                payload["port"] = args.port
            changed = request(path, payload)["changed"]
            print(f"peer {args.name} {'added' if changed else 'already present'}")
        else:
            changed = request(path, {"verb": "peer-remove", "peer": args.peer})["changed"]
            if not changed:
                raise CtlError(f"no peer {args.peer}; see 'violinctl peers list'")
            print(f"peer {args.peer} removed")
    elif args.cmd == "stats":
        if args.prometheus:
            sys.stdout.write(request(path, {"verb": "metrics"})["text"])
        elif args.json:
            print(json.dumps(request(path, {"verb": "stats"})["stats"], indent=2, sort_keys=True))
        else:
            _print_stats(request(path, {"verb": "stats"})["stats"])
    elif args.cmd == "fdb":
        for entry in request(path, {"verb": "fdb"})["fdb"]:
            print(f"{entry['mac']}  {entry['peer']:20} {entry['age']:.1f}s")
    elif args.cmd == "reload":
        answer = request(path, {"verb": "reload"})
        print(f"reloaded: added {answer['added']}, removed {answer['removed']}"
              + (f"; restart to apply {answer['needs_restart']}" if answer["needs_restart"] else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except CtlError as err:
        print(f"violinctl: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
