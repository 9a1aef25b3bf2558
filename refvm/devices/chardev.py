"""Character backends: where a UART's bytes go on the host, spelled like QEMU's ``-chardev``.

A :class:`Chardev` carries bytes both ways: :meth:`Chardev.write` (guest -> host) is called on the
vCPU thread and must not block for long; host -> guest bytes are read by a backend thread and
handed to the receiver installed with :meth:`Chardev.set_receiver` (the UART, which buffers and
locks). Input that arrives before a receiver is set is kept and delivered on ``set_receiver``,
so nothing typed or pasted early is lost.

:func:`parse_chardev_option` and :func:`parse_serial_option` read QEMU's spellings into a
:class:`ChardevSpec`; :func:`open_chardev` turns a spec into a backend.
"""

from __future__ import annotations

import os
import select
import socket
import sys
import termios
import threading
import tty
from collections.abc import Callable

from refvm.devices.chardev_opts import ChardevSpec, parse_chardev_option, parse_serial_option

__all__ = [
    "Chardev",
    "NullChardev",
    "FileChardev",
    "StdioChardev",
    "PtyChardev",
    "SocketChardev",
    "ChardevSpec",
    "parse_chardev_option",
    "parse_serial_option",
    "open_chardev",
]

Receiver = Callable[[bytes], None]
_PENDING_LIMIT = 1 << 20  # bytes of early input kept before a receiver exists
_SEND_TIMEOUT = 2.0  # seconds a socket client may stall guest output before bytes are dropped
_MUX_HELP = b"\r\nC-a h    print this help\r\nC-a x    exit emulator\r\nC-a C-a  send C-a\r\n"
# Input flags QEMU's stdio backend clears: raw bytes in, no flow control, no CR/NL mapping.
_RAW_IFLAGS = termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP
_RAW_IFLAGS |= termios.INLCR | termios.IGNCR | termios.ICRNL | termios.IXON


class Chardev:
    """Base class: receiver plumbing, an optional log file, close()."""

    def __init__(self, label: str = "", logfile: str | None = None) -> None:
        self.label = label
        self._rx_lock = threading.Lock()
        self._receiver: Receiver | None = None
        self._pending: list[bytes] = []
        self._pending_len = 0
        self._log = open(logfile, "ab", buffering=0) if logfile else None  # noqa: SIM115
        self.closed = False

    # guest -> host
    def write(self, data: bytes) -> None:
        """Send guest output to the host side; never raises for a vanished peer."""
        if self.closed or not data:
            return
        try:
            self._write(bytes(data))
        except OSError:
            return  # closed under us or host side gone: guest output is dropped, as in QEMU
        if self._log is not None:
            self._log.write(data)

    def _write(self, data: bytes) -> None:
        raise NotImplementedError

    # host -> guest
    def set_receiver(self, callback: Receiver | None) -> None:
        """Install the consumer of host input; early input is flushed to it at once, in order."""
        with self._rx_lock:
            self._receiver = callback
            if callback is None:
                return
            pending, self._pending, self._pending_len = self._pending, [], 0
            for chunk in pending:
                callback(chunk)

    def _deliver(self, data: bytes) -> None:
        """Called by backend threads with bytes from the host."""
        if not data:
            return
        with self._rx_lock:
            if self._receiver is not None:
                self._receiver(data)
            elif self._pending_len + len(data) <= _PENDING_LIMIT:
                self._pending.append(data)
                self._pending_len += len(data)

    def close(self) -> None:
        """Stop threads, release host resources. Idempotent."""
        self.closed = True
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Chardev:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _FdReader:
    """A daemon thread that reads an fd and forwards bytes; a self-pipe makes stop() prompt."""

    def __init__(self, fd: int, on_data: Callable[[bytes], None], name: str) -> None:
        self.fd = fd
        self._on_data = on_data
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                try:
                    r, _, _ = select.select([self.fd, self._wake_r], [], [])
                    if self._wake_r in r:
                        return
                    data = os.read(self.fd, 4096)
                except BlockingIOError:
                    continue
                except (OSError, ValueError):
                    return  # EBADF (stdin closed), EIO (pty slave gone): no more input
                if not data:
                    return  # EOF: the host side will never send more
                self._on_data(data)
        finally:
            os.close(self._wake_r)

    def stop(self) -> None:
        if self._wake_w < 0:
            return
        try:
            os.write(self._wake_w, b"x")
        except BrokenPipeError:
            pass  # the reader already ended (EOF on its fd) and closed the other end
        finally:
            if threading.current_thread() is not self._thread:
                self._thread.join(timeout=2)
            os.close(self._wake_w)
            self._wake_w = -1


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class NullChardev(Chardev):
    """Discards output, never produces input (``-chardev null``)."""

    def _write(self, data: bytes) -> None:
        pass


class FileChardev(Chardev):
    """Guest output to a file (``-chardev file,path=P``); truncates unless ``append``."""

    def __init__(self, path: str, append: bool = False, label: str = "", logfile: str | None = None) -> None:
        super().__init__(label, logfile)
        self.path = path
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
        self._fd = os.open(path, flags, 0o666)

    def _write(self, data: bytes) -> None:
        _write_all(self._fd, data)

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


