"""virtio-blk's zero-copy path: I/O straight between the image file and guest RAM views (issue 15).

Requests laid out the ways a driver may lay them out -- data crossing two RAM regions, header and data
in one descriptor, data and status in one descriptor, many small segments -- must move the same bytes
as the plain layout; used elements of one notification are published together with one interrupt.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from test_virtio_helpers import MODERN, SplitDriver, bring_up

from refvm.block import RawFile
from refvm.block.vectored import IOV_MAX, preadv_full, pwritev_full
from refvm.memory import GuestMemory
from refvm.virtio.devices import blk as B
from refvm.virtio.devices.blk import VirtioBlk

MIB = 1 << 20
FEATS = MODERN | (1 << B.VIRTIO_BLK_F_FLUSH)


def _image(tmp_path: Path) -> Path:
    p = tmp_path / "disk.img"
    p.write_bytes(bytes((i * 13 + 5) & 0xFF for i in range(1 << 20)))
    return p


class TwoRegionRig:
    """Guest RAM in two adjacent regions (0..1 MiB, 1..2 MiB): a buffer may cross the boundary."""

    def __init__(self, image: Path) -> None:
        self.mem = GuestMemory()
        self.mem.add_ram(0, MIB)
        self.mem.add_ram(MIB, MIB)
        self.dev = VirtioBlk.create(self.mem, {"drive": "d0"}, drives={"d0": RawFile(str(image))})
        self.drv = SplitDriver(self.mem, 16)
        self.irqs = 0
        self.dev.on_used_buffer = self._irq
        assert bring_up(self.dev, FEATS, configure=self.drv.configure)
        self.head = 0

    def _irq(self, _index: int) -> None:
        self.irqs += 1

    def add(self, elems: list[tuple[int, int, bool]]) -> None:
        self.drv.chain(self.head, elems)
        self.drv.publish(self.head)
        self.head += len(elems)


def test_read_and_write_across_two_ram_regions(tmp_path: Path) -> None:
    image = _image(tmp_path)
    r = TwoRegionRig(image)
    hdr, data, status = 0x1000, MIB - 2048, 0x3000  # data: 2 KiB in each region
    r.mem.write(hdr, struct.pack("<IIQ", B.T_IN, 0, 8))
    r.add([(hdr, 16, False), (data, 4096, True), (status, 1, True)])
    r.dev.queue_notify(0)
    assert r.dev.error is None and r.mem.read_u8(status) == B.S_OK
    assert r.mem.read(data, 4096) == image.read_bytes()[4096:8192]
    assert r.drv.used_elem(0) == (0, 4097)
    payload = os.urandom(4096)
    r.mem.write(data, payload)
    r.mem.write(hdr, struct.pack("<IIQ", B.T_OUT, 0, 16))
    r.add([(hdr, 16, False), (data, 4096, False), (status, 1, True)])
    r.dev.queue_notify(0)
    assert r.mem.read_u8(status) == B.S_OK
    assert image.read_bytes()[8192:12288] == payload


def test_header_with_data_and_data_with_status_in_one_descriptor(tmp_path: Path) -> None:
    image = _image(tmp_path)
    r = TwoRegionRig(image)
    payload = os.urandom(1024)
    r.mem.write(0x4000, struct.pack("<IIQ", B.T_OUT, 0, 2) + payload)  # header and data together
    r.add([(0x4000, 16 + 1024, False), (0x5000, 1, True)])
    r.dev.queue_notify(0)
    assert r.mem.read_u8(0x5000) == B.S_OK and image.read_bytes()[1024:2048] == payload
    # read 1024 bytes as 3 segments, the last one carrying the status byte too
    r.mem.write(0x4000, struct.pack("<IIQ", B.T_IN, 0, 2))
    r.add([(0x4000, 16, False), (0x6000, 100, True), (0x7000, 400, True), (0x8000, 525, True)])
    r.dev.queue_notify(0)
    got = r.mem.read(0x6000, 100) + r.mem.read(0x7000, 400) + r.mem.read(0x8000, 524)
    assert got == payload and r.mem.read_u8(0x8000 + 524) == B.S_OK
    assert r.drv.used_elem(1) == (2, 1025)


def test_one_used_idx_store_and_one_interrupt_per_notification(tmp_path: Path) -> None:
    r = TwoRegionRig(_image(tmp_path))
    for k in range(3):
        base = 0x40000 + 0x1000 * k
        r.mem.write(base, struct.pack("<IIQ", B.T_IN, 0, k))
        r.drv.chain(3 * k, [(base, 16, False), (base + 0x100, 512, True), (base + 0x400, 1, True)])
        r.drv.publish(3 * k, bump=False)
    r.drv.set_avail_idx(3)
    r.dev.queue_notify(0)
    assert r.drv.used_idx() == 3 and r.irqs == 1
    assert [r.drv.used_elem(i) for i in range(3)] == [(0, 513), (3, 513), (6, 513)]


def test_vectored_helpers_split_at_iov_max_and_zero_fill_past_eof(tmp_path: Path) -> None:
    path = tmp_path / "f"
    data = os.urandom(3 * IOV_MAX)
    path.write_bytes(data)
    fd = os.open(path, os.O_RDWR)
    try:
        bufs = [memoryview(bytearray(3)) for _ in range(IOV_MAX + 5)]  # more iovecs than one syscall takes
        preadv_full(fd, bufs, 0)
        got = b"".join(bufs)
        assert got[: len(data)] == data and got[len(data):] == bytes(15)  # past EOF: zeroes
        pwritev_full(fd, [memoryview(b"ab")] * (IOV_MAX + 1), 10)
        assert path.read_bytes()[10 : 10 + 2 * (IOV_MAX + 1)] == b"ab" * (IOV_MAX + 1)
    finally:
        os.close(fd)


def test_qcow2_vectored_read_and_write_match_the_plain_path(tmp_path: Path) -> None:
    """qcow2's preadv_into (one preadv on host-contiguous runs, else a copy) and pwritev_from give the
    same bytes as read/write, across allocated, unallocated and out-of-order clusters; qemu-img check agrees."""
    import subprocess

    from refvm.block.driver import open_image
    from refvm.block.qcow2 import create_qcow2

    path = tmp_path / "t.qcow2"
    create_qcow2(str(path), 4 * MIB)
    img = open_image(str(path), "qcow2")
    a, b = os.urandom(128 << 10), os.urandom(64 << 10)
    img.pwritev_from(MIB, [memoryview(a[:1000]), memoryview(a[1000:])])  # two clusters, contiguous on the host
    img.write(0, b)  # allocated after: guest 0 lies after guest 1 MiB on the host
    for off, n in ((MIB, 128 << 10), (0, MIB + (64 << 10)), (MIB - 512, 4096), (3 * MIB, 8192)):
        bufs = [memoryview(bytearray(n // 2)), memoryview(bytearray(n - n // 2))]
        img.preadv_into(off, bufs)
        assert b"".join(bufs) == img.read(off, n)
    assert img.read(MIB, 128 << 10) == a and img.read(0, 64 << 10) == b
    img.close()
    check = subprocess.run(["qemu-img", "check", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
