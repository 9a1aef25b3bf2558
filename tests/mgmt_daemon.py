"""Helpers for the refvmd tests: start a real refvmd process, talk raw RPC to it, open libvirt clients.

Raw packets are built here with struct, independently of refvm.mgmt.rpc, so that the tests check the
daemon's wire format instead of trusting its own encoder.
"""
from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

REMOTE = 0x20008086
KEEPALIVE = 0x6B656570


class Refvmd:
    """A refvmd subprocess with its own socket and state directory."""

    def __init__(self, tmp: Path, prefix: list[str] | None = None, env: dict[str, str] | None = None,
                 args: list[str] | None = None) -> None:
        self.socket = tmp / "refvmd-sock"
        self.state_dir = tmp / "state"
        self.log = tmp / "refvmd.log"
        self.proc: subprocess.Popen | None = None
        self.prefix = prefix or []        # e.g. ["ip", "netns", "exec", NS]: the daemon runs on another "host"
        self.extra_env = env or {}
        self.extra_args = args or []     # e.g. ["--listen-tcp", "ADDR:PORT"]

    @property
    def uri(self) -> str:
        return f"refvm+unix:///session?socket={self.socket}"

    def start(self) -> None:
        env = dict(os.environ)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env.update(self.extra_env)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.prefix + [sys.executable, "-m", "refvm.mgmt.refvmd", "--socket", str(self.socket), "--state-dir",
                 str(self.state_dir), "--verbose", *self.extra_args], stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 20
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"refvmd did not start: {self.log.read_text()}")
            time.sleep(0.05)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def packet(prog: int, vers: int, proc: int, type_: int = 0, serial: int = 1, status: int = 0,
           payload: bytes = b"") -> bytes:
    """Length word + virNetMessageHeader + payload."""
    body = struct.pack(">IIiiII", prog, vers, proc, type_, serial, status) + payload
    return struct.pack(">I", len(body) + 4) + body


def xdr_string(s: str) -> bytes:
    raw = s.encode()
    return struct.pack(">I", len(raw)) + raw + b"\0" * ((4 - len(raw) % 4) % 4)


class RawClient:
    """A bare socket speaking libvirt's framing, for protocol-level tests."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError("connection closed by refvmd")
            buf += chunk
        return buf

    def recv(self) -> tuple[tuple[int, ...], bytes]:
        """((prog, vers, proc, type, serial, status), payload) of the next packet."""
        (length,) = struct.unpack(">I", self._exact(4))
        body = self._exact(length - 4)
        return struct.unpack(">IIiiII", body[:24]), body[24:]

    def closed_by_peer(self) -> bool:
        """True when refvmd closed the connection (EOF), False when it is still open and silent."""
        self.sock.settimeout(3.0)
        try:
            return self.sock.recv(1) == b""
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True

    def call(self, proc: int, payload: bytes = b"", serial: int = 1) -> tuple[tuple[int, ...], bytes]:
        self.send(packet(REMOTE, 1, proc, serial=serial, payload=payload))
        return self.recv()


def decode_error(payload: bytes) -> tuple[int, int, str]:
    """(code, domain, message) of a remote_error payload."""
    code, domain, present = struct.unpack(">iii", payload[:12])
    message = ""
    if present:
        (n,) = struct.unpack(">I", payload[12:16])
        message = payload[16:16 + n].decode()
    return code, domain, message
