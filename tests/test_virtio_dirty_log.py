"""Device writes through virtio's zero-copy views land in GuestMemory's dirty log while a migration logs.

A real virtio-rng (reading /dev/urandom) and virtio-blk (a real raw file) on split and packed rings laid out
byte by byte in real GuestMemory: after a completion, take_dirty() holds the pages of the device-writable buffer
(the rng's entropy, the blk sector read and its status byte) and the ring bytes the device stored (used element
and used idx, or the packed descriptor written back), and nothing the device only read.  With the deviation
`migration-drop-dirty` (device writes not logged) those pages are missing; with logging off nothing is kept.
"""
from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_virtio_helpers import MODERN, PACKED, PackedDriver, SplitDriver, bring_up, make_mem

from refvm.block.drive import open_drive
from refvm.clock import RealtimeClock
from refvm.memory import GuestMemory
from refvm.virtio.devices.blk import VirtioBlk
from refvm.virtio.devices.rng import VirtioRng

BUF = 0x40FF0  # 32 bytes crossing from page 0x40000 into 0x41000
HDR, DATA, STATUS, BUF2 = 0x50000, 0x60000, 0x70FFF, 0x80000


@pytest.fixture
def mem() -> Iterator[GuestMemory]:
    m = make_mem(1 << 20)
    yield m
    m.stop_dirty_log()
    m.close()


def _pages(*ranges: tuple[int, int]) -> set[int]:
    return {p << 12 for a, n in ranges for p in range(a >> 12, ((a + n - 1) >> 12) + 1)}


def test_split_used_ring_and_rng_buffer_are_logged(mem: GuestMemory) -> None:
    dev = VirtioRng(mem)
    drv = SplitDriver(mem, 8)
    assert bring_up(dev, MODERN, configure=drv.configure)
    mem.start_dirty_log()
    drv.chain(0, [(BUF, 32, True)])
    drv.publish(0)
    mem.take_dirty()  # what the driver wrote (through GuestMemory.write) is not the question here
    dev.queue_notify(0)
    assert drv.used_idx() == 1 and drv.used_elem(0) == (0, 32)
    assert mem.take_dirty() == _pages((BUF, 32), (drv.used, 6 + 8 * 8))


def test_packed_descriptor_write_back_and_blk_read_are_logged(mem: GuestMemory, tmp_path: Path) -> None:
    disk = tmp_path / "disk.raw"
    disk.write_bytes(bytes([0x5A]) * 4096)
    drive = open_drive("d0", {"file": str(disk), "format": "raw"}, clock=RealtimeClock())
    dev = VirtioBlk(mem, drive)
    drv = PackedDriver(mem, 16)
    assert bring_up(dev, MODERN | PACKED, configure=drv.configure)
    mem.start_dirty_log()
    mem.write(HDR, struct.pack("<IIQ", 0, 0, 0))  # VIRTIO_BLK_T_IN, sector 0
    drv.add([(HDR, 16, False), (DATA, 512, True), (STATUS, 1, True)], buf_id=7)
    mem.take_dirty()
    dev.queue_notify(0)
    assert drv.get_used() is not None and mem.read(DATA, 4) == b"ZZZZ" and mem.read_u8(STATUS) == 0
    dirty = mem.take_dirty()
    assert dirty == _pages((DATA, 512), (STATUS, 1), (drv.desc, 16)), "data, status byte and the used descriptor"
    assert HDR not in dirty, "a buffer the device only read is not dirty"
    drive.close()


def test_deviation_and_logging_off_keep_nothing(mem: GuestMemory) -> None:
    dev = VirtioRng(mem)
    drv = SplitDriver(mem, 8)
    assert bring_up(dev, MODERN, configure=drv.configure)
    drv.chain(0, [(BUF, 32, True)])
    drv.publish(0)
    dev.queue_notify(0)  # not logging: nothing recorded, and nothing to take later
    mem.start_dirty_log()
    assert mem.take_dirty() == set()
    mem.drop_view_marks = True  # what a machine with x-deviation=migration-drop-dirty sets
    drv.chain(1, [(BUF2, 32, True)])
    drv.publish(1)
    mem.take_dirty()
    dev.queue_notify(0)
    assert drv.used_idx() == 2 and mem.read(BUF2, 32) != bytes(32)
    assert mem.take_dirty() == set(), "with migration-drop-dirty device writes are not logged"
