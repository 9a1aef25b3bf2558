"""The qtest client against a scripted fake target: replies, async IRQ lines, errors, timeouts, teardown.

The fake is a small Python program started exactly like a real target (through Target.qtest_argv), so the
connect direction, stderr capture and the SIGTERM on close are exercised without QEMU.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from conformance.drivers.qtest import QtestError, QtestSession, QtestStartError
from conformance.targets import Target

FAKE = textwrap.dedent(
    r'''
    import base64, signal, socket, sys, time
    args = sys.argv[1:]
    if "--refuse" in args:
        print("fake: -accel qtest: unsupported accelerator 'qtest'", file=sys.stderr)
        sys.exit(1)
    if "--ignore-term" in args:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    path = args[args.index("-qtest") + 1].removeprefix("unix:")
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(path)
    f = sock.makefile("rw")
    mem, ports = bytearray(4096), {}
    print("fake target up", file=sys.stderr, flush=True)
    for line in f:
        w = line.split()
        out = "OK"
        if w[0] == "outl":
            ports[int(w[1], 0)] = int(w[2], 0)
        elif w[0] == "inl":
            out = f"OK 0x{ports.get(int(w[1], 0), 0xffffffff):08x}"
        elif w[0] == "irq_intercept_in":
            f.write("IRQ raise 4\n")
        elif w[0] == "writel":
            mem[int(w[1], 0):int(w[1], 0) + 4] = int(w[2], 0).to_bytes(4, "little")
            f.write("IRQ lower 4\nIRQ raise 9\n")
        elif w[0] == "readl":
            out = "OK 0x%08x" % int.from_bytes(mem[int(w[1], 0):int(w[1], 0) + 4], "little")
        elif w[0] == "write":
            a, n = int(w[1], 0), int(w[2], 0)
            mem[a:a + n] = bytes.fromhex(w[3][2:])
        elif w[0] == "read":
            a, n = int(w[1], 0), int(w[2], 0)
            out = "OK 0x" + mem[a:a + n].hex()
        elif w[0] == "b64write":
            a, n = int(w[1], 0), int(w[2], 0)
            mem[a:a + n] = base64.b64decode(w[3])
        elif w[0] == "b64read":
            a, n = int(w[1], 0), int(w[2], 0)
            out = "OK " + base64.b64encode(mem[a:a + n]).decode()
        elif w[0] == "clock_step":
            out = "OK 1000"
        elif w[0] == "hang":
            time.sleep(60)
        elif w[0] == "endianness":
            out = "OK little"
        else:
            out = f"FAIL Unknown command '{w[0]}'"
        f.write(out + "\n")
        f.flush()
    time.sleep(60)  # like QEMU: keep running after the socket closes
    '''
)


@pytest.fixture
def fake(tmp_path: Path) -> Target:
    script = tmp_path / "fake_target.py"
    script.write_text(FAKE)
    return Target("fake", "refvm", [sys.executable, str(script)])


def _with(target: Target, *extra: str) -> Target:
    return Target(target.name, target.kind, [*target.binary, *extra])


def test_port_and_memory_round_trips(fake: Target) -> None:
    with QtestSession(timeout=5).start(fake) as qt:
        qt.outl(0xCF8, 0x80000000)
        assert qt.inl(0xCF8) == 0x80000000
        assert qt.inl(0xCFC) == 0xFFFFFFFF
        qt.write(0x100, b"\x01\x02\xfe")
        assert qt.read(0x100, 3) == b"\x01\x02\xfe"
        qt.b64write(0x200, b"hello")
        assert qt.b64read(0x200, 5) == b"hello"
        assert qt.endianness() == "little"
        assert qt.clock_step() == 1000


def test_async_irq_lines_are_buffered(fake: Target) -> None:
    with QtestSession(timeout=5).start(fake) as qt:
        qt.irq_intercept_in("ioapic")
        qt.writel(0x10, 0xDEADBEEF)  # the fake sends two IRQ lines before this reply
        assert qt.readl(0x10) == 0xDEADBEEF
        events = qt.poll_irqs()
        assert [(e.line, e.raised) for e in events] == [(4, True), (4, False), (9, True)]
        assert qt.irq_level == {4: False, 9: True}


def test_error_reply_names_the_command(fake: Target) -> None:
    with QtestSession(timeout=5).start(fake) as qt, pytest.raises(QtestError, match="'frob 1' failed: FAIL"):
        qt.command("frob 1")


def test_timeout_names_the_command_and_shows_stderr(fake: Target) -> None:
    with QtestSession(timeout=0.3).start(fake) as qt, pytest.raises(QtestError) as err:
        qt.command("hang")
    assert "'hang': no reply" in str(err.value)
    assert "fake target up" in str(err.value)


def test_refusing_target_reports_its_reason(fake: Target) -> None:
    with pytest.raises(QtestStartError) as err:
        QtestSession().start(_with(fake, "--refuse"))
    assert err.value.exited
    assert err.value.stderr_line == "fake: -accel qtest: unsupported accelerator 'qtest'"


def test_close_kills_a_target_that_keeps_running(fake: Target) -> None:
    qt = QtestSession(timeout=5, term_grace=0.3).start(_with(fake, "--ignore-term"))
    qt.endianness()
    proc = qt.proc
    assert proc is not None
    qt.close()
    assert proc.poll() is not None, "target still running after close"
    assert "fake target up" in qt.stderr
