"""Packed virtqueues (VIRTIO 1.2 §2.8), on a virtio-blk that offers VIRTIO_F_RING_PACKED.

QEMU 7.2 offers RING_PACKED on virtio-blk only with `packed=on`; a device that does not offer it at all
skips these tests (the feature is optional), it does not fail them.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from conformance.drivers.virtio import F_EVENT_IDX, F_INDIRECT_DESC, F_RING_PACKED
from conformance.drivers.virtqueue import (
    DESC_F_AVAIL,
    DESC_F_USED,
    RING_EVENT_FLAGS_DESC,
    RING_EVENT_FLAGS_DISABLE,
    RING_EVENT_FLAGS_ENABLE,
    PackedQueue,
)
from conformance.virtio.conftest import Machine, blk_args, clause
from conformance.virtio.devices import S_OK, SECTOR, T_IN, T_OUT, blk_header

PACKED = "Basic Facilities of a Virtio Device / Packed Virtqueues"
DESC = f"{PACKED} / The Virtqueue Descriptor Table"
SG = f"{PACKED} / Scatter-Gather Support"


@pytest.fixture
def pblk(vm: Callable[..., Machine], disk: str) -> Machine:
    machine = vm(*blk_args(disk, "packed=on"))
    if not machine.device("blk").device_features() >> F_RING_PACKED & 1:
        pytest.skip("virtio-blk does not offer VIRTIO_F_RING_PACKED")
    return machine


def _ready(m: Machine, size: int = 16, want: int = 0, msix: bool = False) -> PackedQueue:
    dev, (vq,) = m.ready("blk", want=want | 1 << F_RING_PACKED, size=size, packed=True, msix=msix)
    assert isinstance(vq, PackedQueue)
    return vq


def _read(vq: PackedQueue, sector: int, ins: tuple[int, ...] = (SECTOR, 1), **kw: object) -> None:
    c = vq.transact([blk_header(T_IN, sector)], list(ins), **kw)  # type: ignore[arg-type]
    flat = b"".join(c.data)
    assert flat[SECTOR] == S_OK and flat[:8] == b"sect%04d" % sector, flat[:16]
    assert c.used.length == SECTOR + 1


@clause(PACKED, DESC)
def test_used_descriptor_written_in_place(pblk: Machine) -> None:
    vq = _ready(pblk)
    bid = vq.add([vq.out_buf(blk_header(T_IN, 3)), vq.in_buf(SECTOR), vq.in_buf(1)])
    vq.kick()
    used = vq.wait_used()
    assert used == type(used)(bid, SECTOR + 1)
    _, length, rid, flags = vq.read_desc(0)
    assert flags & (DESC_F_AVAIL | DESC_F_USED) == DESC_F_AVAIL | DESC_F_USED, f"flags {flags:#x} in lap 1"
    assert (rid, length) == (bid, SECTOR + 1)
    assert vq.read_back(bid)[0][:8] == b"sect0003"
    snapshot = vq.qt.read(vq.desc_addr, 16 * vq.size)
    time.sleep(0.05)
    assert vq.qt.read(vq.desc_addr, 16 * vq.size) == snapshot, "device changed a descriptor after marking it used"


@clause(PACKED, DESC, SG)
def test_wrap_counters_across_ring_wraps(pblk: Machine) -> None:
    """Size 8 and 3-descriptor lists: lists straddle the end of the ring and both wrap counters flip."""
    vq = _ready(pblk, size=8)
    for n in range(12):
        _read(vq, n, (100, SECTOR - 100 + 1))
    assert vq.used_wrap == vq.avail_wrap
    assert vq.next_used == vq.next_avail == (12 * 3) % 8
    lap = (12 * 3) // 8 + 1
    _, _, _, flags = vq.read_desc((vq.next_used - 3) % 8)
    expect = DESC_F_AVAIL | DESC_F_USED if lap % 2 else 0
    assert flags & (DESC_F_AVAIL | DESC_F_USED) == expect, f"lap {lap}: used flags {flags:#x}"


@clause(DESC)
def test_descriptor_not_used_without_avail_bit_change(pblk: Machine) -> None:
    """A descriptor whose AVAIL/USED bits do not match the device's wrap counter is not available."""
    vq = _ready(pblk)
    bid = vq.add([vq.out_buf(blk_header(T_IN, 5)), vq.in_buf(SECTOR + 1)])
    addr, length, _, flags = vq.read_desc(0)
    stale = flags & ~(DESC_F_AVAIL | DESC_F_USED) | DESC_F_USED  # looks like lap 0's used descriptor
    vq.qt.writew(vq.desc_addr + 14, stale)
    vq.kick()
    vq.assert_idle(0.1)
    vq.qt.writew(vq.desc_addr + 14, flags)
    vq.kick()
    assert vq.wait_used().id == bid
    assert vq.read_back(bid)[0][:8] == b"sect0005"


