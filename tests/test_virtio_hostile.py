"""Hostile drivers: every broken MUST ends in DEVICE_NEEDS_RESET -- no exception, no hang (2.1.2).

Each case lays out a broken ring, notifies, and checks: queue_notify returned normally, NEEDS_RESET
is set, the error names the spec section, the driver got a configuration change notification, and
further notifications are ignored until a reset, after which the device works again.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable

import pytest
from test_virtio_helpers import (
    DESC_F_INDIRECT,
    DESC_F_NEXT,
    DESC_F_WRITE,
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

D = struct.Struct("<QIHH")


def run_hostile(
    build: Callable[[object, SplitDriver], None], section: str, features: int = MODERN | INDIRECT, size: int = 8
) -> EchoDevice:
    mem = make_mem()
    dev = EchoDevice(mem)
    drv = SplitDriver(mem, size)
    assert bring_up(dev, features, configure=drv.configure)
    config_irqs: list[int] = []
    dev.on_config_change = lambda: config_irqs.append(1)
    build(mem, drv)
    t0 = time.monotonic()
    dev.queue_notify(0)
    assert time.monotonic() - t0 < 1.0
    assert dev.status & S.DEVICE_NEEDS_RESET, "device accepted a broken ring"
    assert dev.error is not None and section in dev.error, dev.error
    assert config_irqs == [1] and dev.read_isr() & 2
    handled = dev.handled
    dev.queue_notify(0)  # stopped until reset
    assert dev.handled == handled and dev.ignored_notifications == 1
    # Recovery: reset and a clean ring work again.
    drv2 = SplitDriver(mem, 8, base=0x40000)
    assert bring_up(dev, MODERN, configure=drv2.configure)
    mem.write(0x1000, b"ok")
    drv2.publish(drv2.chain(0, [(0x1000, 2, False), (0x2000, 2, True)]))
    dev.queue_notify(0)
    assert not dev.status & S.DEVICE_NEEDS_RESET and drv2.used_idx() == 1
    return dev


def test_descriptor_outside_ram() -> None:
    def build(mem, drv):
        drv.publish(drv.chain(0, [(RAM_SIZE - 4, 8, False), (0x2000, 8, True)]))

    run_hostile(build, "2.7.5")


def test_descriptor_address_overflowing_64_bits() -> None:
    def build(mem, drv):
        drv.publish(drv.chain(0, [(0xFFFF_FFFF_FFFF_FFF0, 0x100, False), (0x2000, 8, True)]))

    run_hostile(build, "2.7.5")


def test_descriptor_loop() -> None:
    def build(mem, drv):
        drv.set_desc(0, 0x1000, 1, DESC_F_NEXT, 1)
        drv.set_desc(1, 0x1000, 1, DESC_F_NEXT, 0)
        drv.publish(0)

    run_hostile(build, "2.7.5.2")


def test_self_loop() -> None:
    def build(mem, drv):
        drv.set_desc(3, 0x1000, 1, DESC_F_NEXT, 3)
        drv.publish(3)

    run_hostile(build, "2.7.5.2")


def test_next_outside_table() -> None:
    def build(mem, drv):
        drv.set_desc(0, 0x1000, 1, DESC_F_NEXT, 8)
        drv.publish(0)

    run_hostile(build, "2.7.5")


def test_head_outside_table() -> None:
    def build(mem, drv):
        drv.publish(100)

    run_hostile(build, "2.7.13.2")


def test_avail_idx_moved_more_than_queue_size() -> None:
    def build(mem, drv):
        drv.chain(0, [(0x1000, 1, False), (0x2000, 1, True)])
        drv.set_avail_idx(9)

    run_hostile(build, "2.7.13")


def test_avail_idx_decremented() -> None:
    def build(mem, drv):
        drv.set_avail_idx(0xFFFF)

    run_hostile(build, "2.7.13")


def test_readable_after_writable() -> None:
    def build(mem, drv):
        drv.publish(drv.chain(0, [(0x2000, 4, True), (0x1000, 4, False)]))

    run_hostile(build, "2.7.4.2")


def test_indirect_not_negotiated() -> None:
    def build(mem, drv):
        mem.write(0x5000, D.pack(0x2000, 4, DESC_F_WRITE, 0))
        drv.set_desc(0, 0x5000, 16, DESC_F_INDIRECT)
        drv.publish(0)

    run_hostile(build, "2.7.5.3.1", features=MODERN)


def test_nested_indirect() -> None:
    def build(mem, drv):
        mem.write(0x5000, D.pack(0x6000, 16, DESC_F_INDIRECT, 0))
        mem.write(0x6000, D.pack(0x2000, 4, DESC_F_WRITE, 0))
        drv.set_desc(0, 0x5000, 16, DESC_F_INDIRECT)
        drv.publish(0)

    run_hostile(build, "2.7.5.3.1")


def test_indirect_with_next() -> None:
    def build(mem, drv):
        mem.write(0x5000, D.pack(0x2000, 4, DESC_F_WRITE, 0))
        drv.set_desc(0, 0x5000, 16, DESC_F_INDIRECT | DESC_F_NEXT, 1)
        drv.set_desc(1, 0x2100, 4, DESC_F_WRITE)
        drv.publish(0)

    run_hostile(build, "2.7.5.3.1")


@pytest.mark.parametrize("length", [0, 8, 17, 40])
def test_indirect_len_not_multiple_of_16(length: int) -> None:
    def build(mem, drv):
        drv.set_desc(0, 0x5000, length, DESC_F_INDIRECT)
        drv.publish(0)

    run_hostile(build, "2.7.5.3")


def test_indirect_table_loop() -> None:
    def build(mem, drv):
        mem.write(0x5000, D.pack(0x1000, 1, DESC_F_NEXT, 1) + D.pack(0x1000, 1, DESC_F_NEXT, 0))
        drv.set_desc(0, 0x5000, 32, DESC_F_INDIRECT)
        drv.publish(0)

    run_hostile(build, "2.7.5.2")


def test_indirect_table_longer_than_queue_size() -> None:
    def build(mem, drv):
        drv.set_desc(0, 0x5000, 16 * 9, DESC_F_INDIRECT)  # 9 entries > max size 8
        drv.publish(0)

    run_hostile(build, "2.7.5.3.1")


def test_huge_indirect_table_is_refused_without_reading_it() -> None:
    def build(mem, drv):
        drv.set_desc(0, 0x5000, 0xFFFFFFF0, DESC_F_INDIRECT)
        drv.publish(0)

    run_hostile(build, "2.7.5.3.1")


def test_indirect_table_outside_ram() -> None:
    def build(mem, drv):
        drv.set_desc(0, RAM_SIZE - 16, 32, DESC_F_INDIRECT)
        drv.publish(0)

    run_hostile(build, "2.7.5.3")


def test_chain_longer_than_2_pow_32_bytes() -> None:
    mem = make_mem(1 << 32)  # 4 GiB of real, untouched (MAP_NORESERVE) RAM: each 4 GiB - 1 buffer is RAM
    dev = EchoDevice(mem)
    drv = SplitDriver(mem, 8)
    assert bring_up(dev, MODERN, configure=drv.configure)
    drv.publish(drv.chain(0, [(0, 0xFFFF_FFFF, False), (0, 0xFFFF_FFFF, True)]))
    dev.queue_notify(0)
    assert dev.status & S.DEVICE_NEEDS_RESET and "2.7.5.2" in (dev.error or "")


def test_write_to_readonly_buffer_is_refused() -> None:
    """The echo needs room to write; a chain with only device-readable elements cannot take it."""

    def build(mem, drv):
        mem.write(0x1800, b"data")
        drv.publish(drv.chain(0, [(0x1800, 4, False)]))

    dev = run_hostile(build, "2.7.5.1")
    assert dev.mem.read(0x1800, 4) == b"data"  # the device-readable buffer was not written


def test_misaligned_ring() -> None:
    def build(mem, drv):
        drv.publish(drv.chain(0, [(0x1000, 1, False), (0x2000, 1, True)]))

    mem = make_mem()
    dev = EchoDevice(mem)
    drv = SplitDriver(mem, 8)

    def configure(d):
        drv.configure(d)
        d.queues[0].device_addr += 2  # used ring must be 4-aligned (2.7.1)

    assert bring_up(dev, MODERN, configure=configure)
    build(mem, drv)
    dev.queue_notify(0)
    assert dev.status & S.DEVICE_NEEDS_RESET and "2.7.1" in (dev.error or "")


def test_ring_outside_ram_and_bad_size() -> None:
    for mutate, section in (
        (lambda q: setattr(q, "desc_addr", RAM_SIZE - 16), "2.7.1"),
        (lambda q: setattr(q, "size", 6), "2.7"),
        (lambda q: setattr(q, "size", 16), "2.7"),
    ):
        mem = make_mem()
        dev = EchoDevice(mem)
        drv = SplitDriver(mem, 8)

        def configure(d, mutate=mutate, drv=drv):
            drv.configure(d)
            mutate(d.queues[0])

        assert bring_up(dev, MODERN, configure=configure)
        dev.queue_notify(0)
        assert dev.status & S.DEVICE_NEEDS_RESET and section in (dev.error or ""), dev.error


def test_device_bug_in_handler_does_not_escape() -> None:
    mem = make_mem()
    dev = EchoDevice(mem)
    drv = SplitDriver(mem, 8)
    assert bring_up(dev, MODERN, configure=drv.configure)
    dev.handle_queue = lambda q: 1 / 0  # type: ignore[method-assign]
    dev.queue_notify(0)
    assert dev.status & S.DEVICE_NEEDS_RESET and "ZeroDivisionError" in (dev.error or "")


# ---------------------------------------------------------------------------- packed


def run_packed(build: Callable[[object, PackedDriver], None], section: str, features: int = MODERN | PACKED | INDIRECT):
    mem = make_mem()
    dev = EchoDevice(mem)
    drv = PackedDriver(mem, 4)
    assert bring_up(dev, features, configure=drv.configure)
    build(mem, drv)
    t0 = time.monotonic()
    dev.queue_notify(0)
    assert time.monotonic() - t0 < 1.0
    assert dev.status & S.DEVICE_NEEDS_RESET
    assert dev.error is not None and section in dev.error, dev.error


def _pdesc(mem, drv: PackedDriver, slot: int, addr: int, length: int, flags: int, buf_id: int = 0) -> None:
    mem.write(drv.desc + 16 * slot, D.pack(addr, length, buf_id, flags))


def test_packed_descriptor_outside_ram() -> None:
    run_packed(lambda mem, drv: drv.add([(RAM_SIZE, 4, True)], buf_id=0), "2.8.4")


def test_packed_list_longer_than_queue_size() -> None:
    def build(mem, drv):
        for slot in range(4):  # every slot available and chained: the list never ends
            _pdesc(mem, drv, slot, 0x1000, 1, drv.avail_flags() | DESC_F_NEXT)

    run_packed(build, "2.8.17")


def test_packed_list_with_unavailable_tail() -> None:
    def build(mem, drv):
        _pdesc(mem, drv, 0, 0x1000, 1, drv.avail_flags() | DESC_F_NEXT)  # slot 1 still zero

    run_packed(build, "2.8.17")


def test_packed_indirect_in_list() -> None:
    def build(mem, drv):
        mem.write(0x5000, D.pack(0x2000, 4, 0, DESC_F_WRITE))
        _pdesc(mem, drv, 1, 0x5000, 16, drv.avail_flags() | DESC_F_INDIRECT)
        _pdesc(mem, drv, 0, 0x1000, 1, drv.avail_flags() | DESC_F_NEXT)

    run_packed(build, "2.8.19")


def test_packed_indirect_with_next() -> None:
    def build(mem, drv):
        mem.write(0x5000, D.pack(0x2000, 4, 0, DESC_F_WRITE))
        _pdesc(mem, drv, 1, 0x2100, 4, drv.avail_flags(True))
        _pdesc(mem, drv, 0, 0x5000, 16, drv.avail_flags() | DESC_F_INDIRECT | DESC_F_NEXT)

    run_packed(build, "2.8.19")


def test_packed_indirect_not_negotiated() -> None:
    def build(mem, drv):
        mem.write(0x5000, D.pack(0x2000, 4, 0, DESC_F_WRITE))
        drv.add([(0x5000, 16, False)], buf_id=1, indirect=True)

    run_packed(build, "2.8.19", features=MODERN | PACKED)


def test_packed_indirect_bad_length() -> None:
    run_packed(lambda mem, drv: drv.add([(0x5000, 20, False)], buf_id=1, indirect=True), "2.8.7")


def test_packed_readable_after_writable() -> None:
    run_packed(lambda mem, drv: drv.add([(0x2000, 4, True), (0x1000, 4, False)], buf_id=1), "2.8.17")


def test_packed_write_to_readonly_buffer() -> None:
    def build(mem, drv):
        mem.write(0x1000, b"data")
        drv.add([(0x1000, 4, False)], buf_id=1)

    run_packed(build, "2.7.5.1")


def test_guest_memory_error_in_handler_sets_needs_reset() -> None:
    mem = make_mem()
    dev = EchoDevice(mem)
    drv = SplitDriver(mem, 8)
    assert bring_up(dev, MODERN, configure=drv.configure)
    dev.handle_queue = lambda q: mem.read(RAM_SIZE, 1)  # type: ignore[method-assign]
    dev.queue_notify(0)
    assert dev.status & S.DEVICE_NEEDS_RESET and "outside guest RAM" in (dev.error or "")


def test_async_completion_after_reset_is_dropped() -> None:
    mem = make_mem()
    dev = EchoDevice(mem)
    drv = SplitDriver(mem, 8)
    assert bring_up(dev, MODERN, configure=drv.configure)
    drv.publish(drv.chain(0, [(0x2000, 4, True)]))
    q = dev.queues[0]
    chain = q.pop()
    assert chain is not None
    dev.write_status(0)  # 2.4: no queue access after reset
    dev.complete(q, chain, 4)
    assert drv.used_idx() == 0
    assert bring_up(dev, MODERN, configure=drv.configure)
    q = dev.queues[0]
    drv.publish(0)
    chain = q.pop()
    irqs: list[int] = []
    dev.on_used_buffer = irqs.append
    dev.complete(q, chain, 4)  # type: ignore[arg-type]
    assert drv.used_idx() == 1 and irqs == [0]
