"""Split virtqueue, device side (VIRTIO 1.2 section 2.7): rings written byte by byte by the test."""

from __future__ import annotations

import struct

import pytest
from test_virtio_helpers import (
    DESC_F_INDIRECT,
    DESC_F_NEXT,
    DESC_F_WRITE,
    EVENT_IDX,
    INDIRECT,
    MODERN,
    EchoDevice,
    SplitDriver,
    bring_up,
    make_mem,
)

from refvm.virtio import status as S
from refvm.virtio.split_queue import SplitQueue, vring_need_event


def setup(features: int = MODERN | INDIRECT, size: int = 8, **kw):
    mem = make_mem()
    dev = EchoDevice(mem, **kw)
    drv = SplitDriver(mem, size)
    assert bring_up(dev, features, configure=drv.configure)
    irqs: list[int] = []
    dev.on_used_buffer = irqs.append
    return mem, dev, drv, irqs


def ok(dev: EchoDevice) -> None:
    assert not dev.status & S.DEVICE_NEEDS_RESET, dev.error


def test_simple_chain_echo() -> None:
    mem, dev, drv, irqs = setup()
    mem.write(0x1000, b"ping!")
    drv.publish(drv.chain(0, [(0x1000, 5, False), (0x2000, 16, True)]))
    dev.queue_notify(0)
    ok(dev)
    assert mem.read(0x2000, 5) == b"ping!"
    assert drv.used_idx() == 1
    assert drv.used_elem(0) == (0, 5)
    assert irqs == [0] and dev.read_isr() == 1


def test_mixed_readable_writable_scatter() -> None:
    mem, dev, drv, _ = setup()
    mem.write(0x1000, b"abc")
    mem.write(0x1100, b"defgh")
    drv.publish(drv.chain(2, [(0x1000, 3, False), (0x1100, 5, False), (0x2000, 2, True), (0x3000, 10, True)]))
    dev.queue_notify(0)
    ok(dev)
    assert mem.read(0x2000, 2) == b"ab" and mem.read(0x3000, 6) == b"cdefgh"
    assert drv.used_elem(0) == (2, 8)


def test_chain_with_arbitrary_next_order() -> None:
    mem, dev, drv, _ = setup()
    mem.write(0x1000, b"xy")
    drv.set_desc(5, 0x1000, 2, DESC_F_NEXT, 1)
    drv.set_desc(1, 0x2000, 2, DESC_F_WRITE | DESC_F_NEXT, 7)
    drv.set_desc(7, 0x2100, 2, DESC_F_WRITE)
    drv.publish(5)
    dev.queue_notify(0)
    ok(dev)
    assert drv.used_elem(0) == (5, 2) and mem.read(0x2000, 2) == b"xy"


def test_used_ring_order_and_multiple_buffers() -> None:
    mem, dev, drv, irqs = setup()
    for k in range(4):
        mem.write(0x1000 + 0x100 * k, bytes([65 + k]) * (k + 1))
        drv.chain(2 * k, [(0x1000 + 0x100 * k, k + 1, False), (0x4000 + 0x100 * k, 8, True)])
    drv.publish(6, 0, 4, 2)
    dev.queue_notify(0)
    ok(dev)
    assert drv.used_idx() == 4
    assert [drv.used_elem(n) for n in range(4)] == [(6, 4), (0, 1), (4, 3), (2, 2)]
    assert irqs == [0]  # one notification for the batch


def test_indirect_table_and_write_flag_on_indirect_descriptor_ignored() -> None:
    mem, dev, drv, _ = setup()
    mem.write(0x1000, b"indirect")
    table = struct.pack("<QIHH", 0x1000, 8, DESC_F_NEXT, 2)
    table += struct.pack("<QIHH", 0x3000, 4, DESC_F_WRITE, 0)  # index 1
    table += struct.pack("<QIHH", 0x2000, 4, DESC_F_WRITE | DESC_F_NEXT, 1)  # index 2
    mem.write(0x5000, table)
    drv.set_desc(3, 0x5000, len(table), DESC_F_INDIRECT | DESC_F_WRITE)  # 2.7.5.3.2: WRITE ignored
    drv.publish(3)
    dev.queue_notify(0)
    ok(dev)
    assert mem.read(0x2000, 4) == b"indi" and mem.read(0x3000, 4) == b"rect"
    assert drv.used_elem(0) == (3, 8)


def test_direct_chain_ending_in_indirect() -> None:
    mem, dev, drv, _ = setup()
    mem.write(0x1000, b"hd")
    mem.write(0x5000, struct.pack("<QIHH", 0x2000, 2, DESC_F_WRITE, 0))
    drv.set_desc(0, 0x1000, 2, DESC_F_NEXT, 1)
    drv.set_desc(1, 0x5000, 16, DESC_F_INDIRECT)
    drv.publish(0)
    dev.queue_notify(0)
    ok(dev)
    assert mem.read(0x2000, 2) == b"hd" and drv.used_elem(0) == (0, 2)


def test_avail_idx_wraps_at_65536() -> None:
    mem, dev, drv, _ = setup()
    q = dev.queues[0]
    assert isinstance(q, SplitQueue)
    # Start the free-running indices near the wrap, as after 65534 earlier buffers.
    q.last_avail_idx = q.used_idx = q._signalled_used = 0xFFFE
    drv.idx = 0xFFFE
    mem.write_u16(drv.used + 2, 0xFFFE)
    for k in range(4):
        mem.write(0x1000 + 16 * k, bytes([48 + k]))
        drv.chain(2 * k, [(0x1000 + 16 * k, 1, False), (0x2000 + 16 * k, 1, True)])
    drv.publish(0, 2)
    drv.publish(4, 6)
    assert drv.idx == 2
    dev.queue_notify(0)
    ok(dev)
    assert drv.used_idx() == 2
    assert [drv.used_elem(n) for n in (0xFFFE, 0xFFFF, 0, 1)] == [(0, 1), (2, 1), (4, 1), (6, 1)]
    assert mem.read(0x2030, 1) == b"3"


