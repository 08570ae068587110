"""violin-switchd: the I/O around the sans-I/O switch.

One data thread serves both directions from one epoll set (the TAP and the UDP socket): a ping's
request and its reply are handled by the same thread, so no frame waits for another thread to
wake up or for the GIL to be handed over (docs/switch.md, "Latency"). A thread serves the control
socket; the main thread waits for signals (SIGHUP reloads the config file, SIGTERM/SIGINT stop).
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import select
import signal
import socket
import socketserver
import sys
import threading
from pathlib import Path

from . import __version__
from .codec import Drop, MAX_DATAGRAM
from .config import Config, load, parse_endpoint, with_overrides
from .control import MAX_REQUEST, ControlHandler
from .core import Settings, Switch
from .errors import ConfigError, ViolinError
from .metrics import exposition, registry_for
from .native import IMPORT_ERROR, NativeSwitch, available as native_available
from .tap import Tap, open_tap

log = logging.getLogger("violin")
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33
IP_MTU_DISCOVER, IP_PMTUDISC_DONT = 10, 0  # <linux/in.h>
SO_NO_CHECK = 11  # <asm-generic/socket.h>


def make_socket(config: Config) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for force, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, config.socket_buffer)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, plain, config.socket_buffer)
    # datagrams larger than the link MTU are fragmented by the kernel, never refused
    sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT)
    if config.cipher != "none":
        # no UDP checksum: the AEAD tag already covers every byte of the datagram, and computing
        # the checksum of a 64 KB super-frame on every send and receive is CPU the data path needs
        sock.setsockopt(socket.SOL_SOCKET, SO_NO_CHECK, 1)
    try:
        sock.bind((config.listen, config.port))
    except OSError as err:
        sock.close()
        raise ConfigError(f"cannot listen on {config.listen}:{config.port}: {err.strerror}; check "
                          f"'listen' (an address of this host) and 'port' (free)") from None
    rcv = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2
    snd = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) // 2
    if rcv < config.socket_buffer or snd < config.socket_buffer:
        log.warning("socket buffers are %d/%d bytes (rcv/snd), less than the %d asked; raise "
                    "net.core.rmem_max and net.core.wmem_max", rcv, snd, config.socket_buffer)
    return sock


def check_datapath(config: Config) -> None:
    if config.datapath == "c" and not native_available():
        raise ConfigError(f"{config.source}: datapath: c, but the C data path is not usable in this "
                          f"installation ({IMPORT_ERROR}); install libsodium23 and libssl3, or "
                          f"reinstall violin-switch built where a C compiler, libsodium-dev and "
                          f"libssl-dev are present, or set 'datapath: python'")


class Daemon:
    def __init__(self, config: Config, config_path: Path | None) -> None:
        self.config = config
        self.config_path = config_path
        settings = Settings(config.network_id, config.effective_sender_id(), config.secret(),
                            config.cipher, config.fdb_ageing, config.fdb_max_entries)
        if config.datapath == "c":
            check_datapath(config)
            self.switch: Switch = NativeSwitch(settings, config.peer_objects())
        else:
            self.switch = Switch(settings, config.peer_objects())
        self.registry = registry_for(self.switch, config.network)
        self.tap: Tap | None = None
        self.sock: socket.socket | None = None
        self.control: socketserver.UnixStreamServer | None = None

    # ------------------------------------------------------------------ data path
    def forward_c(self) -> None:
        """The data path in C: ``Engine.run`` serves both directions without the GIL until stop."""
        try:
            self.switch.engine.run()
        except OSError as err:
            log.error("reading TAP %s failed: %s; stopping", self.tap.name, err.strerror)
            os.kill(os.getpid(), signal.SIGTERM)

    def forward(self) -> None:
        """The data path in Python (``datapath: python``): one thread serves both directions from
        one epoll set.

        Each wake-up handles at most one frame per ready descriptor and goes back to ``poll``
        (level-triggered, so a queue that is not empty is reported again at once): no read is
        tried on an empty descriptor, so the usual path raises no exception. A reply that the
        kernel queues on the TAP while the request is written to it is read by the same thread
        right after, with no other thread to wake and no GIL to hand over.
        """
        tap_fd, sock, switch = self.tap.fd, self.sock, self.switch
        os.set_blocking(tap_fd, False)
        tbuf = bytearray(MAX_DATAGRAM + 64)
        tview, tbufs = memoryview(tbuf), [tbuf]
        rbuf = bytearray(MAX_DATAGRAM + 64)
        rview = memoryview(rbuf)
        readv, write, sendto, recvfrom_into = os.readv, os.write, sock.sendto, sock.recvfrom_into
        from_tap, from_peer = switch.from_tap, switch.from_peer
        tx, rx = switch.tx, switch.rx
        dontwait = socket.MSG_DONTWAIT
        poller = select.epoll(2)
        poller.register(tap_fd, select.EPOLLIN)
        poller.register(sock.fileno(), select.EPOLLIN)
        poll = poller.poll
        while True:
            for fd, _ in poll():
                if fd == tap_fd:
                    try:
                        n = readv(tap_fd, tbufs)
                    except BlockingIOError:
                        continue
                    except OSError as err:
                        if err.errno == errno.EINTR:
                            continue
                        log.error("reading TAP %s failed: %s; stopping", self.tap.name, err.strerror)
                        os.kill(os.getpid(), signal.SIGTERM)
                        return
                    datagram, targets = from_tap(tview[:n])
                    for target in targets:
                        try:
                            sendto(datagram, target)
                            tx.datagrams += 1
                        except OSError as err:
                            switch.send_failed("too_big" if err.errno == errno.EMSGSIZE else "send_error")
                else:
                    try:
                        n, source = recvfrom_into(rbuf, 0, dontwait)
                    except OSError:
                        continue  # nothing after all, or an ICMP error reported on the socket
                    try:
                        frame = from_peer(source, rview[:n])
                    except Drop:
                        continue
                    try:
                        write(tap_fd, frame)
                        rx.frames += 1
                        rx.bytes += len(frame)
                    except OSError:
                        rx.drops["tap_write"] += 1

    # ------------------------------------------------------------------ control
    def reload(self) -> dict:
        if self.config_path is None:
            raise ValueError("started without a config file; nothing to reload")
        try:
            new = load(self.config_path)
        except ConfigError as err:
            log.error("reload refused, keeping the running config: %s", err)
            raise ValueError(f"reload refused, running config kept: {err}") from None
        fixed = ("network", "network_id", "key_file", "tap", "listen", "port", "cipher", "offload",
                 "datapath", "sender_id", "socket_buffer", "control_socket", "metrics")
        needs_restart = [k for k in fixed if getattr(new, k) != getattr(self.config, k)]
        if needs_restart:
            log.warning("settings %s changed in %s: they apply after a restart", ", ".join(needs_restart),
                        self.config_path)
        added, removed = self.switch.replace_config_peers(new.peer_objects())
        self.switch.set_ageing(new.fdb_ageing)
        log.info("config reloaded: peers added %s, removed %s", added or "none", removed or "none")
        return {"added": added, "removed": removed, "needs_restart": needs_restart}

    def start_control(self, path: Path) -> None:
        handler = ControlHandler(self.switch, lambda: exposition(self.registry),
                                 self.reload if self.config_path else None, self.config.port)

        class Connection(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                line = self.rfile.readline(MAX_REQUEST + 1)
                if line:
                    self.wfile.write(handler.handle(line))

        if path.is_socket():
            probe = socket.socket(socket.AF_UNIX)
            try:
                probe.connect(str(path))
                raise ConfigError(f"control socket {path} is in use by another daemon; stop it or "
                                  f"choose another control_socket")
            except (ConnectionRefusedError, FileNotFoundError):
                path.unlink(missing_ok=True)
            finally:
                probe.close()
        try:
            old = os.umask(0o117)
            try:
                server = socketserver.ThreadingUnixStreamServer(str(path), Connection)
            finally:
                os.umask(old)
        except OSError as err:
            raise ConfigError(f"cannot create the control socket {path}: {err.strerror}; its "
                              f"directory must exist and be writable by uid {os.getuid()}") from None
        server.daemon_threads = True
        self.control = server
        threading.Thread(target=server.serve_forever, name="control", daemon=True).start()

    # ------------------------------------------------------------------ life
    def run(self) -> int:
        config = self.config
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP, signal.SIGTERM, signal.SIGINT})
        self.tap = open_tap(config.tap, config.offload)
        self.sock = make_socket(config)
        if config.control_socket:
            self.start_control(config.control_socket)
        if config.metrics:
            from prometheus_client import start_http_server

            start_http_server(config.metrics[1], config.metrics[0], registry=self.registry)
        forward = self.forward
        if isinstance(self.switch, NativeSwitch):
            os.set_blocking(self.tap.fd, False)
            self.switch.attach(self.tap.fd, self.sock.fileno())
            forward = self.forward_c
        threading.Thread(target=forward, name="forward", daemon=True).start()
        log.info("violin-switchd %s up: network %s (id %d), TAP %s, %s:%d, %d peer(s), cipher %s, "
                 "data path %s", __version__, config.network, config.network_id, config.tap,
                 config.listen, config.port, len(self.switch.peers), config.cipher, config.datapath)
        try:
            while True:
                sig = signal.sigwait({signal.SIGHUP, signal.SIGTERM, signal.SIGINT})
                if sig != signal.SIGHUP:
                    log.info("signal %d: stopping; counters %s", sig, self.switch.stats())
                    if isinstance(self.switch, NativeSwitch):
                        self.switch.engine.stop()
                    return 0
                try:
                    self.reload()
                except ValueError:
                    pass
        finally:
            if self.control is not None:
                self.control.server_close()
                config.control_socket.unlink(missing_ok=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="violin-switchd", description=(
        "VIOLIN virtual switch daemon: carries the Ethernet frames of one virtual domain between "
        "this host's TAP and the daemons of the other hosts, in authenticated UDP datagrams."))
    p.add_argument("-c", "--config", type=Path, required=True, help="YAML config file")
    p.add_argument("--tap", help="TAP device (overrides 'tap')")
    p.add_argument("--listen", help="this host's physical address (overrides 'listen')")
    p.add_argument("--port", type=int, help="UDP port (overrides 'port')")
    p.add_argument("--control-socket", type=Path, help="control socket path (overrides 'control_socket')")
    p.add_argument("--metrics", help="serve Prometheus text on ADDRESS:PORT (overrides 'metrics')")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    p.add_argument("--check", action="store_true", help="validate the config and key file, then exit")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load(args.config)
        metrics = parse_endpoint(args.metrics, "--metrics") if args.metrics else None
        config = with_overrides(config, tap=args.tap, listen=args.listen, port=args.port,
                                control_socket=args.control_socket, metrics=metrics,
                                log_level=args.log_level)
        logging.basicConfig(level=config.log_level.upper(), stream=sys.stderr,
                            format=f"%(levelname)s violin-switchd[{config.network}] %(message)s")
        if args.check:
            config.secret()
            check_datapath(config)
            print(f"{args.config}: ok: network {config.network} (id {config.network_id}), TAP {config.tap}, "
                  f"{config.listen}:{config.port}, {len(config.peers)} peer(s), data path {config.datapath}")
            return 0
        return Daemon(config, args.config).run()
    except ValueError as err:
        print(f"violin-switchd: error: {err}", file=sys.stderr)
        return 2
    except ViolinError as err:
        print(f"violin-switchd: error: {err}", file=sys.stderr)
        return err.exit_status


if __name__ == "__main__":
    sys.exit(main())
