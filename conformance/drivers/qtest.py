"""Client of QEMU's qtest text protocol: the test process pokes ports and memory of a stopped machine.

How a session starts (measured on QEMU 7.2, the same as libqtest does it): the *test* creates a listening
unix socket and starts the target with `-qtest unix:PATH`; without `,server=on` the target's chardev is a
client, so the target CONNECTS to us and we accept. (With `,server=on` QEMU would listen and block until
someone connects; the client direction needs no polling for a socket file and no race.)

The protocol is one command line, one reply line: `OK [values]`, or `ERR ...` / `FAIL ...` on error.
After `irq_intercept_in`, the target may send `IRQ raise N` / `IRQ lower N` lines at any time, also between
a command and its reply; they are buffered here and never mistaken for a reply.

QEMU does not exit when the qtest socket closes, so closing a session always signals the process (SIGTERM,
then SIGKILL). Its stderr goes to a file and is quoted in every error, which is where a target says why.
"""

from __future__ import annotations

import base64
import os
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Self

if TYPE_CHECKING:
    from conformance.targets import Target

DEFAULT_TIMEOUT = 10.0
START_TIMEOUT = 15.0


class QtestError(AssertionError):
    """A qtest command failed, timed out, or the target went away; the message names the command."""


class QtestStartError(QtestError):
    """The target exited (or never connected) before the qtest session was up.

    `stderr_line` is the line in which the target says why, for capability probes that turn it into a skip;
    `exited` tells a target that refused to start from one that hung (never a skip).
    """

    def __init__(self, message: str, stderr_line: str, exited: bool) -> None:
        super().__init__(message)
        self.stderr_line = stderr_line
        self.exited = exited


@dataclass(frozen=True)
class IrqEvent:
    """One asynchronous `IRQ raise|lower N` line."""

    line: int
    raised: bool


