"""Split virtqueues (VIRTIO 1.2 §2.7): descriptors, indirect tables, used ring, index wrap, and both
directions of notification suppression, observed through virtio-blk (data) and virtio-rng (volume)."""

from __future__ import annotations

import struct
import time
from collections.abc import Callable

import pytest

from conformance.drivers.virtio import DEVICE_NEEDS_RESET, F_EVENT_IDX, F_INDIRECT_DESC
from conformance.drivers.virtqueue import (
    AVAIL_F_NO_INTERRUPT,
    DESC_F_INDIRECT,
    DESC_F_NEXT,
    DESC_F_WRITE,
    QueueTimeout,
    Seg,
    SplitQueue,
)
from conformance.targets import Target
from conformance.verdicts import ClauseViolation, expect, known
from conformance.virtio.conftest import Machine, blk_args, clause
from conformance.virtio.devices import ID_BYTES, S_OK, SECTOR, T_GET_ID, T_IN, T_OUT, blk_header
from conformance.virtio.known import DIRECT_THEN_INDIRECT, USED_LEN_GET_ID

VQ = "Basic Facilities of a Virtio Device / Virtqueues"
DESC = f"{VQ} / The Virtqueue Descriptor Table"
INDIRECT = f"{DESC} / Indirect Descriptors"
USED = f"{VQ} / The Virtqueue Used Ring"
USED_SUPP = f"{VQ} / Used Buffer Notification Suppression"
AVAIL_SUPP = f"{VQ} / Available Buffer Notification Suppression"
FRAMING = "Basic Facilities of a Virtio Device / Message Framing"
SETTLE = 0.03  # how long a "no interrupt" check waits after the buffer was used


def _read(vq: SplitQueue, sector: int) -> None:
    c = vq.transact([blk_header(T_IN, sector)], [SECTOR, 1])
    assert c.data[1] == bytes([S_OK]) and c.data[0][:8] == b"sect%04d" % sector


def _fired(dev, vector: int = 1) -> bool:  # noqa: ANN001
    time.sleep(SETTLE)
    return dev.msix_fired(vector)


@clause(DESC)
def test_device_writes_neither_readable_buffers_nor_descriptors(blk: Machine) -> None:
    dev, (vq,) = blk.ready("blk", size=8)
    data = bytes(range(256)) * 2
    segs = [vq.out_buf(blk_header(T_OUT, 4)), vq.out_buf(data), vq.in_buf(1)]
    vq.add(segs)
    table = blk.qt.read(vq.desc_addr, 16 * vq.size)
    vq.kick()
    used = vq.wait_used()
    assert vq.read_back(used.id) == [bytes([S_OK])]
    assert blk.qt.read(segs[0].addr, 16) == blk_header(T_OUT, 4), "device wrote the request header"
    assert blk.qt.read(segs[1].addr, SECTOR) == data, "device wrote a device-readable buffer"
    assert blk.qt.read(vq.desc_addr, 16 * vq.size) == table, "device wrote the descriptor table"


@clause(USED)
def test_used_len_is_bytes_written(blk: Machine, disk: str) -> None:
    dev, (vq,) = blk.ready("blk")
    c = vq.transact([blk_header(T_IN, 12)], [SECTOR, 1])
    with open(disk, "rb") as f:
        f.seek(12 * SECTOR)
        assert c.data[0] == f.read(SECTOR)
    assert c.used.length == SECTOR + 1
    c = vq.transact([blk_header(T_OUT, 12), b"w" * SECTOR], [1])
    assert c.used.length == 1


def _written_span(vq: SplitQueue, outs: list[bytes], ins: list[int]) -> tuple[int, int]:
    """(used len, count of leading writable bytes the device wrote), robust to data equal to a fill: the
    same request is made twice with two different fill patterns."""
    results = []
    for fill in (0xA5, 0x5A):
        segs = [vq.out_buf(d) for d in outs] + [vq.in_buf(n, fill) for n in ins]
        token = vq.add(segs)
        vq.kick()
        used = vq.wait_used()
        assert used.id == token
        results.append((used.length, b"".join(vq.read_back(token))))
    (len_a, a), (len_b, b) = results
    assert len_a == len_b
    written = 0
    while written < len(a) and not (a[written] == 0xA5 and b[written] == 0x5A):
        written += 1
    return len_a, written


@clause(USED)
def test_used_len_not_more_than_written_full_serial(vm: Callable[..., Machine], disk: str) -> None:
    machine = vm(*blk_args(disk, "serial=ABCDEFGHIJKLMNOPQRST"))
    dev, (vq,) = machine.ready("blk")
    length, written = _written_span(vq, [blk_header(T_GET_ID)], [ID_BYTES, 1])
    assert written >= length, f"used len {length} but only the first {written} bytes were written"


