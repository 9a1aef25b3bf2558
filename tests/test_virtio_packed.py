"""Packed virtqueue, device side (VIRTIO 1.2 section 2.8): descriptors written byte by byte by the test."""

from __future__ import annotations

import struct

from test_virtio_helpers import (
    DESC_F_INDIRECT,
    DESC_F_NEXT,
    DESC_F_WRITE,
    EVENT_IDX,
    INDIRECT,
    MODERN,
    PACKED,
    EchoDevice,
    PackedDriver,
    bring_up,
    make_mem,
)

from refvm.virtio import status as S
from refvm.virtio.packed_queue import (
    RING_EVENT_FLAGS_DESC,
    RING_EVENT_FLAGS_DISABLE,
    RING_EVENT_FLAGS_ENABLE,
    VIRTQ_DESC_F_AVAIL,
    VIRTQ_DESC_F_USED,
    PackedQueue,
)

USED_BOTH = VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED


def setup(features: int = MODERN | PACKED | INDIRECT, size: int = 4, max_size: int = 8, **kw):
    mem = make_mem()
    dev = EchoDevice(mem, sizes=(max_size,), **kw)
    drv = PackedDriver(mem, size)
    assert bring_up(dev, features, configure=drv.configure)
    assert isinstance(dev.queues[0], PackedQueue)
    irqs: list[int] = []
    dev.on_used_buffer = irqs.append
    return mem, dev, drv, irqs


def ok(dev: EchoDevice) -> None:
    assert not dev.status & S.DEVICE_NEEDS_RESET, dev.error


def test_single_buffer_used_in_place() -> None:
    mem, dev, drv, irqs = setup()
    mem.write(0x1000, b"packed")
    drv.add([(0x1000, 6, False), (0x2000, 8, True)], buf_id=7)
    dev.queue_notify(0)
    ok(dev)
    assert mem.read(0x2000, 6) == b"packed"
    # 2.8.6: one used descriptor, written over the first descriptor of the list.
    raw = mem.read(drv.desc, 16)
    _addr, length, buf_id, flags = struct.unpack("<QIHH", raw)
    assert (buf_id, length) == (7, 6)
    assert flags & USED_BOTH == USED_BOTH and flags & DESC_F_WRITE
    assert drv.get_used() == (7, 6, flags)
    assert irqs == [0]
    # The second slot is still the driver's available descriptor: nothing written there.
    assert struct.unpack("<QIHH", mem.read(drv.desc + 16, 16))[3] & VIRTQ_DESC_F_USED == 0


def test_readonly_buffer_used_descriptor_has_no_write_flag() -> None:
    mem, dev, drv, _ = setup()
    dev.strict = False
    drv.add([(0x1000, 4, False)], buf_id=1)
    dev.queue_notify(0)
    ok(dev)
    buf_id, length, flags = drv.get_used()  # type: ignore[misc]
    assert (buf_id, length) == (1, 0) and not flags & DESC_F_WRITE


def test_wrap_counters_across_several_ring_wraps() -> None:
    mem, dev, drv, _ = setup(size=3)
    q = dev.queues[0]
    assert isinstance(q, PackedQueue)
    seen_wraps = set()
    for n in range(10):  # lists of 1 and 2 descriptors wrap the 3-slot ring at varying offsets
        payload = bytes([97 + n]) * 3
        mem.write(0x1000, payload)
        if n % 2:
            drv.add([(0x1000, 3, False), (0x2000 + 16 * n, 3, True)], buf_id=n)
        else:
            drv.add([(0x2000 + 16 * n, 3, True)], buf_id=n)
        dev.queue_notify(0)
        ok(dev)
        used = drv.get_used()
        assert used is not None and used[0] == n
        assert used[1] == (3 if n % 2 else 0)
        if n % 2:
            assert mem.read(0x2000 + 16 * n, 3) == payload
        assert (q.next_avail, q.avail_wrap) == (drv.next_avail, drv.avail_wrap)
        assert (q.next_used, q.used_wrap) == (drv.next_used, drv.used_wrap)
        seen_wraps.add(q.used_wrap)
    assert seen_wraps == {0, 1}


def test_batch_fills_ring_then_completes_in_order() -> None:
    mem, dev, drv, irqs = setup(size=4)
    drv.add([(0x1000, 1, False), (0x2000, 1, True)], buf_id=10)
    drv.add([(0x1000, 1, False), (0x2100, 1, True)], buf_id=11)
    dev.queue_notify(0)
    ok(dev)
    assert [drv.get_used()[0], drv.get_used()[0]] == [10, 11]  # type: ignore[index]
    assert drv.get_used() is None
    assert irqs == [0]


def test_descriptor_not_yet_available_is_not_consumed() -> None:
    mem, dev, drv, _ = setup()
    # A zero-initialised ring (2.8.13): flags 0 is not available for wrap counter 1.
    dev.queue_notify(0)
    ok(dev)
    assert dev.handled == 0


