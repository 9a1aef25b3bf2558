"""isa-debug-exit status values and the three reset paths, dispatched through a real PioBus."""

from __future__ import annotations

import pytest

from refvm.bus import PioBus
from refvm.devices.debug_exit import DebugExit
from refvm.devices.reset import I8042_STATUS_IDLE, KbdReset, ResetControl, ResetPort92


@pytest.mark.parametrize("value,status", [(0, 1), (1, 3), (0x10, 0x21), (0x7F, 0xFF), (0x80, 0x101)])
def test_debug_exit_status(value: int, status: int) -> None:
    got: list[int] = []
    bus = PioBus()
    bus.register(0xF4, 4, DebugExit(got.append), "isa-debug-exit")
    bus.write(0xF4, 1, value)
    assert got == [status]
    assert DebugExit.status_for(value) == status


def test_debug_exit_wide_write_and_read() -> None:
    got: list[int] = []
    bus = PioBus()
    bus.register(0xF4, 4, DebugExit(got.append))
    bus.write(0xF4, 4, 0x12345678)
    assert got == [(0x12345678 << 1) | 1]
    assert bus.read(0xF4, 1) == 0  # as QEMU 7.2
    assert bus.read(0xF4, 4) == 0


def test_kbd_reset_pulse_and_status() -> None:
    resets: list[int] = []
    bus = PioBus()
    kbd = KbdReset(lambda: resets.append(1))
    bus.register(0x64, 1, kbd, "i8042")
    assert bus.read(0x64, 1) == I8042_STATUS_IDLE == 0x1C
    assert bus.read(0x64, 1) & 0x03 == 0  # neither output nor input buffer full: probes do not spin
    bus.write(0x64, 1, 0xAD)  # disable keyboard: ignored
    assert resets == []
    bus.write(0x64, 1, 0xFE)
    assert resets == [1] and kbd.resets == 1


def test_port92_fast_reset_on_rising_edge_and_a20() -> None:
    resets: list[int] = []
    bus = PioBus()
    p92 = ResetPort92(lambda: resets.append(1))
    bus.register(0x92, 1, p92)
    bus.write(0x92, 1, 0x02)
    assert p92.a20 and resets == [] and bus.read(0x92, 1) == 0x02
    bus.write(0x92, 1, 0x03)
    assert resets == [1]
    assert bus.read(0x92, 1) == 0x02  # bit 0 cleared by the reset it caused, A20 kept


def test_cf9_reset_control() -> None:
    resets: list[int] = []
    bus = PioBus()
    rc = ResetControl(lambda: resets.append(1))
    bus.register(0xCF9, 1, rc)
    bus.write(0xCF9, 1, 0x02)  # select hard reset, no reset yet
    assert resets == [] and bus.read(0xCF9, 1) == 0x02
    bus.write(0xCF9, 1, 0x06)  # hard reset
    assert resets == [1] and rc.hard is True
    assert bus.read(0xCF9, 1) == 0x06
    bus.write(0xCF9, 1, 0x04)  # soft reset
    assert resets == [1, 1] and rc.hard is False
    rc.reset()
    assert bus.read(0xCF9, 1) == 0
