"""PioBus/MmioBus: registration rules, dispatch offsets, unclaimed accesses, split accesses."""

from __future__ import annotations

import pytest

from refvm.bus import Bus, BusError, Device, MmioBus, PioBus


class Recorder:
    """A device that logs accesses and answers reads with (0xA0 + offset) per byte."""

    def __init__(self) -> None:
        self.log: list[tuple] = []

    def read(self, offset: int, size: int) -> int:
        self.log.append(("r", offset, size))
        return int.from_bytes(bytes(0xA0 + offset + i for i in range(size)), "little")

    def write(self, offset: int, size: int, value: int) -> None:
        self.log.append(("w", offset, size, value))


def test_recorder_is_a_device() -> None:
    assert isinstance(Recorder(), Device)


def test_dispatch_with_relative_offset() -> None:
    bus = PioBus()
    a, b = Recorder(), Recorder()
    bus.register(0x3F8, 8, a, "com1")
    bus.register(0x2F8, 8, b, "com2")
    assert bus.read(0x3FD, 1) == 0xA5
    bus.write(0x2F9, 1, 0x0F)
    assert a.log == [("r", 5, 1)]
    assert b.log == [("w", 1, 1, 0x0F)]
    assert bus.lookup(0x3FF).name == "com1"
    assert bus.lookup(0x400) is None
    assert bus.ranges() == [(0x2F8, 8, "com2"), (0x3F8, 8, "com1")]


def test_write_value_is_masked_to_size() -> None:
    bus = MmioBus()
    d = Recorder()
    bus.register(0xFE000000, 0x1000, d)
    bus.write(0xFE000010, 2, 0x12345678)
    assert d.log == [("w", 0x10, 2, 0x5678)]


@pytest.mark.parametrize("size,ones", [(1, 0xFF), (2, 0xFFFF), (4, 0xFFFFFFFF)])
def test_unclaimed_read_is_all_ones_and_counted(size: int, ones: int) -> None:
    bus = PioBus()
    bus.register(0x60, 1, Recorder())
    assert bus.read(0x80, size) == ones
    assert bus.misses == 1
    bus.write(0x80, size, 0)  # dropped, counted
    assert bus.misses == 2


def test_unclaimed_mmio_qword() -> None:
    assert MmioBus().read(0x1000, 8) == (1 << 64) - 1


def test_overlap_error_names_both() -> None:
    bus = PioBus()
    bus.register(0x3F8, 8, Recorder(), "serial0")
    with pytest.raises(BusError) as ei:
        bus.register(0x3FC, 8, Recorder(), "intruder")
    msg = str(ei.value)
    assert "serial0" in msg and "intruder" in msg
    with pytest.raises(BusError):
        bus.register(0x3F0, 0x100, Recorder(), "big")
    bus.register(0x400, 1, Recorder(), "adjacent")  # touching is fine
    bus.register(0x3F7, 1, Recorder(), "adjacent-below")


def test_pio_address_space_limits() -> None:
    bus = PioBus()
    with pytest.raises(BusError):
        bus.register(0xFFFF, 2, Recorder())
    with pytest.raises(BusError):
        bus.register(-1, 1, Recorder())
    with pytest.raises(BusError):
        bus.register(0x10, 0, Recorder())
    bus.register(0xFFFF, 1, Recorder())
    with pytest.raises(BusError):
        bus.read(0x10000, 1)
    with pytest.raises(BusError):
        bus.read(0x10, 8)  # no 8-byte port I/O
    with pytest.raises(BusError):
        bus.read(0x10, 3)


def test_unregister() -> None:
    bus = PioBus()
    d = Recorder()
    bus.register(0x70, 2, d)
    assert bus.read(0x70, 1) == 0xA0  # populates the lookup cache
    assert bus.unregister(0x70) is d
    assert bus.read(0x70, 1) == 0xFF
    with pytest.raises(BusError):
        bus.unregister(0x70)
    bus.register(0x70, 2, Recorder())  # the range is free again


def test_access_spanning_end_of_device_is_split() -> None:
    bus = PioBus()
    d = Recorder()
    bus.register(0x100, 2, d)
    # bytes 0x100, 0x101 from the device, 0x102, 0x103 unclaimed
    assert bus.read(0x100, 4) == 0xFFFFA1A0
    assert d.log == [("r", 0, 1), ("r", 1, 1)]
    d.log.clear()
    bus.write(0x101, 4, 0x44332211)
    assert d.log == [("w", 1, 1, 0x11)]


def test_access_starting_before_device_is_split() -> None:
    bus = PioBus()
    d = Recorder()
    bus.register(0x102, 2, d)
    assert bus.read(0x100, 4) == 0xA1A0FFFF
    d.log.clear()
    bus.write(0x100, 4, 0x44332211)
    assert d.log == [("w", 0, 1, 0x33), ("w", 1, 1, 0x44)]


def test_access_spanning_two_devices() -> None:
    bus = PioBus()
    a, b = Recorder(), Recorder()
    bus.register(0x10, 1, a)
    bus.register(0x11, 1, b)
    assert bus.read(0x10, 2) == 0xA0A0


def test_many_devices_dispatch() -> None:
    bus: Bus = MmioBus()
    devs = [Recorder() for _ in range(64)]
    for i, d in enumerate(devs):
        bus.register(0x10000 + i * 0x1000, 0x1000, d, f"d{i}")
    for i in range(64):
        bus.write(0x10000 + i * 0x1000 + 0x40, 4, i)
    assert all(d.log == [("w", 0x40, 4, i)] for i, d in enumerate(devs))
    assert bus.misses == 0
