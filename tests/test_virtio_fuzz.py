"""Property tests: random rings thrown at SplitQueue / PackedQueue through VirtioDevice.

Properties (VIRTIO 1.2 2.1.2 and the untrusted-driver rule of the core):
* ``queue_notify`` never raises, whatever the descriptor tables, indices, flags and addresses;
* it takes a bounded number of steps (Python/C calls counted with a profiler hook), proportional
  to the queue size -- a hostile driver can neither hang nor stall the device;
* the device either processes chains correctly or sets DEVICE_NEEDS_RESET;
* well-formed rings (generated as a driver would build them) are always processed correctly.
"""

from __future__ import annotations

import struct
import sys

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_virtio_helpers import (
    DESC_F_INDIRECT,
    DESC_F_NEXT,
    DESC_F_WRITE,
    EVENT_IDX,
    INDIRECT,
    MODERN,
    PACKED,
    RAM_SIZE,
    EchoDevice,
    PackedDriver,
    SplitDriver,
    bring_up,
    make_mem,
)

from refvm.virtio import status as S

FUZZ = settings(max_examples=100, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
D = struct.Struct("<QIHH")
MAX_SIZE = 8
TABLES = (0x5000, 0x5800, 0x6000)  # where random indirect tables live

addrs = st.one_of(
    st.integers(0x1000, 0x9000),
    st.sampled_from([0, RAM_SIZE - 8, RAM_SIZE, 1 << 40, (1 << 64) - 16, *TABLES]),
    st.integers(0, (1 << 64) - 1),
)
lengths = st.one_of(
    st.integers(0, 64), st.sampled_from([16, 32, 48, 0xFFFFFFFF, 0x80000000]), st.integers(0, (1 << 32) - 1)
)
flags16 = st.one_of(st.integers(0, 7), st.integers(0, 0xFFFF))


def counted(fn) -> int:
    """Run ``fn`` and return how many Python and C calls it made."""
    steps = 0

    def prof(frame, event, arg):
        nonlocal steps
        steps += 1

    sys.setprofile(prof)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return steps


def step_bound(size: int) -> int:
    # Per notify: at most `size` chains, each at most size direct + MAX_SIZE indirect descriptors.
    return 100 * (size + 1) * (size + MAX_SIZE + 1) + 2000


# ---------------------------------------------------------------------------- split


@st.composite
def split_garbage(draw):
    size = draw(st.sampled_from([1, 2, 4, 8]))
    descs = draw(st.lists(st.tuples(addrs, lengths, flags16, st.integers(0, size + 2)), min_size=size, max_size=size))
    tables = draw(st.lists(st.tuples(addrs, lengths, flags16, st.integers(0, 9)), max_size=12))
    heads = draw(st.lists(st.integers(0, size + 1), min_size=size, max_size=size))
    avail_idx = draw(st.one_of(st.integers(0, size), st.integers(0, 0xFFFF)))
    features = MODERN | draw(st.sampled_from([0, INDIRECT, EVENT_IDX, INDIRECT | EVENT_IDX]))
    flags = draw(st.integers(0, 0xFFFF))
    used_event = draw(st.integers(0, 0xFFFF))
    bad_config = draw(
        st.one_of(st.none(), st.tuples(st.sampled_from(["size", "desc", "avail", "used"]), st.integers()))
    )
    return size, descs, tables, heads, avail_idx, features, flags, used_event, bad_config


@FUZZ
@given(split_garbage())
def test_split_random_rings_never_raise_or_hang(case) -> None:
    size, descs, tables, heads, avail_idx, features, flags, used_event, bad_config = case
    mem = make_mem()
    dev = EchoDevice(mem, strict=False)
    drv = SplitDriver(mem, size)

    def configure(d):
        drv.configure(d)
        if bad_config is not None:
            field, value = bad_config
            q = d.queues[0]
            setattr(
                q, {"size": "size", "desc": "desc_addr", "avail": "driver_addr", "used": "device_addr"}[field], value
            )

    assert bring_up(dev, features, configure=configure)
    for i, (a, ln, f, n) in enumerate(descs):
        drv.set_desc(i, a, ln, f, n)
    blob = b"".join(D.pack(a, ln, f, n) for a, ln, f, n in tables)
    for t in TABLES:
        mem.write(t, blob)
    for h in heads:
        drv.publish(h, bump=False)
    drv.set_avail_flags(flags)
    drv.set_used_event(used_event)
    drv.set_avail_idx(avail_idx)

    steps = counted(lambda: dev.queue_notify(0))
    assert steps < step_bound(size)
    steps = counted(lambda: dev.queue_notify(0))  # again: the state after the first round is also safe
    assert steps < step_bound(size)
    if dev.status & S.DEVICE_NEEDS_RESET:
        assert dev.error
    elif bad_config is None:  # the test's driver wrote the rings where the device looks
        assert dev.handled == avail_idx <= size
        assert drv.used_idx() == avail_idx
        assert [drv.used_elem(n)[0] for n in range(avail_idx)] == heads[:avail_idx]


@st.composite
def split_valid(draw):
    size = draw(st.sampled_from([2, 4, 8]))
    n = draw(st.integers(1, size))
    buffers = []
    free = size
    for _ in range(n):
        if free == 0:
            break
        indirect = draw(st.booleans())
        max_elems = MAX_SIZE if indirect else free
        nr = draw(st.integers(0, min(3, max_elems)))
        nw = draw(st.integers(0 if nr else 1, min(3, max_elems - nr)))
        rd = [draw(st.integers(0, 24)) for _ in range(nr)]
        wr = [draw(st.integers(0, 24)) for _ in range(nw)]
        buffers.append((indirect, rd, wr))
        free -= 1 if indirect else nr + nw
    return size, buffers, draw(st.binary(min_size=128, max_size=128))


@FUZZ
@given(split_valid())
def test_split_valid_rings_are_processed(case) -> None:
    size, buffers, payload = case
    mem = make_mem()
    dev = EchoDevice(mem, strict=False)
    drv = SplitDriver(mem, size)
    assert bring_up(dev, MODERN | INDIRECT, configure=drv.configure)
    mem.write(0x1000, payload)
    next_desc = 0
    expected = []
    for b, (indirect, rd, wr) in enumerate(buffers):
        elems = []
        src = 0x1000
        for ln in rd:
            elems.append((src, ln, False))
            src += ln
        dst = 0x20000 + 0x400 * b
        for k, ln in enumerate(wr):
            elems.append((dst + 0x40 * k, ln, True))
        data = payload[: sum(rd)]
        written = min(len(data), sum(wr))
        if indirect:
            table = 0x8000 + 0x200 * b
            raw = b"".join(
                D.pack(a, ln, (DESC_F_WRITE if w else 0) | (DESC_F_NEXT if k < len(elems) - 1 else 0), k + 1)
                for k, (a, ln, w) in enumerate(elems)
            )
            mem.write(table, raw)
            drv.set_desc(next_desc, table, len(raw), DESC_F_INDIRECT)
            head = next_desc
            next_desc += 1
        else:
            head = drv.chain(next_desc, elems)
            next_desc += len(elems)
        drv.publish(head)
        expected.append((head, written, data[:written], [(dst + 0x40 * k, ln) for k, ln in enumerate(wr)]))
    dev.queue_notify(0)
    assert not dev.status & S.DEVICE_NEEDS_RESET, dev.error
    assert drv.used_idx() == len(buffers)
    for n, (head, written, data, segs) in enumerate(expected):
        assert drv.used_elem(n) == (head, written)
        got = b"".join(mem.read(a, ln) for a, ln in segs)[:written]
        assert got == data


# ---------------------------------------------------------------------------- packed


@st.composite
def packed_garbage(draw):
    size = draw(st.integers(1, MAX_SIZE))
    slot_flags = st.one_of(
        st.sampled_from([0x80, 0x81, 0x82, 0x84, 0x85, 0x8000, 0x8080, 0x83]),
        flags16,
    )
    descs = draw(st.lists(st.tuples(addrs, lengths, st.integers(0, 0xFFFF), slot_flags), min_size=size, max_size=size))
    tables = draw(st.lists(st.tuples(addrs, lengths, st.integers(0, 0xFFFF), flags16), max_size=12))
    features = MODERN | PACKED | draw(st.sampled_from([0, INDIRECT, EVENT_IDX, INDIRECT | EVENT_IDX]))
    event = draw(st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)))
    return size, descs, tables, features, event


