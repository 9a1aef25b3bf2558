"""qtest server: every command against real RAM, buses and devices, over a real unix socket.

The reply formats are checked differentially against QEMU 7.2 (``-accel tcg -S -qtest``): the
same command script on RAM and unassigned ports must produce the same reply lines.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from refvm.bus import MmioBus, PioBus
from refvm.clock import RealtimeClock, VirtualClock
from refvm.devices.irq import IrqLine
from refvm.memory import GuestMemory
from refvm.monitor.qtest import MAX_TRANSFER, QtestAddress, QtestServer, parse_qtest_address
from tests.conftest import require

RAM_SIZE = 16 << 20
MMIO_BASE = 0xFE00_0000
PIO_BASE = 0x500
IRQ = 5


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """close() must join every service thread it started."""
    yield
    deadline = time.monotonic() + 5
    while any(t.name.startswith("refvm-") for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [t.name for t in threading.enumerate() if t.name.startswith("refvm-")] == []


class QtestClient:
    """A libqtest-like client: one command, one reply; ``IRQ`` lines are collected on the side."""

    def __init__(self, sock: socket.socket) -> None:
        sock.settimeout(5)
        self.sock = sock
        self.buf = b""
        self.irqs: list[str] = []

    def line(self) -> str:
        while b"\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("server closed the connection")
            self.buf += data
        raw, _, self.buf = self.buf.partition(b"\n")
        return raw.decode("latin-1")

    def cmd(self, text: str | bytes) -> str:
        self.sock.sendall((text.encode("latin-1") if isinstance(text, str) else text) + b"\n")
        while True:
            reply = self.line()
            if reply.startswith("IRQ "):
                self.irqs.append(reply)
                continue
            return reply

    def close(self) -> None:
        self.sock.close()


class ScratchDevice:
    """Registers + an interrupt line + a virtual-clock timer: enough to exercise every path.

    Offset 0..3: a 32-bit scratch register. Offset 4: write 1/0 drives the IRQ line.
    Offset 8: write N arms a timer N ns ahead that raises the line when it fires.
    """

    def __init__(self, irq: IrqLine | None = None, clock: VirtualClock | None = None) -> None:
        self.reg = 0
        self.irq = irq
        self.clock = clock
        self.accesses: list[tuple[str, int, int, int]] = []

    def read(self, offset: int, size: int) -> int:
        self.accesses.append(("r", offset, size, 0))
        if offset < 4:
            return (self.reg >> (8 * offset)) & ((1 << (8 * size)) - 1)
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        self.accesses.append(("w", offset, size, value))
        if offset == 0:
            self.reg = value & ((1 << (8 * size)) - 1) if size == 4 else (self.reg & ~0xFF) | (value & 0xFF)
        elif offset == 4 and self.irq is not None:
            self.irq.set(bool(value))
        elif offset == 8 and self.clock is not None and self.irq is not None:
            irq = self.irq
            self.clock.add_timer(self.clock.now_ns() + value, irq.raise_)


class Rig:
    def __init__(self, tmp: Path, *, virtual: bool = True, server: bool = False) -> None:
        self.memory = GuestMemory()
        self.memory.add_ram(0, RAM_SIZE)
        self.pio = PioBus()
        self.mmio = MmioBus()
        self.clock = VirtualClock() if virtual else RealtimeClock()
        self.path = str(tmp / "qtest.sock")
        self.disconnects = threading.Event()
        self.listener: socket.socket | None = None
        if server:
            address = f"unix:{self.path},server=on,wait=off"
        else:
            self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.listener.bind(self.path)
            self.listener.listen(1)
            self.listener.settimeout(5)
            address = f"unix:{self.path}"
        self.server = QtestServer(
            address, memory=self.memory, pio=self.pio, mmio=self.mmio, clock=self.clock,
            on_disconnect=self.disconnects.set,
        )  # fmt: skip
        line = IrqLine(self.server.irq_sink, IRQ)
        self.pio_dev = ScratchDevice(line, self.clock if virtual else None)
        self.mmio_dev = ScratchDevice()
        self.pio.register(PIO_BASE, 16, self.pio_dev, "test-pio")
        self.mmio.register(MMIO_BASE, 0x100, self.mmio_dev, "test-mmio")

    def connect(self) -> QtestClient:
        self.server.start()
        if self.listener is not None:
            sock, _ = self.listener.accept()
        else:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(self.path)
        return QtestClient(sock)

    def close(self) -> None:
        self.server.close()
        if self.listener is not None:
            self.listener.close()
        if isinstance(self.clock, RealtimeClock):
            self.clock.close()
        self.memory.close()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    yield r
    r.close()


@pytest.fixture
def qt(rig: Rig) -> Iterator[QtestClient]:
    client = rig.connect()
    yield client
    client.close()


# ---- differential check against QEMU 7.2 ----------------------------------------------------------------

DIFF_SCRIPT = [
    "writel 0x1000 0x12345678", "readl 0x1000", "readb 0x1000", "readw 0x1000", "readq 0x1000",
    "read 0x1000 8", "read 0x1000 3", "b64read 0x1000 5", "b64read 0x1000 3",
    "inb 0x80", "inw 0x80", "inl 0x80", "outb 0x80 1", "outl 0x80 0x12345678", "endianness",
    "writeq 0x4000 0x1122334455667788", "readq 0x4000", "readb 0x4007", "writew 0x4000 0xbeef", "readl 0x4000",
    "write 0x1000 4 0xaabb", "readl 0x1000", "write 0x5000 3 0xabc", "read 0x5000 4",
    "write 0x6000 2 0xa1b2c3d4", "read 0x6000 4", "write 0x1000 2 0x", "b64write 0x1000 2 qg",
    "b64write 0x3000 3 AQID", "read 0x3000 4", "memset 0x1000 0 5", "memset 0x2000 16 0xab", "read 0x2000 17",
    "memset 0x2000 2 0x1cd", "read 0x2000 3", "foo", "foo bar", "irq_intercept_in ioapic",
    "irq_intercept_in /machine/nothing", "irq_intercept_out /machine/i440fx/ioapic", "clock_step", "clock_set 100",
]  # fmt: skip


def _qemu_replies(tmp_path: Path, script: list[str]) -> list[str]:
    sock_path = str(tmp_path / "qemu-qtest.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sock_path)
    listener.listen(1)
    listener.settimeout(10)
    argv = ["qemu-system-x86_64", "-accel", "tcg", "-S", "-qtest", f"unix:{sock_path}", "-qtest-log", "/dev/null",
            "-nodefaults", "-display", "none", "-m", "16"]  # fmt: skip
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        conn, _ = listener.accept()  # QEMU dials the test: -qtest unix:PATH is client mode
        client = QtestClient(conn)
        replies = [client.cmd(c) for c in script]
        client.close()
        return replies
    finally:
        proc.terminate()  # QEMU does not exit when the qtest socket closes
        proc.wait(timeout=10)
        listener.close()


def test_reply_formats_match_qemu(tmp_path: Path) -> None:
    require(shutil.which("qemu-system-x86_64") is not None, "qemu-system-x86_64 is not installed")
    expected = _qemu_replies(tmp_path, DIFF_SCRIPT)
    # QEMU under TCG has no virtual clock, so compare against refvm with its real-time clock.
    rig = Rig(tmp_path, virtual=False)
    try:
        client = rig.connect()
        got = [client.cmd(c) for c in DIFF_SCRIPT]
        client.close()
    finally:
        rig.close()
    assert got == expected
    assert "OK 0x0000000012345678" in got and "OK 0x00ff" in got  # the formats really were exercised


# ---- commands ---------------------------------------------------------------------------------------------


def test_pio_commands_reach_the_device(qt: QtestClient, rig: Rig) -> None:
    assert qt.cmd(f"outl {PIO_BASE:#x} 0xdeadbeef") == "OK"
    assert rig.pio_dev.reg == 0xDEADBEEF
    assert qt.cmd(f"inl {PIO_BASE:#x}") == "OK 0xdeadbeef"
    assert qt.cmd(f"inw {PIO_BASE:#x}") == "OK 0xbeef"
    assert qt.cmd(f"inb {PIO_BASE + 1:#x}") == "OK 0x00be"
    assert qt.cmd(f"outb {PIO_BASE} 0x1ff") == "OK"  # value truncated to the access size
    assert rig.pio_dev.reg == 0xDEADBEFF
    assert ("w", 0, 1, 0xFF) in rig.pio_dev.accesses
    assert qt.cmd("inl 0xfffe") == "OK 0xffffffff"  # crosses the end of port space: no crash
    assert qt.cmd("outw 0xffff 1") == "OK"
    assert qt.cmd("inb 0x10000").startswith("ERR ")


def test_memory_commands_on_ram(qt: QtestClient, rig: Rig) -> None:
    assert qt.cmd("writeq 0x2000 0x0102030405060708") == "OK"
    assert rig.memory.read(0x2000, 8) == bytes([8, 7, 6, 5, 4, 3, 2, 1])
    assert qt.cmd("readw 0x2002") == "OK 0x0000000000000506"
    assert qt.cmd("write 0x3000 4 0xcafebabe") == "OK"
    assert rig.memory.read(0x3000, 4) == bytes.fromhex("cafebabe")
    assert qt.cmd("b64write 0x3000 4 AAECAw==") == "OK"
    assert qt.cmd("read 0x3000 4") == "OK 0x00010203"
    assert qt.cmd("memset 0x3000 0x1000 0x5a") == "OK"
    assert rig.memory.read(0x3000, 0x1000) == b"\x5a" * 0x1000
    assert qt.cmd("b64read 0x3000 3") == "OK Wlpa"
    # an access crossing the end of RAM: the RAM part is kept, the rest reads as ones
    assert qt.cmd(f"writel {RAM_SIZE - 2:#x} 0x11223344") == "OK"
    assert rig.memory.read(RAM_SIZE - 2, 2) == bytes([0x44, 0x33])
    assert qt.cmd(f"readl {RAM_SIZE - 2:#x}") == "OK 0x00000000ffff3344"
    assert qt.cmd(f"read {RAM_SIZE - 1:#x} 3") == "OK 0x33ffff"


def test_mmio_commands_reach_the_device(qt: QtestClient, rig: Rig) -> None:
    assert qt.cmd(f"writel {MMIO_BASE:#x} 0x89abcdef") == "OK"
    assert rig.mmio_dev.accesses[-1] == ("w", 0, 4, 0x89ABCDEF)
    assert qt.cmd(f"readl {MMIO_BASE:#x}") == "OK 0x0000000089abcdef"
    assert qt.cmd(f"readb {MMIO_BASE + 2:#x}") == "OK 0x00000000000000ab"
    assert qt.cmd(f"read {MMIO_BASE - 2:#x} 4") == "OK 0xffffefcd"  # unassigned bytes, then the device
    assert qt.cmd(f"readq {MMIO_BASE + 0x1000:#x}") == "OK 0xffffffffffffffff"
    assert qt.cmd(f"writel {MMIO_BASE + 0x1000:#x} 1") == "OK"
    assert qt.cmd("readq 0xfffffffffffffffc") == "OK 0xffffffffffffffff"  # runs off 2^64
    assert qt.cmd("write 0xfffffffffffffffe 4 0x11223344") == "OK"
    assert qt.cmd("memset 0xffffffffffffff00 0x1000 0") == "OK"
    assert qt.cmd("b64read 0x4000000000 4") == "OK /////w=="


def test_irq_intercept_emits_async_lines(qt: QtestClient, rig: Rig) -> None:
    assert qt.cmd(f"outb {PIO_BASE + 4:#x} 1") == "OK"
    assert qt.irqs == []  # not intercepted yet
    assert qt.cmd(f"outb {PIO_BASE + 4:#x} 0") == "OK"
    assert qt.cmd("irq_intercept_in /machine/nope") == "FAIL Unknown device"
    assert qt.cmd("irq_intercept_in ioapic") == "OK"
    assert qt.cmd("irq_intercept_out ioapic") == "OK"
    assert qt.cmd(f"outb {PIO_BASE + 4:#x} 1") == "OK"
    assert qt.cmd(f"outb {PIO_BASE + 4:#x} 1") == "OK"  # no change: no line
    assert qt.cmd(f"outb {PIO_BASE + 4:#x} 0") == "OK"
    assert qt.irqs == [f"IRQ raise {IRQ}", f"IRQ lower {IRQ}"]
    rig.server.irq_sink(11, 1)  # from another thread, e.g. a device backend
    assert qt.line() == "IRQ raise 11"


def test_clock_step_runs_timers(qt: QtestClient, rig: Rig) -> None:
    assert qt.cmd("clock_step") == "OK 0"  # no timer: time stays
    assert qt.cmd("clock_step 1000") == "OK 1000"
    assert qt.cmd("irq_intercept_in ioapic") == "OK"
    assert qt.cmd(f"outl {PIO_BASE + 8:#x} 5000") == "OK"  # timer at 6000 raises the IRQ
    assert qt.cmd("clock_step 4999") == "OK 5999"
    assert qt.irqs == []
    assert qt.cmd("clock_step") == "OK 6000"  # straight to the deadline
    assert qt.irqs == [f"IRQ raise {IRQ}"]
    assert qt.cmd("clock_set 100") == "OK 6000"  # never backwards
    assert qt.cmd("clock_set 0x10000") == "OK 65536"
    assert qt.cmd("clock_step -5") == "OK 65536"
    assert rig.clock.now_ns() == 65536


def test_malformed_input_keeps_the_session(qt: QtestClient, rig: Rig) -> None:
    bad = {
        "readl": "ERR missing argument: address",
        "readl zz": "ERR invalid address 'zz'",
        "readl 0x10000000000000000": "ERR address 0x10000000000000000 out of range (limit 0xffffffffffffffff)",
        "outb 0x80": "ERR missing argument: value",
        "write 0x1000 4 0xzz": "ERR invalid hex data",
        "write 0x1000 4 abcd": "ERR invalid hex data",
        f"read 0 {MAX_TRANSFER + 1}": f"ERR size {MAX_TRANSFER + 1:#x} exceeds the limit of {MAX_TRANSFER:#x} bytes",
        "read 0 0": "ERR read size must not be zero",
        "memset 0 0x1000000000 0": "ERR size 0x1000000000 exceeds the limit of 0x100000000 bytes",
        "b64write 0x1000 4 abcde": "ERR invalid base64 data",
        "clock_step 1.5": "ERR invalid nanoseconds '1.5'",
        "irq_intercept_in": "ERR missing argument: QOM path",
        "": "FAIL Unknown command ''",
    }
    for line, reply in bad.items():
        assert qt.cmd(line) == reply, line
    assert qt.cmd(b"\xff\x00garbage \xfe").startswith("FAIL Unknown command")
    assert qt.cmd("readl 0x1000\r") == "OK 0x0000000000000000"  # CRLF clients work
    # one line far beyond any legal command is discarded whole, with one reply
    qt.sock.sendall(b"write 0 1 0x" + b"00" * (MAX_TRANSFER + 8192))
    assert qt.cmd(b"") == "ERR line too long (limit 33558528 bytes)"
    # several commands in one send, and one command split over sends
    qt.sock.sendall(b"writeb 0x10 1\nreadb 0x10\nrea")
    assert qt.line() == "OK" and qt.line() == "OK 0x0000000000000001"
    assert qt.cmd("db 0x10") == "OK 0x0000000000000001"


def test_realtime_clock_has_no_clock_commands(tmp_path: Path) -> None:
    rig = Rig(tmp_path, virtual=False)
    try:
        client = rig.connect()
        assert client.cmd("clock_step 10") == "FAIL Unknown command 'clock_step'"
        assert client.cmd("clock_set 10") == "FAIL Unknown command 'clock_set'"
        client.close()
    finally:
        rig.close()


def test_server_mode_accepts_reconnects_and_cleans_up(tmp_path: Path) -> None:
    rig = Rig(tmp_path, server=True)
    try:
        client = rig.connect()
        assert client.cmd("writel 0x100 7") == "OK"
        client.close()
        assert rig.disconnects.wait(5)
        again = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        again.connect(rig.path)
        second = QtestClient(again)
        assert second.cmd("readl 0x100") == "OK 0x0000000000000007"
        second.close()
    finally:
        rig.close()
    assert not os.path.exists(rig.path)


def test_client_mode_fails_like_qemu_without_listener(tmp_path: Path) -> None:
    path = str(tmp_path / "nobody.sock")
    server = QtestServer(f"unix:{path}", memory=GuestMemory(), pio=PioBus(), mmio=MmioBus(), clock=VirtualClock())
    with pytest.raises(ConnectionError, match=f"Failed to connect to '{path}': No such file or directory"):
        server.start()
    server.close()


def test_log_records_the_exchange(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    log = tmp_path / "qtest.log"
    rig.server = QtestServer(
        f"unix:{rig.path}", memory=rig.memory, pio=rig.pio, mmio=rig.mmio, clock=rig.clock, log=str(log)
    )
    try:
        client = rig.connect()
        assert client.cmd("endianness") == "OK little"
        client.close()
    finally:
        rig.close()
    text = log.read_text()
    assert "] OPENED" in text and "] endianness" in text and "] OK little" in text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("unix:/tmp/q.sock", QtestAddress("/tmp/q.sock", server=False, wait=False)),
        ("unix:/tmp/q.sock,server=on,wait=off", QtestAddress("/tmp/q.sock", server=True, wait=False)),
        ("unix:/tmp/q.sock,server=on", QtestAddress("/tmp/q.sock", server=True, wait=True)),
        ("unix:/tmp/q.sock,server,nowait", QtestAddress("/tmp/q.sock", server=True, wait=False)),
        ("unix:/tmp/q.sock,server", QtestAddress("/tmp/q.sock", server=True, wait=True)),
        ("unix:/tmp/a,,b.sock,server=yes,wait=no", QtestAddress("/tmp/a,b.sock", server=True, wait=False)),
    ],
)
def test_parse_address(text: str, expected: QtestAddress) -> None:
    assert parse_qtest_address(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("unix:/tmp/q.sock,server=maybe", "Parameter 'server' expects 'on' or 'off'"),
        ("unix:/tmp/q.sock,bogus=1", "Invalid parameter 'bogus'"),
        ("unix:/tmp/q.sock,wait=off", "'wait' option is incompatible with socket in client connect mode"),
        ("foo:bar", "'foo:bar' is not a valid char driver"),
        ("unix:", "Parameter 'path' is missing"),
        ("tcp:localhost:4444", "qtest chardev backend 'tcp' is not supported by refvm (use unix:PATH)"),
    ],
)
def test_parse_address_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_qtest_address(text)
    assert str(info.value) == message


class BrokenDevice:
    """A device model with a bug: the session must survive it."""

    def read(self, offset: int, size: int) -> int:
        raise RuntimeError("model bug")

    def write(self, offset: int, size: int, value: int) -> None:
        raise RuntimeError("model bug")


def test_device_bug_does_not_kill_the_session(qt: QtestClient, rig: Rig) -> None:
    rig.pio.register(0x600, 4, BrokenDevice(), "broken")
    assert qt.cmd("inb 0x600") == "FAIL RuntimeError: model bug"
    assert qt.cmd("outb 0x600 1") == "FAIL RuntimeError: model bug"
    assert qt.cmd("endianness") == "OK little"


def test_rebind_after_machine_rebuild(qt: QtestClient, rig: Rig) -> None:
    assert qt.cmd("writel 0x100 0x55") == "OK"
    fresh = GuestMemory()
    fresh.add_ram(0, 0x10000)
    rig.server.rebind(memory=fresh, pio=PioBus(), mmio=MmioBus())
    try:
        assert qt.cmd("readl 0x100") == "OK 0x0000000000000000"
        assert qt.cmd(f"inl {PIO_BASE:#x}") == "OK 0xffffffff"
        assert qt.cmd("readl 0x20000") == "OK 0x00000000ffffffff"
    finally:
        rig.server.rebind(memory=rig.memory)
        fresh.close()