@clause(DESC)
def test_device_does_not_write_readable_buffers(pblk: Machine, disk: str) -> None:
    vq = _ready(pblk)
    data = bytes(range(256)) * 2
    segs = [vq.out_buf(blk_header(T_OUT, 6)), vq.out_buf(data), vq.in_buf(1)]
    bid = vq.add(segs)
    vq.kick()
    assert vq.wait_used().id == bid
    assert vq.qt.read(segs[1].addr, SECTOR) == data
    assert vq.qt.read(segs[0].addr, 16) == blk_header(T_OUT, 6)
    with open(disk, "rb") as f:
        f.seek(6 * SECTOR)
        assert f.read(SECTOR) == data


@clause(PACKED, SG)
def test_several_buffers_and_scatter_order(pblk: Machine) -> None:
    """Four buffers made available at once, each scattering one sector over four descriptors: every
    buffer is used once, and the data lands in descriptor order."""
    vq = _ready(pblk, size=32)
    bids = {vq.add([vq.out_buf(blk_header(T_IN, 40 + n)), *(vq.in_buf(128) for _ in range(4)), vq.in_buf(1)]):
            40 + n for n in range(4)}
    vq.kick()
    seen = {}
    for _ in bids:
        used = vq.wait_used()
        seen[used.id] = used.length
    assert set(seen) == set(bids) and all(v == SECTOR + 1 for v in seen.values())
    for bid, sector in bids.items():
        data = b"".join(vq.read_back(bid))
        assert data[:8] == b"sect%04d" % sector and data[SECTOR] == S_OK


@clause(PACKED)
def test_packed_indirect(pblk: Machine) -> None:
    if not pblk.device("blk").device_features() >> F_INDIRECT_DESC & 1:
        pytest.skip("device does not offer VIRTIO_F_INDIRECT_DESC")
    vq = _ready(pblk, want=1 << F_INDIRECT_DESC)
    for n in range(3):
        _read(vq, 50 + n, indirect_from=0)


@clause(PACKED)
def test_driver_event_suppression(pblk: Machine) -> None:
    vq = _ready(pblk, msix=True)
    dev = pblk.device("blk")
    _read(vq, 1)
    time.sleep(0.02)
    assert dev.msix_fired(1), "no notification with driver event flags ENABLE"
    vq.set_driver_event(RING_EVENT_FLAGS_DISABLE)
    for n in range(3):
        _read(vq, n)
        time.sleep(0.02)
        assert not dev.msix_fired(1), "notification sent although driver event flags are DISABLE"
    vq.set_driver_event(RING_EVENT_FLAGS_ENABLE)
    _read(vq, 4)
    time.sleep(0.02)
    assert dev.msix_fired(1)


@clause(PACKED)
def test_driver_event_desc_mode(pblk: Machine) -> None:
    """With EVENT_IDX, flags DESC and off_wrap naming the slot of one buffer (§2.8.10): the use of that
    buffer is notified and the ones before it are not. (One ENABLE'd request first, so that no 'first
    notification' heuristics of the device are involved.)"""
    if not pblk.device("blk").device_features() >> F_EVENT_IDX & 1:
        pytest.skip("device does not offer VIRTIO_F_EVENT_IDX")
    vq = _ready(pblk, msix=True, want=1 << F_EVENT_IDX, size=16)
    dev = pblk.device("blk")
    for n in range(4):  # buffers of 2 descriptors: buffer n starts at slot 2n
        if n == 1:
            vq.set_driver_event(RING_EVENT_FLAGS_DESC, off_wrap=(1 << 15) | 6)
        c = vq.transact([blk_header(T_IN, n)], [SECTOR + 1])
        assert c.data[0][SECTOR] == S_OK
        time.sleep(0.02)
        fired = dev.msix_fired(1)
        assert fired == (n in (0, 3)), f"buffer {n}: notified={fired}, expected only the one at slot 6"