@FUZZ
@given(packed_garbage())
def test_packed_random_rings_never_raise_or_hang(case) -> None:
    size, descs, tables, features, event = case
    mem = make_mem()
    dev = EchoDevice(mem, strict=False, sizes=(MAX_SIZE,))
    drv = PackedDriver(mem, size)
    assert bring_up(dev, features, configure=drv.configure)
    for i, (a, ln, bid, f) in enumerate(descs):
        mem.write(drv.desc + 16 * i, D.pack(a, ln, bid, f))
    blob = b"".join(D.pack(a, ln, bid, f) for a, ln, bid, f in tables)
    for t in TABLES:
        mem.write(t, blob)
    mem.write(drv.driver_area, struct.pack("<HH", *event))
    for _ in range(3):
        steps = counted(lambda: dev.queue_notify(0))
        assert steps < step_bound(size)
    assert dev.handled <= size or dev.status & S.DEVICE_NEEDS_RESET
    if dev.status & S.DEVICE_NEEDS_RESET:
        assert dev.error


@st.composite
def packed_valid(draw):
    size = draw(st.integers(1, MAX_SIZE))
    rounds = []
    for _ in range(draw(st.integers(1, 4))):
        free = size
        batch = []
        for _ in range(draw(st.integers(1, size))):
            if free == 0:
                break
            indirect = draw(st.booleans())
            max_elems = MAX_SIZE if indirect else free
            nw = draw(st.integers(1, min(3, max_elems)))
            nr = draw(st.integers(0, min(3, max_elems - nw)))
            batch.append(
                (indirect, [draw(st.integers(0, 20)) for _ in range(nr)], [draw(st.integers(0, 20)) for _ in range(nw)])
            )
            free -= 1 if indirect else nr + nw
        rounds.append(batch)
    return size, rounds, draw(st.binary(min_size=64, max_size=64))