def test_indirect_table() -> None:
    mem, dev, drv, _ = setup()
    mem.write(0x1000, b"indirect")
    table = struct.pack("<QIHH", 0x1000, 8, 0, 0) + struct.pack("<QIHH", 0x2000, 3, 0, DESC_F_WRITE)
    table += struct.pack("<QIHH", 0x3000, 5, 0xFFFF, DESC_F_WRITE | DESC_F_NEXT | DESC_F_INDIRECT)  # ignored bits
    mem.write(0x5000, table)
    drv.add([(0x5000, len(table), False)], buf_id=3, indirect=True)
    dev.queue_notify(0)
    ok(dev)
    assert mem.read(0x2000, 3) == b"ind" and mem.read(0x3000, 5) == b"irect"
    assert drv.get_used()[:2] == (3, 8)  # type: ignore[index]


def test_event_suppression_disable_and_enable() -> None:
    mem, dev, drv, irqs = setup()
    drv.set_driver_event(RING_EVENT_FLAGS_DISABLE)
    drv.add([(0x2000, 1, True)], buf_id=1)
    dev.queue_notify(0)
    assert irqs == [] and drv.get_used() is not None
    drv.set_driver_event(RING_EVENT_FLAGS_ENABLE)
    drv.add([(0x2000, 1, True)], buf_id=2)
    dev.queue_notify(0)
    assert irqs == [0]


def test_event_suppression_desc_mode() -> None:
    mem, dev, drv, irqs = setup(MODERN | PACKED | EVENT_IDX, size=4)
    # Ask for an event when the used descriptor at slot 2 of the first lap (wrap 1) is written.
    drv.set_driver_event(RING_EVENT_FLAGS_DESC, off=2, wrap=1)
    for n in range(2):
        drv.add([(0x2000, 1, True)], buf_id=n)
        dev.queue_notify(0)
    assert irqs == []
    drv.add([(0x2000, 1, True)], buf_id=2)
    dev.queue_notify(0)
    assert irqs == [0]
    drv.add([(0x2000, 1, True)], buf_id=3)  # slot 3
    dev.queue_notify(0)
    assert irqs == [0]
    # Second lap (device wrap counter now 0): slot 2 with wrap 1 is a lap away, slot 1 wrap 0 is next.
    drv.set_driver_event(RING_EVENT_FLAGS_DESC, off=1, wrap=0)
    drv.add([(0x2000, 1, True)], buf_id=4)  # slot 0, wrap 0
    dev.queue_notify(0)
    assert irqs == [0]
    drv.add([(0x2000, 1, True)], buf_id=5)  # slot 1, wrap 0
    dev.queue_notify(0)
    assert irqs == [0, 0]
    q = dev.queues[0]
    assert (q.next_used, q.used_wrap) == (2, 0)


def test_event_suppression_desc_mode_counts_skipped_slots() -> None:
    mem, dev, drv, irqs = setup(MODERN | PACKED | EVENT_IDX, size=4)
    drv.set_driver_event(RING_EVENT_FLAGS_DESC, off=1, wrap=1)
    # A 3-descriptor list occupies slots 0..2; the used descriptor lands on slot 0, slots 1-2 skipped.
    drv.add([(0x1000, 1, False), (0x2000, 1, True), (0x2100, 1, True)], buf_id=9)
    dev.queue_notify(0)
    assert irqs == [0]


def test_desc_mode_without_event_idx_acts_as_enable() -> None:
    mem, dev, drv, irqs = setup(MODERN | PACKED)
    drv.set_driver_event(RING_EVENT_FLAGS_DESC, off=3, wrap=1)
    drv.add([(0x2000, 1, True)], buf_id=1)
    dev.queue_notify(0)
    assert irqs == [0]


def test_device_event_suppression_written_by_device() -> None:
    mem, dev, drv, _ = setup()
    q = dev.queues[0]
    q.suppress_notifications(True)
    assert drv.device_event() == (0, RING_EVENT_FLAGS_DISABLE)
    q.suppress_notifications(False)
    assert drv.device_event() == (0, RING_EVENT_FLAGS_ENABLE)


def test_non_power_of_two_size() -> None:
    mem, dev, drv, _ = setup(size=5)
    for n in range(12):
        drv.add([(0x1000, 1, False), (0x2000, 1, True)], buf_id=n)
        dev.queue_notify(0)
        assert drv.get_used()[0] == n  # type: ignore[index]
    ok(dev)


def test_raw_descriptor_flags_for_second_lap() -> None:
    """After one wrap the driver marks available with AVAIL=0, USED=1 (2.8.1)."""
    mem, dev, drv, _ = setup(size=2)
    for n in range(2):
        drv.add([(0x2000, 1, True)], buf_id=n)
    dev.queue_notify(0)
    drv.get_used()
    drv.get_used()
    assert drv.avail_wrap == 0
    slot = drv.add([(0x2000, 1, True)], buf_id=5)
    flags = mem.read_u16(drv.desc + 16 * slot + 14)
    assert flags & USED_BOTH == VIRTQ_DESC_F_USED
    dev.queue_notify(0)
    flags = mem.read_u16(drv.desc + 16 * slot + 14)
    assert flags & USED_BOTH == 0  # device wrap counter 0: both bits clear = used
    assert drv.get_used()[0] == 5  # type: ignore[index]
