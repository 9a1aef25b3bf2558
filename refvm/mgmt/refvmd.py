"""`refvmd`: the management daemon. Runs in the foreground unless --daemon; stops cleanly on SIGTERM/SIGINT.

Domains keep running when refvmd stops, as with libvirtd: a new refvmd re-attaches to them.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from refvm.mgmt import deviations
from refvm.mgmt.daemon import Daemon, default_socket

DESCRIPTION = """refvmd: a libvirt-compatible management daemon for refvm and QEMU.
Clients are the real virsh and libvirt-python, e.g.
  virsh -c 'refvm+unix:///session?socket=SOCKET' list --all
  refvm virsh list --all        (the same, with the default socket)"""


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"'{text}' is not HOST:PORT")
    return host, int(port)


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="refvmd", description=DESCRIPTION,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--daemon", "-d", action="store_true", help="detach and run in the background")
    ap.add_argument("--socket", type=Path, help=f"unix socket to listen on (default: {default_socket()})")
    ap.add_argument("--state-dir", type=Path, help="where definitions and status files live "
                    "(default: per URI, under the user's config/runtime directories or /var/lib, /run)")
    ap.add_argument("--system", action="store_true",
                    help="serve refvm:///system: socket mode 0660 (default /run/refvm/refvmd-sock)")
    ap.add_argument("--group", help="group owning the --system socket")
    ap.add_argument("--x-deviation", action="append", default=[], metavar="NAME",
                    help="break one libvirt API behaviour on purpose, to show the libvirt_api suite catches it "
                         "(names: see refvm/mgmt/deviations.py)")
    ap.add_argument("--listen-tcp", metavar="HOST:PORT", type=_host_port,
                    help="also accept clients on plain TCP, WITHOUT authentication (libvirtd's listen_tcp with "
                         "auth_tcp=none): for isolated test networks only (DRIVER+tcp://HOST:PORT/session)")
    ap.add_argument("--verbose", "-v", action="store_true", help="log connections and protocol errors to stderr")
    return ap.parse_args(argv)


def _detach() -> None:
    """Classic double fork: the parent returns to the shell once the socket is already listening."""
    if os.fork():
        os._exit(0)
    os.setsid()
    if os.fork():
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    ns = parse(sys.argv[1:] if argv is None else argv)
    try:
        deviations.enable(ns.x_deviation)
    except ValueError as exc:
        print(f"refvmd: --x-deviation: {exc}", file=sys.stderr)
        return 1
    daemon = Daemon(ns.socket or default_socket(ns.system), system=ns.system, group=ns.group,
                    state_dir=ns.state_dir, verbose=ns.verbose, listen_tcp=ns.listen_tcp)
    try:
        daemon.bind()
    except (OSError, KeyError) as exc:
        print(f"refvmd: cannot listen on {daemon.socket_path}: {exc}", file=sys.stderr)
        return 1
    if ns.daemon:
        _detach()
    stop = threading.Event()

    def on_signal(signum, frame) -> None:
        stop.set()
        daemon.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = threading.Thread(target=daemon.serve_forever, name="refvmd-accept", daemon=True)
    server.start()
    daemon.log(f"listening on {daemon.socket_path}")
    while not stop.wait(1.0):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