class StdioChardev(Chardev):
    """The terminal we were started from.

    When stdin is a tty it is put in the same mode QEMU uses: no echo, no line editing, no
    CR->NL mapping, output post-processing kept (so "\\n" still returns the carriage) and
    ISIG kept unless ``signal=False`` (so Ctrl-C still kills us, as with QEMU's default). The
    mode is restored on close and at interpreter exit.

    With ``mux=True`` (``mon:stdio``) Ctrl-A is an escape like QEMU's mux: ``C-a x`` quits (calls
    ``on_quit``), ``C-a C-a`` sends one Ctrl-A, ``C-a h`` prints help; others are swallowed.
    """

    ESCAPE = 0x01

    def __init__(
        self,
        label: str = "",
        signal: bool = True,
        mux: bool = False,
        on_quit: Callable[[], None] | None = None,
        logfile: str | None = None,
        in_fd: int | None = None,
        out_fd: int | None = None,
    ) -> None:
        super().__init__(label, logfile)
        self._in = sys.stdin.fileno() if in_fd is None else in_fd
        self._out = sys.stdout.fileno() if out_fd is None else out_fd
        self.mux = mux
        self.on_quit = on_quit
        self._escaped = False
        self._saved_tty: list | None = None
        if os.isatty(self._in):
            self._saved_tty = termios.tcgetattr(self._in)
            mode = termios.tcgetattr(self._in)
            mode[tty.IFLAG] &= ~_RAW_IFLAGS
            mode[tty.OFLAG] |= termios.OPOST
            mode[tty.LFLAG] &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.IEXTEN)
            if not signal:
                mode[tty.LFLAG] &= ~termios.ISIG
            mode[tty.CC][termios.VMIN] = 1
            mode[tty.CC][termios.VTIME] = 0
            termios.tcsetattr(self._in, termios.TCSANOW, mode)
            import atexit

            atexit.register(self._restore_tty)
        self._reader = _FdReader(self._in, self._on_input, f"chardev-stdio-{label}")

    def _restore_tty(self) -> None:
        if self._saved_tty is not None:
            try:
                termios.tcsetattr(self._in, termios.TCSANOW, self._saved_tty)
            except termios.error:
                pass
            self._saved_tty = None

    def _on_input(self, data: bytes) -> None:
        if not self.mux:
            self._deliver(data)
            return
        out = bytearray()
        for b in data:
            if self._escaped:
                self._escaped = False
                if b == self.ESCAPE:
                    out.append(b)
                elif b in (ord("x"), ord("X")):
                    self._deliver(bytes(out))
                    self._quit()
                    return
                elif b in (ord("h"), ord("?")):
                    self._write(b"\r\nC-a h    print this help\r\nC-a x    exit emulator\r\nC-a C-a  send C-a\r\n")
            elif b == self.ESCAPE:
                self._escaped = True
            else:
                out.append(b)
        self._deliver(bytes(out))

    def _quit(self) -> None:
        self._restore_tty()
        self._write(b"QEMU: Terminated\r\n")
        if self.on_quit is not None:
            self.on_quit()
        else:
            os._exit(0)  # what QEMU does for C-a x; no machine is listening

    def _write(self, data: bytes) -> None:
        try:
            _write_all(self._out, data)
        except OSError:
            pass  # stdout closed: drop, like QEMU

    def close(self) -> None:
        if not self.closed:
            self._reader.stop()
            self._restore_tty()
        super().close()


class PtyChardev(Chardev):
    """A new pseudo-terminal; the guest console is its slave side (``-chardev pty``).

    We keep the slave open ourselves so reads of the master never see EIO while no client is
    attached, and guest output written before a client attaches waits in the pty. The master is
    non-blocking: once the pty buffer is full further output is dropped (counted in
    :attr:`dropped`) rather than stalling the vCPU, as QEMU drops output while disconnected.
    """

    def __init__(self, label: str = "", logfile: str | None = None, announce: bool = True) -> None:
        super().__init__(label, logfile)
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo of guest output back to the guest, no line discipline
        os.set_blocking(self._master, False)
        self.path = os.ttyname(self._slave)
        self.dropped = 0
        if announce:
            print(f"char device redirected to {self.path} (label {label})", file=sys.stderr, flush=True)
        self._reader = _FdReader(self._master, self._deliver, f"chardev-pty-{label}")

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self._master, view)
            except (BlockingIOError, OSError):
                self.dropped += len(view)
                return
            view = view[n:]

    def close(self) -> None:
        if not self.closed:
            self._reader.stop()
            os.close(self._master)
            os.close(self._slave)
        super().close()