class QtestSession:
    """One target process driven over qtest. Use as a context manager; `start()` launches and connects."""

    def __init__(self, timeout: float = DEFAULT_TIMEOUT, name: str = "target", term_grace: float = 3.0) -> None:
        self.timeout = timeout
        self.term_grace = term_grace
        self.name = name
        self.argv: list[str] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.irq_events: deque[IrqEvent] = deque()
        self.irq_level: dict[int, bool] = {}
        self._sock: socket.socket | None = None
        self._buf = b""
        self._dir: str | None = None
        self._stderr_path: Path | None = None
        self._stderr_cache = ""

    # ---- lifecycle -------------------------------------------------------------------------------------

    def start(
        self, target: Target, extra_args: Sequence[str] = (), start_timeout: float = START_TIMEOUT
    ) -> Self:
        """Listen, start the target with its qtest argv, and accept its connection."""
        self.name = target.name
        self._dir = tempfile.mkdtemp(prefix="refvm-qtest-")
        sock_path = os.path.join(self._dir, "qtest.sock")
        self._stderr_path = Path(self._dir, "stderr.log")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(sock_path)
            listener.listen(1)
            self.argv = target.qtest_argv(sock_path, extra_args)
            with open(self._stderr_path, "wb") as err:
                self.proc = subprocess.Popen(
                    self.argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True
                )
            self._sock = self._accept(listener, start_timeout)
        finally:
            listener.close()
        return self

    def _accept(self, listener: socket.socket, timeout: float) -> socket.socket:
        """Wait for the target to connect, noticing promptly if it exits instead."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            ready, _, _ = select.select([listener], [], [], 0.02)
            if ready:
                conn, _ = listener.accept()
                return conn
            if self.proc.poll() is not None:
                err = self.stderr
                self.close()
                what = f"target exited with status {self.proc.returncode} before connecting"
                raise QtestStartError(self._describe(what, err), _reason_line(err), exited=True)
            if time.monotonic() > deadline:
                err = self.stderr
                self.close()
                what = f"target did not connect within {timeout:.0f}s"
                raise QtestStartError(self._describe(what, err), _reason_line(err), exited=False)

    def close(self) -> None:
        """Drop the socket and stop the process: QEMU keeps running after its qtest socket closes."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        proc = self.proc
        if proc is not None and proc.poll() is None:
            _signal(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=self.term_grace)
            except subprocess.TimeoutExpired:
                _signal(proc, signal.SIGKILL)
                proc.wait(timeout=5)
        if self._dir is not None:
            self._stderr_cache = self.stderr
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def stderr(self) -> str:
        """What the target printed on stdout/stderr so far (kept after close)."""
        if self._stderr_path is not None and self._dir is not None and self._stderr_path.exists():
            return self._stderr_path.read_text(errors="replace")
        return self._stderr_cache

    def _describe(self, what: str, err: str | None = None) -> str:
        err = self.stderr if err is None else err
        tail = err[-2000:] if err.strip() else "(empty)"
        return f"{self.name}: {what}\ncommand: {' '.join(self.argv)}\n--- target stderr ---\n{tail}"

    # ---- the wire --------------------------------------------------------------------------------------

    def command(self, line: str, timeout: float | None = None) -> list[str]:
        """Send one command and return the words of its `OK` reply (without the `OK`)."""
        if self._sock is None:
            raise QtestError(self._describe(f"'{line}': session is not connected"))
        try:
            self._sock.sendall(line.encode() + b"\n")
        except OSError as err:
            raise QtestError(self._describe(f"'{line}': send failed: {err}")) from None
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            reply = self._readline(line, deadline)
            if reply.startswith("IRQ "):
                self._note_irq(reply)
                continue
            words = reply.split()
            if words and words[0] == "OK":
                return words[1:]
            raise QtestError(self._describe(f"'{line}' failed: {reply}"))

    def _readline(self, cmd: str, deadline: float) -> str:
        assert self._sock is not None
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise QtestError(self._describe(f"'{cmd}': no reply within {self.timeout:.1f}s"))
            ready, _, _ = select.select([self._sock], [], [], left)
            if not ready:
                continue
            chunk = self._sock.recv(65536)
            if not chunk:
                status = self.proc.poll() if self.proc else None
                raise QtestError(self._describe(f"'{cmd}': target closed the connection (status {status})"))
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode(errors="replace").strip()

    def _note_irq(self, line: str) -> None:
        words = line.split()
        if len(words) != 3 or words[1] not in ("raise", "lower"):
            raise QtestError(self._describe(f"malformed async line: {line}"))
        event = IrqEvent(int(words[2], 0), words[1] == "raise")
        self.irq_events.append(event)
        self.irq_level[event.line] = event.raised

    def poll_irqs(self, timeout: float = 0.0) -> list[IrqEvent]:
        """Collect IRQ lines that arrived without a command, waiting up to `timeout` for the first."""
        assert self._sock is not None
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self._buf and self._buf.startswith(b"IRQ "):
                line, self._buf = self._buf.split(b"\n", 1)
                self._note_irq(line.decode().strip())
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._sock], [], [], max(0.0, left))
            if ready:
                chunk = self._sock.recv(65536)
                if not chunk:
                    break
                self._buf += chunk
                continue
            if self.irq_events or left <= 0:
                break
        events = list(self.irq_events)
        self.irq_events.clear()
        return events

    def _value(self, line: str) -> int:
        words = self.command(line)
        if not words:
            raise QtestError(self._describe(f"'{line}': reply carries no value"))
        return int(words[0], 16)

    # ---- port I/O --------------------------------------------------------------------------------------

    def outb(self, port: int, value: int) -> None:
        self.command(f"outb {port:#x} {value & 0xFF:#x}")

    def outw(self, port: int, value: int) -> None:
        self.command(f"outw {port:#x} {value & 0xFFFF:#x}")

    def outl(self, port: int, value: int) -> None:
        self.command(f"outl {port:#x} {value & 0xFFFFFFFF:#x}")

    def inb(self, port: int) -> int:
        return self._value(f"inb {port:#x}")

    def inw(self, port: int) -> int:
        return self._value(f"inw {port:#x}")

    def inl(self, port: int) -> int:
        return self._value(f"inl {port:#x}")

    # ---- memory ----------------------------------------------------------------------------------------

    def readb(self, addr: int) -> int:
        return self._value(f"readb {addr:#x}")

    def readw(self, addr: int) -> int:
        return self._value(f"readw {addr:#x}")

    def readl(self, addr: int) -> int:
        return self._value(f"readl {addr:#x}")

    def readq(self, addr: int) -> int:
        return self._value(f"readq {addr:#x}")

    def writeb(self, addr: int, value: int) -> None:
        self.command(f"writeb {addr:#x} {value & 0xFF:#x}")

    def writew(self, addr: int, value: int) -> None:
        self.command(f"writew {addr:#x} {value & 0xFFFF:#x}")

    def writel(self, addr: int, value: int) -> None:
        self.command(f"writel {addr:#x} {value & 0xFFFFFFFF:#x}")

    def writeq(self, addr: int, value: int) -> None:
        self.command(f"writeq {addr:#x} {value & 0xFFFFFFFFFFFFFFFF:#x}")

    def read(self, addr: int, size: int) -> bytes:
        """Bulk read as hex (`read ADDR LEN` → `OK 0x<hex>`)."""
        if size == 0:
            return b""
        words = self.command(f"read {addr:#x} {size:#x}")
        data = bytes.fromhex(words[0].removeprefix("0x"))
        if len(data) != size:
            raise QtestError(self._describe(f"'read {addr:#x} {size:#x}': got {len(data)} bytes"))
        return data

    def write(self, addr: int, data: bytes) -> None:
        if data:
            self.command(f"write {addr:#x} {len(data):#x} 0x{data.hex()}")

    def b64read(self, addr: int, size: int) -> bytes:
        if size == 0:
            return b""
        words = self.command(f"b64read {addr:#x} {size:#x}")
        return base64.b64decode(words[0])

    def b64write(self, addr: int, data: bytes) -> None:
        if data:
            self.command(f"b64write {addr:#x} {len(data):#x} {base64.b64encode(data).decode()}")

    def memset(self, addr: int, size: int, byte: int) -> None:
        if size:
            self.command(f"memset {addr:#x} {size:#x} {byte & 0xFF:#x}")

    # ---- clock, interrupts, misc -----------------------------------------------------------------------

    def clock_step(self, ns: int | None = None) -> int:
        """Advance the virtual clock (to the next timer deadline without `ns`); returns the new time."""
        return int(self.command("clock_step" if ns is None else f"clock_step {ns}")[0], 0)

    def clock_set(self, ns: int) -> int:
        return int(self.command(f"clock_set {ns}")[0], 0)

    def irq_intercept_in(self, path: str = "ioapic") -> None:
        """Report the inputs of the interrupt controller at QOM `path` as async IRQ lines."""
        self.command(f"irq_intercept_in {path}")

    def irq_intercept_out(self, path: str) -> None:
        self.command(f"irq_intercept_out {path}")

    def endianness(self) -> str:
        return self.command("endianness")[0]


def _signal(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass


def _reason_line(stderr: str) -> str:
    """The line in which a target explains itself: the first naming qtest, else the last non-empty line."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for ln in lines:
        if "qtest" in ln:
            return ln
    return lines[-1] if lines else ""