@pytest.mark.parametrize(
    ("event", "new", "old", "expected"),
    [
        (0, 1, 0, True),  # used_event 0: notify after the first buffer (2.7.7.2 note)
        (0, 2, 1, False),
        (1, 2, 1, True),
        (5, 3, 0, False),
        (2, 3, 0, True),
        (0xFFFF, 0, 0xFFFE, True),  # window crosses the wrap
        (0xFFFE, 1, 0xFFFF, False),
        (0, 1, 0xFFFF, True),
        (7, 7, 7, False),  # empty window
        (10, 20, 10, True),
        (9, 20, 10, False),
        (19, 20, 10, True),
        (20, 20, 10, False),
    ],
)
def test_vring_need_event_golden(event: int, new: int, old: int, expected: bool) -> None:
    assert vring_need_event(event, new, old) is expected


def test_event_idx_used_event_decides_notifications() -> None:
    mem, dev, drv, irqs = setup(MODERN | EVENT_IDX)
    drv.set_used_event(2)  # notify when the entry at used idx 2 is written
    for k in range(4):
        drv.chain(2 * k, [(0x1000, 1, False), (0x2000, 1, True)])
    drv.publish(0)
    dev.queue_notify(0)
    drv.publish(2)
    dev.queue_notify(0)
    assert irqs == []
    drv.publish(4)
    dev.queue_notify(0)
    assert irqs == [0]
    drv.publish(6)
    dev.queue_notify(0)
    assert irqs == [0]
    # 2.7.10: with the ring empty the device published avail_event = its next avail index.
    assert drv.avail_event() == 4 and drv.used_flags() == 0


def test_event_idx_batch_crossing_used_event() -> None:
    mem, dev, drv, irqs = setup(MODERN | EVENT_IDX)
    drv.set_used_event(1)
    for k in range(3):
        drv.chain(2 * k, [(0x1000, 1, False), (0x2000, 1, True)])
    drv.publish(0, 2, 4)
    dev.queue_notify(0)
    assert irqs == [0]  # used idx went 0 -> 3, passing entry 1


def test_event_idx_ignores_no_interrupt_flag() -> None:
    mem, dev, drv, irqs = setup(MODERN | EVENT_IDX)
    drv.set_avail_flags(1)
    drv.set_used_event(0)
    drv.publish(drv.chain(0, [(0x1000, 1, False), (0x2000, 1, True)]))
    dev.queue_notify(0)
    assert irqs == [0]


def test_no_interrupt_flag_without_event_idx() -> None:
    mem, dev, drv, irqs = setup(MODERN)
    drv.chain(0, [(0x1000, 1, False), (0x2000, 1, True)])
    drv.set_avail_flags(1)  # VIRTQ_AVAIL_F_NO_INTERRUPT
    drv.set_used_event(0)  # must be ignored (2.7.7.2)
    drv.publish(0)
    dev.queue_notify(0)
    assert drv.used_idx() == 1 and irqs == []
    drv.set_avail_flags(0)
    drv.publish(0)
    dev.queue_notify(0)
    assert irqs == [0]


def test_no_notification_without_new_used_buffers() -> None:
    mem, dev, drv, irqs = setup(MODERN)
    dev.queue_notify(0)
    assert irqs == []


def test_suppress_notifications_flags() -> None:
    mem, dev, drv, _ = setup(MODERN)
    q = dev.queues[0]
    q.suppress_notifications(True)
    assert drv.used_flags() == 1  # VIRTQ_USED_F_NO_NOTIFY
    q.suppress_notifications(False)
    assert drv.used_flags() == 0
    mem, dev, drv, _ = setup(MODERN | EVENT_IDX)
    q = dev.queues[0]
    drv.set_avail_idx(0)
    q.suppress_notifications(True)
    assert drv.used_flags() == 0  # 2.7.10.2: with EVENT_IDX flags MUST be 0
    drv.publish(drv.chain(0, [(0x1000, 1, False), (0x2000, 1, True)]))
    dev.queue_notify(0)
    assert drv.avail_event() == 0  # not tracked while suppressed
    q.suppress_notifications(False)
    assert drv.avail_event() == 1


def test_smaller_driver_queue_size() -> None:
    mem = make_mem()
    dev = EchoDevice(mem, sizes=(16,))
    drv = SplitDriver(mem, 4)
    assert bring_up(dev, MODERN, configure=drv.configure)
    for _ in range(6):  # more buffers than the ring holds, in two rounds
        drv.publish(drv.chain(0, [(0x1000, 1, False), (0x2000, 1, True)]))
        dev.queue_notify(0)
    ok(dev)
    assert drv.used_idx() == 6


def test_chain_helpers_read_and_partial_write() -> None:
    mem, dev, drv, _ = setup()
    q = dev.queues[0]
    mem.write(0x1000, b"0123456789")
    drv.publish(drv.chain(0, [(0x1000, 4, False), (0x1004, 6, False), (0x2000, 3, True), (0x3000, 3, True)]))
    chain = q.pop()
    assert chain is not None
    assert chain.read(2, 5) == b"23456" and chain.read(8, 10) == b"89"
    assert chain.write_into(b"abcdefgh") == 6
    assert chain.write_into(b"Z", 4) == 1
    assert mem.read(0x2000, 3) == b"abc" and mem.read(0x3000, 3) == b"dZf"
    q.push(chain, 6)
    assert q.pop() is None
    with pytest.raises(RuntimeError):
        q.push(chain, 1)  # nothing in flight: a device bug, not a driver error
