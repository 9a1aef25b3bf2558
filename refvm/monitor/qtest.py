"""The qtest accelerator's server: QEMU's line-based test protocol, VMM side.

A test process drives the machine with no vCPU at all: it reads and writes guest memory and
I/O ports and watches interrupt lines, one text command per line, and gets one reply line per
command (``OK ...``, ``FAIL ...`` or ``ERR ...``). Interrupt changes arrive as unsolicited
``IRQ raise N`` / ``IRQ lower N`` lines once the client asked to intercept them; clients skip
those while waiting for a reply. The reply formats are QEMU 7.2's, byte for byte (checked in
``tests/test_qtest_server.py`` against a running QEMU), so one client library drives both.

Where we deliberately differ from QEMU: QEMU ``g_assert``s on malformed arguments and dies;
the client here is untrusted, so bad numbers, missing arguments, bad hex/base64 and oversized
transfers get an ``ERR ...`` reply and the session goes on. ``clock_step``/``clock_set`` exist
only with a virtual clock, as in QEMU (under TCG/KVM they are unknown commands).

Addressing: ``-qtest unix:PATH`` makes refvm *connect* to PATH (the test listens, as libqtest
does); ``unix:PATH,server=on[,wait=off]`` makes refvm listen.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import re
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import IO, Any

from refvm.bus import Bus, BusError, MmioBus, PioBus
from refvm.memory import GuestMemory, GuestMemoryError
from refvm.monitor.sockets import Connection, StreamService
from refvm.qemu_opts import split_opts

__all__ = ["QtestAddress", "QtestServer", "parse_qtest_address", "MAX_TRANSFER", "MAX_MEMSET"]

#: Largest ``read``/``write``/``b64read``/``b64write`` (a 16 MiB read is a 32 MiB reply line).
MAX_TRANSFER = 16 << 20
#: Largest ``memset``; RAM is filled in place, so this can be large.
MAX_MEMSET = 4 << 30
#: A line longer than this is discarded up to its newline and answered with an error.
MAX_LINE = 2 * MAX_TRANSFER + 4096

_ADDR_LIMIT = 1 << 64
_NUMBER = re.compile(r"(?:0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)\Z")
_HEX = re.compile(r"[0-9a-fA-F]*\Z")
#: QOM paths that name the interrupt controller whose inputs we report (QEMU: the IOAPIC).
DEFAULT_IRQ_PATHS = ("ioapic", "/machine/i440fx/ioapic", "/machine/q35/ioapic")


# ---- address parsing ---------------------------------------------------------------------------------

_OTHER_BACKENDS = ("tcp", "udp", "stdio", "pipe", "file", "pty", "vc", "null", "mon", "chardev", "fd")
_BOOL_WORDS = {"on": True, "yes": True, "true": True, "y": True, "off": False, "no": False, "false": False, "n": False}


@dataclass(frozen=True)
class QtestAddress:
    """Where the qtest stream lives; ``server`` means refvm listens, else refvm connects."""

    path: str
    server: bool = False
    wait: bool = True

    def __str__(self) -> str:
        if not self.server:
            return f"unix:{self.path}"
        return f"unix:{self.path},server=on,wait={'on' if self.wait else 'off'}"


def parse_qtest_address(text: str) -> QtestAddress:
    """Parse QEMU's ``-qtest`` chardev spelling; ValueError messages read like QEMU's."""
    backend, sep, rest = text.partition(":")
    if not sep or backend != "unix":
        if backend in _OTHER_BACKENDS:
            raise ValueError(f"qtest chardev backend '{backend}' is not supported by refvm (use unix:PATH)")
        raise ValueError(f"'{text}' is not a valid char driver")
    path, *opts = split_opts(rest)
    if not path:
        raise ValueError("Parameter 'path' is missing")
    values: dict[str, bool] = {}
    for opt in opts:
        name, eq, value = opt.partition("=")
        if not eq:  # short-form booleans: "server", "nowait"
            negated = name.startswith("no") and name[2:] in ("server", "wait")
            name, value = (name[2:], "off") if negated else (name, "on")
        if name not in ("server", "wait"):
            raise ValueError(f"Invalid parameter '{name}'")
        if value not in _BOOL_WORDS:
            raise ValueError(f"Parameter '{name}' expects 'on' or 'off'")
        values[name] = _BOOL_WORDS[value]
    server = values.get("server", False)
    if not server and "wait" in values:
        raise ValueError("'wait' option is incompatible with socket in client connect mode")
    return QtestAddress(path=path, server=server, wait=values.get("wait", True) if server else False)


# ---- command helpers ---------------------------------------------------------------------------------


class _Err(Exception):
    """Reply this line instead of the normal answer (``ERR ...`` or ``FAIL ...``)."""


def _uint(words: list[str], index: int, what: str, limit: int = _ADDR_LIMIT) -> int:
    """strtoul(base 0)-style unsigned number, checked against ``limit``."""
    if index >= len(words):
        raise _Err(f"ERR missing argument: {what}")
    text = words[index]
    if not _NUMBER.match(text):
        raise _Err(f"ERR invalid {what} '{text[:64]}'")
    value = int(text, 16) if text[:2] in ("0x", "0X") else (int(text, 8) if text[:1] == "0" else int(text))
    if value >= limit:
        raise _Err(f"ERR {what} {text[:64]} out of range (limit {limit - 1:#x})")
    return value


def _int(words: list[str], index: int, what: str) -> int:
    """Signed 64-bit number (clock arguments)."""
    text = words[index] if index < len(words) else ""
    neg = text.startswith("-")
    value = _uint([text[1:] if neg else text], 0, what, 1 << 63)
    return -value if neg else value


def _size(words: list[str], index: int, limit: int) -> int:
    size = _uint(words, index, "size")
    if size > limit:
        raise _Err(f"ERR size {size:#x} exceeds the limit of {limit:#x} bytes")
    return size


class _GuestAccess:
    """Guest-physical accesses as the qtest client sees them: RAM first, else the MMIO bus.

    An access that is wholly RAM goes to GuestMemory; one that is wholly outside RAM goes to
    the MMIO bus as one access of its size (unclaimed: all-ones read, write dropped); a mixed
    access is split bytewise. Nothing here raises for an address: out of range reads ones.
    """

    def __init__(self, memory: GuestMemory, mmio: MmioBus) -> None:
        self.memory = memory
        self.mmio = mmio

    def _ram_overlaps(self, addr: int, size: int) -> bool:
        return any(r.gpa < addr + size and addr < r.end for r in self.memory.regions)

    def read_uint(self, addr: int, size: int) -> int:
        if self.memory.is_ram(addr, size):
            return int.from_bytes(self.memory.read(addr, size), "little")
        if not self._ram_overlaps(addr, size):
            try:
                return self.mmio.read(addr, size)
            except BusError:
                pass
        return int.from_bytes(self.read(addr, size), "little")

    def write_uint(self, addr: int, size: int, value: int) -> None:
        value &= (1 << (8 * size)) - 1
        if self.memory.is_ram(addr, size):
            self.memory.write(addr, value.to_bytes(size, "little"))
            return
        if not self._ram_overlaps(addr, size):
            with contextlib.suppress(BusError):
                self.mmio.write(addr, size, value)
                return
        self.write(addr, value.to_bytes(size, "little"))

    def _spans(self, addr: int, size: int) -> list[tuple[int, int, bool]]:
        """Cut [addr, addr+size) into (start, length, is_ram) runs."""
        out: list[tuple[int, int, bool]] = []
        cur, end = addr, addr + size
        while cur < end:
            region = self.memory.find_region(cur) if cur < _ADDR_LIMIT else None
            if region is not None:
                n = min(end, region.end) - cur
                out.append((cur, n, True))
            else:
                nxt = min((r.gpa for r in self.memory.regions if r.gpa > cur), default=end)
                n = min(end, nxt) - cur
                out.append((cur, n, False))
            cur += n
        return out

    def _devices_in(self, start: int, length: int) -> list[tuple[int, int]]:
        """MMIO device windows clipped to [start, start+length)."""
        end = start + length
        return [
            (max(base, start), min(base + n, end))
            for base, n, _ in self.mmio.ranges()
            if base < end and start < base + n
        ]

    def read(self, addr: int, size: int) -> bytes:
        out = bytearray()
        for start, length, is_ram in self._spans(addr, size):
            if is_ram:
                out += self.memory.read(start, length)
                continue
            chunk = bytearray(b"\xff" * length)
            for lo, hi in self._devices_in(start, length):
                for a in range(lo, hi):
                    chunk[a - start] = self.mmio.read(a, 1)
            out += chunk
        return bytes(out)

    def write(self, addr: int, data: bytes) -> None:
        for start, length, is_ram in self._spans(addr, len(data)):
            piece = data[start - addr : start - addr + length]
            if is_ram:
                self.memory.write(start, piece)
                continue
            for lo, hi in self._devices_in(start, length):
                for a in range(lo, hi):
                    self.mmio.write(a, 1, piece[a - start])

    def fill(self, addr: int, size: int, byte: int) -> None:
        for start, length, is_ram in self._spans(addr, size):
            if is_ram:
                self.memory.fill(start, length, byte)
                continue
            for lo, hi in self._devices_in(start, length):
                for a in range(lo, hi):
                    self.mmio.write(a, 1, byte)


# ---- the server ----------------------------------------------------------------------------------------


class _Session:
    """Per-connection input buffer (a partial line, or a too-long line being skipped)."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.discarding = False


