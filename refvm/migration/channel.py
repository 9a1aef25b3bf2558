"""Migration URIs as QEMU 7.2 accepts them: exec:CMD, unix:PATH, tcp:HOST:PORT, as byte channels.

The source writes to the channel; the destination listens (unix, tcp) or runs the command and reads its
standard output (exec).  Errors are OSError/ValueError with QEMU's texts where it has one.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
from typing import BinaryIO

SCHEMES = ("exec", "unix", "tcp")


def split_uri(uri: str) -> tuple[str, str]:
    """("exec"|"unix"|"tcp", rest); ValueError for any other scheme."""
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


def connect(uri: str) -> Channel:
    """The source side: a writable channel to `uri`."""
    scheme, rest = split_uri(uri)
    if scheme == "exec":
        proc = subprocess.Popen(["/bin/sh", "-c", rest], stdin=subprocess.PIPE, start_new_session=True)
        assert proc.stdin is not None
        return Channel(proc.stdin, proc=proc)
    sock = socket.socket(socket.AF_UNIX if scheme == "unix" else socket.AF_INET)
    try:
        sock.connect(rest if scheme == "unix" else _inet(rest))
    except OSError:
        sock.close()
        raise
    return Channel(sock.makefile("wb"), sock=sock)


class Listener:
    """The destination side: listening (unix, tcp) or a command to run (exec) until `accept`."""

    def __init__(self, uri: str) -> None:
        self.scheme, self.rest = split_uri(uri)
        self.sock: socket.socket | None = None
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
        if self.sock is None:
            proc = subprocess.Popen(["/bin/sh", "-c", self.rest], stdout=subprocess.PIPE)
            assert proc.stdout is not None
            return Channel(proc.stdout, proc=proc)
        conn, _ = self.sock.accept()
        self.sock.close()
        if self.scheme == "unix":
            os.unlink(self.rest)
        return Channel(conn.makefile("rb"), sock=conn)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