@FUZZ
@given(packed_valid())
def test_packed_valid_rings_are_processed_across_wraps(case) -> None:
    size, rounds, payload = case
    mem = make_mem()
    dev = EchoDevice(mem, strict=False, sizes=(MAX_SIZE,))
    drv = PackedDriver(mem, size)
    assert bring_up(dev, MODERN | PACKED | INDIRECT, configure=drv.configure)
    mem.write(0x1000, payload)
    buf_id = 0
    for batch in rounds:
        expected = []
        for indirect, rd, wr in batch:
            elems = []
            src = 0x1000
            for ln in rd:
                elems.append((src, ln, False))
                src += ln
            dst = 0x20000 + 0x400 * (buf_id % 64)
            segs = [(dst + 0x40 * k, ln) for k, ln in enumerate(wr)]
            elems += [(a, ln, True) for a, ln in segs]
            if indirect:
                table = 0x8000 + 0x200 * (buf_id % 32)
                raw = b"".join(D.pack(a, ln, 0, DESC_F_WRITE if w else 0) for a, ln, w in elems)
                mem.write(table, raw)
                drv.add([(table, len(raw), False)], buf_id, indirect=True)
            else:
                drv.add(elems, buf_id)
            data = payload[: sum(rd)]
            written = min(len(data), sum(wr))
            expected.append((buf_id, written, data[:written], segs))
            buf_id = (buf_id + 1) & 0xFFFF
        dev.queue_notify(0)
        assert not dev.status & S.DEVICE_NEEDS_RESET, dev.error
        for bid, written, data, segs in expected:
            used = drv.get_used()
            assert used is not None and used[:2] == (bid, written)
            assert b"".join(mem.read(a, ln) for a, ln in segs)[:written] == data
        assert drv.get_used() is None