class QtestServer:
    """Serves the qtest protocol for one machine on a background thread.

    ``memory``/``pio``/``mmio`` are the machine's; after a machine rebuild call :meth:`rebind`.
    ``irq_sink`` is where the machine reports interrupt-line changes (any thread).
    """

    def __init__(
        self,
        address: str | QtestAddress,
        *,
        memory: GuestMemory,
        pio: PioBus,
        mmio: MmioBus,
        clock: Any,
        on_disconnect: Callable[[], None] | None = None,
        irq_paths: Collection[str] = DEFAULT_IRQ_PATHS,
        log: str | IO[str] | None = None,
    ) -> None:
        self.address = address if isinstance(address, QtestAddress) else parse_qtest_address(address)
        self.clock = clock
        self.pio: Bus = pio
        self._access = _GuestAccess(memory, mmio)
        self._on_disconnect = on_disconnect
        self._irq_paths = frozenset(irq_paths)
        self._irq_lock = threading.Lock()
        self._intercepting = False
        self._irq_levels: dict[int, int] = {}
        self._log_owned = isinstance(log, str)
        self._log: IO[str] | None = open(log, "w", buffering=1) if isinstance(log, str) else log
        self._t0 = time.monotonic()
        addr = self.address
        self._service = StreamService(
            "qtest",
            listen_path=addr.path if addr.server else None,
            connect_path=None if addr.server else addr.path,
            max_clients=1,
            on_connect=self._connected,
            on_data=self._received,
            on_close=self._closed,
        )
        self._commands: dict[str, Callable[[list[str]], str]] = {
            "outb": self._out, "outw": self._out, "outl": self._out,
            "inb": self._in, "inw": self._in, "inl": self._in,
            "writeb": self._write_n, "writew": self._write_n, "writel": self._write_n, "writeq": self._write_n,
            "readb": self._read_n, "readw": self._read_n, "readl": self._read_n, "readq": self._read_n,
            "read": self._read, "write": self._write, "b64read": self._b64read, "b64write": self._b64write,
            "memset": self._memset, "endianness": lambda w: "OK little",
            "irq_intercept_in": self._intercept, "irq_intercept_out": self._intercept,
        }  # fmt: skip
        if getattr(clock, "virtual", False):
            self._commands["clock_step"] = self._clock_step
            self._commands["clock_set"] = self._clock_set

    # ---- public API -----------------------------------------------------------------------------------

    def start(self) -> None:
        """Connect (client mode; raises ConnectionError as QEMU fails) or listen, then serve."""
        self._service.start()

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Block until a client is connected (what QEMU's ``server=on,wait=on`` does at startup)."""
        return self._service.connected.wait(timeout)

    def rebind(self, *, memory: GuestMemory | None = None, pio: PioBus | None = None,
               mmio: MmioBus | None = None) -> None:  # fmt: skip
        """Point at a rebuilt machine's memory and buses (after a reset)."""
        if memory is not None:
            self._access.memory = memory
        if pio is not None:
            self.pio = pio
        if mmio is not None:
            self._access.mmio = mmio

    def irq_sink(self, line: int, level: int) -> None:
        """Interrupt line ``line`` is now ``level``; emit ``IRQ raise|lower N`` once intercepted."""
        level = 1 if level else 0
        with self._irq_lock:
            if not self._intercepting or self._irq_levels.get(line, 0) == level:
                return
            self._irq_levels[line] = level
        self._send_all(f"IRQ {'raise' if level else 'lower'} {line}")

    def execute(self, line: str) -> str:
        """Run one command line and return its reply (without newline). Never raises."""
        words = line.split()
        self._log_line("R", " ".join(words))
        handler = self._commands.get(words[0]) if words else None
        if handler is None:
            return f"FAIL Unknown command '{words[0] if words else ''}'"
        try:
            return handler(words)
        except _Err as err:
            return str(err)
        except (GuestMemoryError, BusError, ValueError, OverflowError) as err:
            return f"ERR {err}"
        except Exception as err:  # a device model bug: report it, keep the session alive
            return f"FAIL {type(err).__name__}: {err}"

    def close(self) -> None:
        self._service.close()
        if self._log is not None and self._log_owned:
            self._log.close()
        self._log = None

    # ---- socket callbacks (service thread) ------------------------------------------------------------

    def _connected(self, conn: Connection) -> None:
        conn.state = _Session()
        with self._irq_lock:
            self._irq_levels.clear()  # QEMU forgets levels when a client opens the stream
        self._log_line("I", "OPENED")

    def _closed(self, conn: Connection) -> None:
        self._log_line("I", "CLOSED")
        if self._on_disconnect is not None:
            self._on_disconnect()

    def _received(self, conn: Connection, data: bytes) -> None:
        session = conn.state
        assert isinstance(session, _Session)
        session.buf += data
        while True:
            nl = session.buf.find(b"\n")
            if nl < 0:
                if len(session.buf) > MAX_LINE:
                    session.discarding = True
                    session.buf.clear()
                return
            raw = bytes(session.buf[:nl])
            del session.buf[: nl + 1]
            if session.discarding or nl > MAX_LINE:
                session.discarding = False
                reply = f"ERR line too long (limit {MAX_LINE} bytes)"
            else:
                reply = self.execute(raw.decode("latin-1"))
            self._log_line("S", reply)
            if not conn.send(reply.encode("latin-1") + b"\n"):
                return

    def _send_all(self, line: str) -> None:
        self._log_line("S", line)
        self._service.broadcast(line.encode() + b"\n")

    def _log_line(self, kind: str, text: str) -> None:
        log = self._log
        if log is None:
            return
        with contextlib.suppress(ValueError, OSError):
            log.write(f"[{kind} +{time.monotonic() - self._t0:.6f}] {text}\n")

    # ---- commands ------------------------------------------------------------------------------------

    def _out(self, w: list[str]) -> str:
        port = _uint(w, 1, "port", 0x10000)
        value = _uint(w, 2, "value")
        size = {"b": 1, "w": 2, "l": 4}[w[0][3]]
        with contextlib.suppress(BusError):  # crossing 0xffff: dropped, as on hardware
            self.pio.write(port, size, value & ((1 << (8 * size)) - 1))
        return "OK"

    def _in(self, w: list[str]) -> str:
        port = _uint(w, 1, "port", 0x10000)
        size = {"b": 1, "w": 2, "l": 4}[w[0][2]]
        try:
            value = self.pio.read(port, size)
        except BusError:
            value = (1 << (8 * size)) - 1
        return f"OK 0x{value:04x}"

    _SIZES = {"b": 1, "w": 2, "l": 4, "q": 8}

    def _write_n(self, w: list[str]) -> str:
        addr = _uint(w, 1, "address")
        value = _uint(w, 2, "value")
        self._access.write_uint(addr, self._SIZES[w[0][5]], value)
        return "OK"

    def _read_n(self, w: list[str]) -> str:
        addr = _uint(w, 1, "address")
        return f"OK 0x{self._access.read_uint(addr, self._SIZES[w[0][4]]):016x}"

    def _read(self, w: list[str]) -> str:
        addr = _uint(w, 1, "address")
        size = _size(w, 2, MAX_TRANSFER)
        if size == 0:
            raise _Err("ERR read size must not be zero")
        return "OK 0x" + self._access.read(addr, size).hex()

    def _b64read(self, w: list[str]) -> str:
        addr = _uint(w, 1, "address")
        size = _size(w, 2, MAX_TRANSFER)
        return "OK " + base64.b64encode(self._access.read(addr, size)).decode()

    def _write(self, w: list[str]) -> str:
        addr = _uint(w, 1, "address")
        size = _size(w, 2, MAX_TRANSFER)
        data = w[3] if len(w) > 3 else ""
        if len(data) < 3:
            raise _Err("ERR invalid argument size")
        digits = data[2:]
        if data[:2] not in ("0x", "0X") or not _HEX.match(digits):
            raise _Err("ERR invalid hex data")
        raw = bytes.fromhex(digits[: 2 * min(size, len(digits) // 2)])  # as QEMU: odd nibble dropped
        self._access.write(addr, raw.ljust(size, b"\0"))
        return "OK"

    def _b64write(self, w: list[str]) -> str:
        addr = _uint(w, 1, "address")
        size = _size(w, 2, MAX_TRANSFER)
        data = w[3] if len(w) > 3 else ""
        if len(data) < 3:
            raise _Err("ERR invalid argument size")
        try:
            raw = base64.b64decode(data + "=" * (-len(data) % 4))
        except (binascii.Error, ValueError):
            raise _Err("ERR invalid base64 data") from None
        self._access.write(addr, raw[:size].ljust(size, b"\0"))
        return "OK"

    def _memset(self, w: list[str]) -> str:
        addr = _uint(w, 1, "address")
        size = _size(w, 2, MAX_MEMSET)
        pattern = _uint(w, 3, "value")
        if size:
            self._access.fill(addr, size, pattern & 0xFF)
        return "OK"

    def _intercept(self, w: list[str]) -> str:
        if len(w) < 2:
            raise _Err("ERR missing argument: QOM path")
        if w[1] not in self._irq_paths:
            return "FAIL Unknown device"
        with self._irq_lock:
            self._intercepting = True  # every path we accept names the same interrupt controller
        return "OK"

    def _clock_step(self, w: list[str]) -> str:
        if len(w) > 1:
            ns = _int(w, 1, "nanoseconds")
            if ns > 0:
                self.clock.step(ns)
        else:
            self.clock.step()
        return f"OK {self.clock.now_ns()}"

    def _clock_set(self, w: list[str]) -> str:
        self.clock.set(_int(w, 1, "nanoseconds"))
        return f"OK {self.clock.now_ns()}"