@clause(USED)
def test_used_len_not_more_than_written_short_serial(blk: Machine, target: Target, request) -> None:  # noqa: ANN001
    """GET_ID with a serial shorter than 20 bytes: used len must not count bytes the device did not write."""
    dev, (vq,) = blk.ready("blk")
    length, written = _written_span(vq, [blk_header(T_GET_ID)], [ID_BYTES, 1])
    known(request, target, USED_LEN_GET_ID)
    expect(written >= length, f"used len {length} but only the first {written} bytes were written")


@clause(USED, FRAMING)
def test_small_ring_wraps(blk: Machine) -> None:
    """Queue size 4, 3-descriptor requests: descriptor reuse and ring positions wrap many times."""
    dev, (vq,) = blk.ready("blk", size=4)
    for n in range(13):
        _read(vq, n)
    heads = [vq.add([vq.out_buf(blk_header(T_IN, 100 + n)), vq.in_buf(SECTOR + 1)]) for n in range(2)]
    vq.kick()
    got = {vq.wait_used().id for _ in heads}
    assert got == set(heads)
    assert vq.avail_idx == 15 and vq.last_used == 15


@clause(USED, AVAIL_SUPP)
def test_indices_wrap_at_2_16(blk: Machine) -> None:
    """Free-running 16-bit avail/used idx past 65535. The descriptor table is filled once with 2-descriptor
    GET_ID requests (one shared header), and ring entry p always names head 2*(p % half), so each lap only
    advances avail idx by `half` and kicks: 65536+ requests in a few hundred qtest commands."""
    dev = blk.device("blk")
    dev.initialize(driver_ok=False)
    size = dev.queue_max_size(0)
    half = size // 2
    vq = blk.split(dev, 0, size)
    dev.driver_ok()
    hdr = vq.out_buf(blk_header(T_GET_ID))
    bufs = blk.alloc.alloc(32 * half, 16)
    blob = b"".join(
        struct.pack("<QIHH", hdr.addr, 16, DESC_F_NEXT, 2 * i + 1)
        + struct.pack("<QIHH", bufs + 32 * i, ID_BYTES + 1, DESC_F_WRITE, 0)
        for i in range(half)
    )
    blk.qt.write(vq.desc_addr, blob)
    blk.qt.write(vq.driver_addr + 4, b"".join(struct.pack("<H", 2 * (p % half)) for p in range(size)))
    idx = total = 0
    deadline = time.monotonic() + 60
    for _ in range(65536 // half + 2):
        total += half
        idx = total & 0xFFFF
        vq.qt.writew(vq.driver_addr + 2, idx)
        vq.kick()
        while vq.used_idx() != idx:
            assert time.monotonic() < deadline, f"used idx stuck at {vq.used_idx():#x}, expected {idx:#x}"
        uid, length = struct.unpack("<II", blk.qt.read(vq.device_addr + 4 + 8 * ((idx - 1) % size), 8))
        assert uid == 2 * (half - 1) and length >= 1, (uid, length)
    assert total > 0xFFFF and idx == total - 0x10000, "the loop must have wrapped the 16-bit index"
    assert blk.qt.read(bufs, 13) == b"refvm-serial\0"


# ---- indirect descriptors ------------------------------------------------------------------------------


@clause(INDIRECT, FRAMING)
def test_indirect_table_only(blk: Machine) -> None:
    dev, (vq,) = blk.ready("blk", want=1 << F_INDIRECT_DESC)
    c = vq.transact([blk_header(T_IN, 21)], [SECTOR, 1], indirect_from=0)
    assert c.data[1] == bytes([S_OK]) and c.data[0][:8] == b"sect0021"
    assert c.used.length == SECTOR + 1


@pytest.mark.parametrize("direct", [1, 2])
@clause(INDIRECT)
def test_direct_descriptors_then_one_indirect(blk: Machine, direct: int, target: Target, request) -> None:  # noqa: ANN001
    dev, (vq,) = blk.ready("blk", want=1 << F_INDIRECT_DESC)
    known(request, target, DIRECT_THEN_INDIRECT)
    try:
        c = vq.transact([blk_header(T_IN, 22)], [256, 256, 1], indirect_from=direct, timeout=1.0)
    except QueueTimeout as err:
        if dev.status & DEVICE_NEEDS_RESET:  # the device refused the layout; a plain hang stays a timeout
            raise ClauseViolation(f"DEVICE_NEEDS_RESET set instead of completing the request: {err}") from err
        raise
    expect(c.data[2] == bytes([S_OK]) and c.data[0][:8] == b"sect0022", f"request failed: {c.data}")


@clause(INDIRECT)
def test_write_flag_of_indirect_descriptor_ignored(blk: Machine) -> None:
    dev, (vq,) = blk.ready("blk", want=1 << F_INDIRECT_DESC, size=8)
    segs = [vq.out_buf(blk_header(T_IN, 23)), vq.in_buf(SECTOR), vq.in_buf(1)]
    table = blk.alloc.alloc(48, 16)
    for j, seg in enumerate(segs):
        flags = (DESC_F_WRITE if seg.write else 0) | (DESC_F_NEXT if j < 2 else 0)
        vq.write_desc(table, j, seg, flags, j + 1 if j < 2 else 0)
    head = vq.free.pop(0)
    vq.write_desc(vq.desc_addr, head, Seg(table, 48), DESC_F_INDIRECT | DESC_F_WRITE, 0)
    vq.segments[head] = segs
    vq.post_head([head])
    vq.kick()
    used = vq.wait_used()
    data = vq.read_back(used.id)
    assert data[1] == bytes([S_OK]) and data[0][:8] == b"sect0023"


# ---- used buffer notification suppression --------------------------------------------------------------


@clause(USED_SUPP)
def test_used_event_ignored_without_event_idx(blk: Machine) -> None:
    dev, (vq,) = blk.ready("blk", drop=1 << F_EVENT_IDX, msix=True)
    vq.set_used_event(100)
    for n in range(3):
        _read(vq, n)
        assert _fired(dev), f"request {n}: flags 0 and no EVENT_IDX, yet no used buffer notification"


@clause(USED_SUPP, AVAIL_SUPP)
def test_no_interrupt_flag_honoured(blk: Machine) -> None:
    dev, (vq,) = blk.ready("blk", drop=1 << F_EVENT_IDX, msix=True)
    _read(vq, 0)
    assert _fired(dev)
    vq.set_avail_flags(AVAIL_F_NO_INTERRUPT)
    for n in range(3):
        _read(vq, n)
        assert not _fired(dev), "notification sent although the driver set VIRTQ_AVAIL_F_NO_INTERRUPT"
        assert vq.used_flags() in (0, 1), "used flags must be 0 or 1 without EVENT_IDX"
    vq.set_avail_flags(0)
    _read(vq, 4)
    assert _fired(dev)


@clause(USED_SUPP)
def test_used_event_triggers_exactly(blk: Machine) -> None:
    """With EVENT_IDX: notification MUST follow the buffer placed at used_event; SHOULD NOT otherwise."""
    dev, (vq,) = blk.ready("blk", want=1 << F_EVENT_IDX, msix=True)
    vq.set_used_event(0)
    _read(vq, 0)
    assert _fired(dev), "buffer placed at used_event 0 was not notified"
    vq.set_used_event(3)
    for n in (1, 2):
        _read(vq, n)
        assert not _fired(dev), f"buffer at used idx {n} notified although used_event is 3"
    _read(vq, 3)
    assert _fired(dev), "buffer placed at used_event 3 was not notified"


@clause(USED_SUPP)
def test_flags_ignored_with_event_idx(blk: Machine) -> None:
    dev, (vq,) = blk.ready("blk", want=1 << F_EVENT_IDX, msix=True)
    vq.set_avail_flags(AVAIL_F_NO_INTERRUPT)
    vq.set_used_event(0)
    _read(vq, 0)
    assert _fired(dev), "with EVENT_IDX the device must ignore VIRTQ_AVAIL_F_NO_INTERRUPT"


# ---- available buffer notification suppression ---------------------------------------------------------


@clause(AVAIL_SUPP)
def test_used_flags_zero_with_event_idx(blk: Machine) -> None:
    dev, (vq,) = blk.ready("blk", want=1 << F_EVENT_IDX)
    for n in range(3):
        _read(vq, n)
        assert vq.used_flags() == 0, f"used flags {vq.used_flags():#x} with EVENT_IDX negotiated"


@clause(AVAIL_SUPP)
def test_spurious_notifications_handled(blk: Machine) -> None:
    dev, (vq,) = blk.ready("blk")
    for _ in range(5):
        vq.kick()
    dev.notify(0)
    blk.qt.writew(vq.notify_addr, 7)  # a queue that does not exist
    vq.assert_idle(0.05)
    _read(vq, 30)
    for _ in range(3):
        vq.kick()
    _read(vq, 31)
