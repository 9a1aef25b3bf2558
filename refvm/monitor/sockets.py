"""Unix stream sockets for the monitors: one daemon thread that accepts (or dials) and pumps bytes.

Both monitors are byte streams with the same needs: listen on a path (or, for qtest, connect out
to a path the test listens on, as QEMU does for ``-qtest unix:PATH``), hand received bytes to a
protocol object on a single thread (so protocol state needs no locks), let any thread send (async
qtest IRQ lines, QMP events), and shut down promptly -- ``close()`` wakes the thread through a
socketpair and joins it, so a test never hangs on a blocked ``select``.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import stat
import threading
from collections.abc import Callable

__all__ = ["Connection", "StreamService", "listen_unix", "connect_unix"]

#: A peer that stops reading must not wedge a sender forever: give up after this long.
SEND_TIMEOUT = 10.0
_RECV_CHUNK = 65536
#: Most descriptors one message may carry (SCM_RIGHTS), as QEMU's socket chardev (TCP_MAX_FDS 16).
MAX_FDS = 16


def listen_unix(path: str, backlog: int = 8) -> socket.socket:
    """Bind and listen on ``path``, replacing a stale socket file (as QEMU does)."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


def connect_unix(path: str, timeout: float = 5.0) -> socket.socket:
    """Connect to a listening unix socket; errors read like QEMU's ``Failed to connect to 'P': ...``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except OSError as err:
        sock.close()
        raise ConnectionError(f"Failed to connect to '{path}': {err.strerror or err}") from None
    return sock


class Connection:
    """One peer. ``send`` is thread-safe and never raises: a dead peer is just closed."""

    def __init__(self, sock: socket.socket, service: StreamService) -> None:
        self.sock = sock
        self._service = service
        self._send_lock = threading.Lock()
        self.closed = False
        self.state: object = None  # protocol-private per-connection state
        #: Descriptors the peer sent with SCM_RIGHTS, oldest first; QMP getfd/add-fd take them, the rest are
        #: closed when the next message arrives without being used (QEMU keeps only the latest batch too).
        self.received_fds: list[int] = []

    def take_fd(self) -> int | None:
        """The oldest received descriptor (the caller owns it now), or None."""
        return self.received_fds.pop(0) if self.received_fds else None

    def send(self, data: bytes) -> bool:
        """Write all of ``data``; False (and the connection is dropped) if the peer is gone."""
        with self._send_lock:
            if self.closed:
                return False
            try:
                self.sock.sendall(data)
                return True
            except OSError:
                pass
        self._service._drop_later(self)
        return False

    def shutdown(self) -> None:
        """Close from our side (the service thread reaps it)."""
        self._service._drop_later(self)


class StreamService:
    """Serve one unix-socket endpoint on a daemon thread.

    Exactly one of ``listen_path`` / ``connect_path``. Callbacks run on the service thread:
    ``on_connect(conn)``, ``on_data(conn, bytes)``, ``on_close(conn)``. With ``max_clients=1``
    a second client waits in the backlog until the first leaves (a QEMU socket chardev takes
    one client at a time). A dialled (client-mode) connection is not re-dialled once closed.
    """

    def __init__(
        self,
        name: str,
        *,
        listen_path: str | None = None,
        connect_path: str | None = None,
        max_clients: int | None = None,
        on_connect: Callable[[Connection], None] | None = None,
        on_data: Callable[[Connection, bytes], None] | None = None,
        on_close: Callable[[Connection], None] | None = None,
    ) -> None:
        if (listen_path is None) == (connect_path is None):
            raise ValueError("exactly one of listen_path and connect_path")
        self.name = name
        self.listen_path = listen_path
        self.connect_path = connect_path
        self.max_clients = max_clients
        self._on_connect = on_connect or (lambda conn: None)
        self._on_data = on_data or (lambda conn, data: None)
        self._on_close = on_close or (lambda conn: None)
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._listener: socket.socket | None = None
        self._conns: list[Connection] = []
        self._to_drop: set[Connection] = set()
        self._lock = threading.Lock()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._pending_dial: socket.socket | None = None
        self.connected = threading.Event()  # set while at least one peer is connected

    # ---- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Listen or dial now (errors raise here, synchronously), then serve on a daemon thread."""
        if self.listen_path is not None:
            self._listener = listen_unix(self.listen_path)
            self._listener.setblocking(False)
            self._sel.register(self._listener, selectors.EVENT_READ, "accept")
        else:
            assert self.connect_path is not None
            self._pending_dial = connect_unix(self.connect_path)
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread = threading.Thread(target=self._run, name=f"refvm-{self.name}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving, close every connection, unlink our socket file, join the thread."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
        self._wake()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        if self._thread is None or not self._thread.is_alive():
            self._cleanup()

    @property
    def connections(self) -> list[Connection]:
        with self._lock:
            return list(self._conns)

    def broadcast(self, data: bytes, accept: Callable[[Connection], bool] = lambda c: True) -> None:
        """Send to every open connection for which ``accept(conn)`` holds."""
        for conn in self.connections:
            if accept(conn):
                conn.send(data)

    # ---- internals ----------------------------------------------------------------------------------

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def _drop_later(self, conn: Connection) -> None:
        with self._lock:
            self._to_drop.add(conn)
        self._wake()

    def _add(self, sock: socket.socket) -> None:
        sock.settimeout(SEND_TIMEOUT)
        conn = Connection(sock, self)
        with self._lock:
            self._conns.append(conn)
        self.connected.set()
        self._sel.register(sock, selectors.EVENT_READ, conn)
        self._update_accepting()
        self._on_connect(conn)

    def _drop(self, conn: Connection) -> None:
        with conn._send_lock:
            if conn.closed:
                return
            conn.closed = True
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(conn.sock)
        with contextlib.suppress(OSError):
            conn.sock.close()
        _close_all(conn.received_fds)
        with self._lock:
            if conn in self._conns:
                self._conns.remove(conn)
            if not self._conns:
                self.connected.clear()
        self._update_accepting()
        self._on_close(conn)

    def _update_accepting(self) -> None:
        """With a client limit, stop accepting while full so extra clients queue in the backlog."""
        if self._listener is None or self.max_clients is None or self._stopping:
            return
        full = len(self._conns) >= self.max_clients
        registered = self._listener in {k.fileobj for k in self._sel.get_map().values()}
        if full and registered:
            self._sel.unregister(self._listener)
        elif not full and not registered:
            self._sel.register(self._listener, selectors.EVENT_READ, "accept")

    def _run(self) -> None:
        try:
            if self._pending_dial is not None:
                sock, self._pending_dial = self._pending_dial, None
                self._add(sock)
            while not self._stopping:
                for key, _ in self._sel.select(timeout=1.0):
                    if self._stopping:
                        break
                    self._dispatch(key.data)
                with self._lock:
                    doomed, self._to_drop = self._to_drop, set()
                for conn in doomed:
                    self._drop(conn)
        finally:
            for conn in self.connections:
                self._drop(conn)
            self._cleanup()

    def _dispatch(self, tag: object) -> None:
        if tag == "wake":
            with contextlib.suppress(OSError):
                self._wake_r.recv(4096)
        elif tag == "accept":
            assert self._listener is not None
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            self._add(sock)
        elif isinstance(tag, Connection):
            try:
                data, fds = _recv_with_fds(tag.sock)
            except (BlockingIOError, InterruptedError, TimeoutError):
                return
            except OSError:
                data, fds = b"", []
            if fds:
                _close_all(tag.received_fds)  # an older batch nobody took
                tag.received_fds = fds
            if not data:
                self._drop(tag)
                return
            try:
                self._on_data(tag, data)
            except Exception:  # a protocol bug must not kill the service thread
                self._drop(tag)

    def _cleanup(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(self._listener)
            self._listener.close()
            self._listener = None
            if self.listen_path is not None:
                with contextlib.suppress(OSError):
                    os.unlink(self.listen_path)
        if self._pending_dial is not None:
            self._pending_dial.close()
            self._pending_dial = None
        for s in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                s.close()
        with contextlib.suppress(Exception):
            self._sel.close()


def _recv_with_fds(sock: socket.socket) -> tuple[bytes, list[int]]:
    """recv() that also collects SCM_RIGHTS descriptors (marked close-on-exec by the kernel)."""
    data, ancdata, _flags, _addr = sock.recvmsg(_RECV_CHUNK, socket.CMSG_SPACE(MAX_FDS * 4), socket.MSG_CMSG_CLOEXEC)
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % 4
            fds.extend(int.from_bytes(payload[i : i + 4], "little", signed=True) for i in range(0, usable, 4))
    return data, fds


def _close_all(fds: list[int]) -> None:
    while fds:
        with contextlib.suppress(OSError):
            os.close(fds.pop())
