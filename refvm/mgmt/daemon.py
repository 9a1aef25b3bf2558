"""refvmd's listener: a unix socket (0600 for session, 0660 and a group for system), one thread per client.

Authentication is ``none``: the unix socket's file mode is the access control, as libvirtd's unix socket with
auth_unix_rw=none. ``--listen-tcp`` adds plain TCP without any authentication (libvirtd's listen_tcp with
auth_tcp=none), off by default and meant for test networks such as the migration tests' namespaces.
Drivers are opened once per URI and shared by all clients.
"""
from __future__ import annotations

import grp
import os
import socket
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit

from refvm.mgmt import errors
from refvm.mgmt.drivers.base import Driver


def runtime_dir() -> Path:
    """Where a session daemon puts its socket: $XDG_RUNTIME_DIR/refvm, else ~/.cache/refvm/run."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    return Path(base) / "refvm" if base else Path.home() / ".cache" / "refvm" / "run"


def default_socket(system: bool = False) -> Path:
    """The socket `refvmd` listens on and `refvm virsh` connects to when none is named."""
    return Path("/run/refvm/refvmd-sock") if system else runtime_dir() / "refvmd-sock"


class Daemon:
    """Accepts clients on one unix socket and serves each in its own thread."""

    def __init__(self, socket_path: Path, *, system: bool = False, group: str | None = None,
                 state_dir: Path | None = None, verbose: bool = False,
                 listen_tcp: tuple[str, int] | None = None) -> None:
        from refvm.mgmt.dispatch import table

        self.socket_path = Path(socket_path)
        self.system = system
        self.group = group
        self.state_dir = state_dir
        self.verbose = verbose
        self.handlers = table()
        self.default_uri = "refvm:///system" if system else "refvm:///session"
        self._drivers: dict[str, Driver] = {}
        self._drivers_lock = threading.Lock()
        self._listener: socket.socket | None = None
        #: --listen-tcp: plain TCP without authentication (libvirtd's listen_tcp, auth_tcp=none), test networks
        self.listen_tcp = listen_tcp
        self._tcp: socket.socket | None = None
        self._stopping = threading.Event()

    def log(self, text: str) -> None:
        if self.verbose:
            print(f"refvmd: {text}", file=sys.stderr, flush=True)

    # ---- drivers ----------------------------------------------------------------------------------------

    def open_driver(self, uri: str | None) -> Driver:
        """The shared driver for a URI (libvirt's "no connection driver available for URI" if none serves it)."""
        uri = uri or self.default_uri
        mode = "system" if self.system else "session"
        if urlsplit(uri).path.strip("/") != mode:
            # a session daemon must not manage /system state and vice versa (libvirtd serves its own mode)
            raise errors.VirError(errors.VIR_ERR_NO_CONNECT, uri)
        with self._drivers_lock:
            drv = self._drivers.get(uri)
            if drv is None:
                try:
                    from refvm.mgmt.drivers import open_driver
                except ImportError as exc:
                    raise errors.VirError(errors.VIR_ERR_NO_CONNECT, uri) from exc
                drv = open_driver(uri, str(self.state_dir) if self.state_dir else None)
                self._drivers[uri] = drv
            return drv

    # ---- socket -----------------------------------------------------------------------------------------

    def bind(self) -> None:
        """Create the socket with its mode set before anyone can connect (umask during bind)."""
        path = self.socket_path
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755 if self.system else 0o700)
        if path.is_socket():
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(path))
            except OSError:
                path.unlink()  # stale socket of a daemon that died
            else:
                raise OSError(f"{path}: another refvmd is listening there")
            finally:
                probe.close()
        # bound under a temporary name and renamed once listening: a client that sees the path can connect
        # (no ECONNREFUSED window between bind and listen)
        tmp = path.with_name(f".{path.name}~")  # 2 more characters: unix paths are short (108)
        tmp.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o117 if self.system else 0o177)
        try:
            sock.bind(str(tmp))
        finally:
            os.umask(old)
        if self.system:
            os.chmod(tmp, 0o660)
            if self.group:
                os.chown(tmp, -1, grp.getgrnam(self.group).gr_gid)
        else:
            os.chmod(tmp, 0o600)
        sock.listen(64)
        os.rename(tmp, path)
        self._listener = sock
        if self.listen_tcp is not None:
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                tcp.bind(self.listen_tcp)
                tcp.listen(64)
            except OSError:
                tcp.close()
                raise
            self._tcp = tcp

    def serve_forever(self) -> None:
        assert self._listener is not None, "bind() first"
        if self._tcp is not None:
            threading.Thread(target=self._accept, args=(self._tcp,), name="refvmd-accept-tcp", daemon=True).start()
        self._accept(self._listener)

    def _accept(self, listener: socket.socket) -> None:
        from refvm.mgmt.session import Session

        while not self._stopping.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                break
            session = Session(self, conn)
            threading.Thread(target=self._serve_client, args=(session,), name="refvmd-client", daemon=True).start()

    def _serve_client(self, session) -> None:
        try:
            session.serve()
        finally:
            session.sock.close()

    def stop(self) -> None:
        """Stop accepting, remove the socket, let drivers stop watching (domains keep running)."""
        self._stopping.set()
        for listener in (self._listener, self._tcp):
            if listener is not None:
                try:
                    listener.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                listener.close()
        try:
            self.socket_path.unlink()
        except FileNotFoundError:
            pass
        with self._drivers_lock:
            drivers, self._drivers = list(self._drivers.values()), {}
        for drv in drivers:
            drv.close()
