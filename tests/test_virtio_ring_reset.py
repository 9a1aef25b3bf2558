"""VIRTIO_F_RING_RESET (bit 40) through the modern common configuration: VIRTIO 1.2 2.6.1 (Virtqueue Reset,
Re-enable) and 4.1.4.3 (``queue_reset`` at offset 0x3A), on a real PCI rig with guest memory."""

from __future__ import annotations

from test_virtio_helpers import SplitDriver
from virtio_pci_rig import C, Rig

from refvm.virtio import features as F
from refvm.virtio.queue import NO_VECTOR

QRESET = 0x3A
RING_RESET = 1 << F.VIRTIO_F_RING_RESET
V1 = 1 << F.VIRTIO_F_VERSION_1
BUF = 0x80000


def _echo(rig: Rig, drv: SplitDriver, head: int, text: bytes) -> bytes:
    """One out+in chain on queue 0; returns what the device wrote back."""
    rig.mem.write(BUF, text)
    before = drv.used_idx()
    drv.publish(drv.chain(head, [(BUF, len(text), False), (BUF + 0x1000, len(text), True)]))
    rig.notify(0)
    assert drv.used_idx() == (before + 1) & 0xFFFF, "the device did not use the buffer"
    return rig.mem.read(BUF + 0x1000, len(text))


def test_offered_like_qemu_7_2() -> None:
    rig = Rig()
    rig.wr(C.DFSELECT, 4, 1)
    assert rig.rd(C.DF, 4) >> 8 & 1, "RING_RESET (bit 40) not offered"


def test_reset_then_reenable_with_new_ring() -> None:
    rig = Rig()
    drv = SplitDriver(rig.mem, 8, 0x10000)
    rig.init_driver(V1 | RING_RESET, {0: drv})
    assert _echo(rig, drv, 0, b"before") == b"before"
    rig.wr(C.QSEL, 2, 0)
    assert rig.rd(QRESET, 2) == 0, "queue_reset not 0 after enable"
    rig.wr(QRESET, 2, 1)
    assert rig.rd(QRESET, 2) == 0, "reset not complete"
    assert rig.rd(C.QENABLE, 2) == 0
    assert rig.rd(C.QDESC, 4) == 0 and rig.rd(C.QSIZE, 2) == 8 and rig.rd(C.QMSIX, 2) == NO_VECTOR
    q = rig.vdev.queues[0]
    assert not q.enabled and q.desc_addr == 0
    # 2.6.1.1: no request executed from the reset queue
    drv.publish(drv.chain(1, [(BUF, 4, False), (BUF + 0x1000, 4, True)]))
    rig.notify(0)
    assert drv.used_idx() == 1
    # 2.6.1.2: re-enable on a fresh ring, possibly smaller: indices start from 0 again
    drv2 = SplitDriver(rig.mem, 4, 0x40000)
    rig.wr(C.QSIZE, 2, 4)
    rig.wr(C.QDESC, 8, drv2.desc)
    rig.wr(C.QDRIVER, 8, drv2.avail)
    rig.wr(C.QDEVICE, 8, drv2.used)
    rig.wr(C.QENABLE, 2, 1)
    assert rig.rd(C.QENABLE, 2) == 1 and rig.rd(QRESET, 2) == 0
    assert _echo(rig, drv2, 0, b"after!") == b"after!"
    assert rig.vdev.queues[0].size == 4
    # queue 1 was not touched
    rig.wr(C.QSEL, 2, 1)
    assert rig.rd(C.QENABLE, 2) == 0 and rig.rd(QRESET, 2) == 0
    # a device reset: 0 again
    rig.wr(C.STATUS, 1, 0)
    rig.wr(C.QSEL, 2, 0)
    assert rig.rd(QRESET, 2) == 0 and rig.rd(C.QENABLE, 2) == 0


def test_without_ring_reset_negotiated_the_write_is_dropped() -> None:
    rig = Rig()
    drv = SplitDriver(rig.mem, 8, 0x10000)
    rig.init_driver(V1, {0: drv})
    rig.wr(C.QSEL, 2, 0)
    rig.wr(QRESET, 2, 1)
    assert rig.rd(C.QENABLE, 2) == 1 and rig.rd(C.QDESC, 4) == drv.desc
    assert _echo(rig, drv, 0, b"still") == b"still"
    assert any("queue_reset" in v for v in rig.vdev.violations)


def test_in_flight_completion_after_reset_is_dropped() -> None:
    rig = Rig()
    drv = SplitDriver(rig.mem, 8, 0x10000)
    rig.init_driver(V1 | RING_RESET, {0: drv})
    old = rig.vdev.queues[0]
    drv.publish(drv.chain(0, [(BUF + 0x1000, 4, True)]))
    chain = old.pop()
    assert chain is not None
    rig.wr(C.QSEL, 2, 0)
    rig.wr(QRESET, 2, 1)
    rig.vdev.complete(old, chain, 4)  # e.g. an I/O thread finishing late: must not touch the ring
    assert drv.used_idx() == 0
