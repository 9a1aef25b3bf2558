"""Migration URIs as QEMU 7.2 accepts them: exec:CMD, unix:PATH, tcp:HOST:PORT, fd:NAME, as byte channels.

The source writes to the channel; the destination listens (unix, tcp), runs the command and reads its
standard output (exec) or reads a descriptor it already has (fd: a name given to `getfd`, or a number that
the process inherited).  Errors are OSError/ValueError with QEMU's texts where it has one.
"""
from __future__ import annotations

import mmap
import os
import signal
import socket
import stat
import subprocess
from collections.abc import Callable
from typing import BinaryIO

SCHEMES = ("exec", "unix", "tcp", "fd")

#: How much of the incoming buffer has its pages mapped before the source connects (MAP_POPULATE).
PREFAULT_MAX = 64 << 20

#: The source socket's send buffer: a RAM part (~1 MiB) in one send.  With the default (~208 KiB) the writing
#: thread needs the GIL back every 208 KiB, and waits up to the switch interval (5 ms) for it while the encoder
#: runs.  What it holds when the source finishes is at most this much not yet read by the destination.
SEND_BUFFER = 1 << 20

#: Resolves fd:NAME to a descriptor the channel then owns; KeyError when there is no such name.
FdLookup = Callable[[str], int]


def split_uri(uri: str) -> tuple[str, str]:
    """("exec"|"unix"|"tcp"|"fd", rest); ValueError for any other scheme."""
    scheme, sep, rest = uri.partition(":")
    if not sep or scheme not in SCHEMES or not rest:
        raise ValueError(uri)
    return scheme, rest


def _inet(rest: str) -> tuple[str, int]:
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"address '{rest}': expected HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


class Channel:
    """One open byte channel plus whatever must be cleaned up with it (a process, a listening socket)."""

    def __init__(self, stream: BinaryIO, proc: subprocess.Popen | None = None,
                 sock: socket.socket | None = None) -> None:
        self.stream, self.proc, self.sock = stream, proc, sock

    def close(self) -> int:
        """Close everything; returns the exec command's exit status (0 for sockets)."""
        try:
            self.stream.close()
        except OSError:
            pass
        if self.sock is not None:
            self.sock.close()
        return self.proc.wait() if self.proc is not None else 0

    def abort(self) -> None:
        """Cut the channel at once (migrate_cancel): the peer sees a truncated stream."""
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self.proc is not None and self.proc.poll() is None:
            try:  # the whole group: a shell's children hold the pipe open too
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass


def take_fd(rest: str, lookup: FdLookup | None) -> int:
    """fd:REST as QEMU reads it: digits are a descriptor number, anything else a name passed with getfd."""
    if rest.isdigit():
        return int(rest)
    if lookup is None:
        raise KeyError(rest)
    return lookup(rest)


def fd_channel(fd: int, mode: str) -> Channel:
    """A channel over a descriptor we own: a socket (so that abort can shut it down) or a pipe/file."""
    if stat.S_ISSOCK(os.fstat(fd).st_mode):
        sock = socket.socket(fileno=fd)
        sock.setblocking(True)
        return Channel(sock.makefile(mode), sock=sock)
    return Channel(os.fdopen(fd, mode))


def connect(uri: str, lookup: FdLookup | None = None) -> Channel:
    """The source side: a writable channel to `uri` (KeyError for an unknown fd:NAME)."""
    scheme, rest = split_uri(uri)
    if scheme == "fd":
        return fd_channel(take_fd(rest, lookup), "wb")
    if scheme == "exec":
        proc = subprocess.Popen(["/bin/sh", "-c", rest], stdin=subprocess.PIPE, start_new_session=True)
        assert proc.stdin is not None
        return Channel(proc.stdin, proc=proc)
    sock = socket.socket(socket.AF_UNIX if scheme == "unix" else socket.AF_INET)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        sock.connect(rest if scheme == "unix" else _inet(rest))
    except OSError:
        sock.close()
        raise
    return Channel(sock.makefile("wb"), sock=sock)


class Listener:
    """The destination side: listening (unix, tcp) or a command to run (exec) until `accept`."""

    def __init__(self, uri: str, lookup: FdLookup | None = None) -> None:
        self.scheme, self.rest = split_uri(uri)
        self.sock: socket.socket | None = None
        self.fd = -1
        if self.scheme == "fd":
            self.fd = take_fd(self.rest, lookup)
            os.fstat(self.fd)  # a descriptor that is not open fails now, as a bind error would
            return
        if self.scheme == "exec":
            return
        self.sock = socket.socket(socket.AF_UNIX if self.scheme == "unix" else socket.AF_INET)
        if self.scheme == "unix":
            if os.path.exists(self.rest):
                os.unlink(self.rest)
            self.sock.bind(self.rest)
        else:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind(_inet(self.rest))
        self.sock.listen(1)

    def accept(self) -> Channel:
        """Wait for the source (or start the command) and return a readable channel."""
        if self.scheme == "fd":
            return fd_channel(self.fd, "rb")
        if self.sock is None:
            proc = subprocess.Popen(["/bin/sh", "-c", self.rest], stdout=subprocess.PIPE)
            assert proc.stdout is not None
            return Channel(proc.stdout, proc=proc)
        conn, _ = self.sock.accept()
        self.sock.close()
        if self.scheme == "unix":
            os.unlink(self.rest)
        return Channel(conn.makefile("rb"), sock=conn)

    def address(self) -> list[dict[str, str]]:
        """query-migrate's `socket-address` while listening (QEMU's SocketAddress shapes)."""
        if self.scheme == "unix":
            return [{"type": "unix", "path": self.rest}]
        if self.scheme == "tcp" and self.sock is not None:
            host, port = self.sock.getsockname()[:2]
            return [{"type": "inet", "host": host, "port": str(port)}]
        return []

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()


def prefaulted(size: int) -> mmap.mmap:
    """A buffer of ``min(size, PREFAULT_MAX)`` bytes whose pages are mapped now, in one call.  Reading the
    stream into fresh memory costs a page fault per 4 KiB as it arrives (on kvm-pvm about 10 us each: the
    destination then reads at a third of the speed, and the source's writes wait for it, also while its
    guest is stopped); mapped while the destination waits for the source, they cost nothing later."""
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0)
    return mmap.mmap(-1, max(1, min(size, PREFAULT_MAX)), flags=flags)


def read_all(stream: BinaryIO, most: int, buf: mmap.mmap) -> bytes | memoryview:
    """The stream up to its end or ``most`` bytes: a view of ``buf`` when it fits there (no copy), else what
    it holds followed by the rest, read in one call."""
    view = memoryview(buf)
    got = 0
    while got < min(len(buf), most):
        n = stream.readinto(view[got:most])  # type: ignore[attr-defined]
        if not n:
            return view[:got]
        got += n
    if got == most:
        return view[:got]
    return bytes(view[:got]) + stream.read(most - got)