class SocketChardev(Chardev):
    """A stream socket (``-chardev socket``): unix ``path`` or tcp ``host``/``port``.

    As a server it serves one client at a time; a second client waits in the listen backlog until
    the first disconnects (QEMU behaves the same). ``wait=True`` blocks in the constructor until
    the first client connects. Output with no client connected is dropped.
    """

    def __init__(
        self,
        path: str | None = None,
        host: str | None = None,
        port: int | None = None,
        server: bool = True,
        wait: bool = False,
        nodelay: bool = False,
        label: str = "",
        logfile: str | None = None,
    ) -> None:
        super().__init__(label, logfile)
        if (path is None) == (host is None and port is None):
            raise ValueError("socket chardev needs either path or host/port")
        self.path = path
        self.nodelay = nodelay
        self._tx_lock = threading.Lock()
        self._client: socket.socket | None = None
        self._listener: socket.socket | None = None
        self._wake_r, self._wake_w = os.pipe()
        family = socket.AF_UNIX if path is not None else socket.AF_INET
        addr: str | tuple[str, int] = path if path is not None else (host or "0.0.0.0", int(port or 0))
        if server:
            lst = socket.socket(family, socket.SOCK_STREAM)
            if family == socket.AF_UNIX:
                if os.path.exists(path):  # type: ignore[arg-type]
                    os.unlink(path)  # type: ignore[arg-type]
            else:
                lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            lst.bind(addr)
            lst.listen(1)
            self._listener = lst
            self.address = lst.getsockname()
            if wait:
                print(f"QEMU waiting for connection on: {self._describe()}", file=sys.stderr, flush=True)
                conn, _ = lst.accept()
                self._set_client(conn)
        else:
            conn = socket.socket(family, socket.SOCK_STREAM)
            conn.connect(addr)
            self.address = conn.getpeername()
            self._set_client(conn)
        self._thread = threading.Thread(target=self._run, name=f"chardev-socket-{label}", daemon=True)
        self._thread.start()

    def _describe(self) -> str:
        if self.path is not None:
            return f"disconnected:unix:{self.path},server=on"
        return f"disconnected:tcp:{self.address[0]}:{self.address[1]},server=on"

    @property
    def connected(self) -> bool:
        return self._client is not None

    def _set_client(self, conn: socket.socket) -> None:
        if self.nodelay and conn.family != socket.AF_UNIX:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.settimeout(_SEND_TIMEOUT)  # a client that stops reading must not wedge the vCPU
        with self._tx_lock:
            self._client = conn

    def _drop_client(self) -> None:
        with self._tx_lock:
            conn, self._client = self._client, None
        if conn is not None:
            conn.close()

    def _run(self) -> None:
        while not self.closed:
            client = self._client
            watch: list = [self._wake_r]
            if client is not None:
                watch.append(client)
            elif self._listener is not None:
                watch.append(self._listener)
            else:
                return  # a client-mode socket whose peer went away
            r, _, _ = select.select(watch, [], [])
            if self._wake_r in r:
                return
            if client is None:
                try:
                    conn, _ = self._listener.accept()  # type: ignore[union-attr]
                except OSError:
                    continue  # the client gave up between select and accept
                self._set_client(conn)
                continue
            try:
                data = client.recv(4096)
            except OSError:
                data = b""
            if not data:
                self._drop_client()
                continue
            self._deliver(data)

    def _write(self, data: bytes) -> None:
        with self._tx_lock:
            conn = self._client
            if conn is None:
                return
            try:
                conn.sendall(data)
            except OSError:
                pass  # the reader thread notices the disconnect and drops the client

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        os.write(self._wake_w, b"x")
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=2)
        self._drop_client()
        if self._listener is not None:
            self._listener.close()
            if self.path is not None and os.path.exists(self.path):
                os.unlink(self.path)
        os.close(self._wake_r)
        os.close(self._wake_w)
        super().close()


# ---------------------------------------------------------------------------- option parsing
def open_chardev(
    spec: ChardevSpec | str,
    registry: dict[str, Chardev] | None = None,
    on_quit: Callable[[], None] | None = None,
) -> Chardev:
    """Create the backend a spec describes.

    ``chardev:ID`` specs are resolved in ``registry`` (the machine's ``-chardev`` table). A
    ``none`` spec means "no device at all" and is the caller's to handle: it raises here.
    """
    if isinstance(spec, str):
        spec = parse_chardev_option(spec)
    label = spec.id or ""
    b = spec.backend
    if b == "null":
        return NullChardev(label, spec.logfile)
    if b == "file":
        assert spec.path is not None
        return FileChardev(spec.path, spec.append, label, spec.logfile)
    if b == "stdio":
        return StdioChardev(label, signal=spec.signal, mux=spec.mux, on_quit=on_quit, logfile=spec.logfile)
    if b == "pty":
        return PtyChardev(label, spec.logfile)
    if b == "socket":
        sock_args = {k: getattr(spec, k) for k in ("path", "host", "port", "server", "wait", "nodelay")}
        return SocketChardev(**sock_args, label=label, logfile=spec.logfile)
    if b == "chardev":
        if registry is None or label not in registry:
            raise ValueError(f"chardev '{label}' not found")
        return registry[label]
    raise ValueError(f"cannot open a chardev for backend '{b}'")
