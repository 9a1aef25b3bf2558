"""virtio-pci modern interface: the test is the driver, over config space and BAR MMIO only.

QEMU 7.2 behaviours checked here were measured over qtest on virtio-rng-pci (see test_virtio_pci_layout.py
for the method): pieces dispatched by start offset, queue_size accepted 1..1024 for an existing queue,
bad MSI-X vectors read back 0xffff, queue_enable != 1 sets DEVICE_NEEDS_RESET once VERSION_1 is
negotiated, selectors cleared by reset, driver_feature reads back what was written (two words only),
the PCI_CFG window ignores its ``bar`` field, the ISR reads 3 after a configuration change.
"""

from __future__ import annotations

import random

import pytest
from virtio_pci_rig import MSI_ADDR, C, Rig, SplitDriver

from refvm.virtio import status as S

P = "devicenormative:Virtio Transport Options / Virtio Over PCI Bus / PCI Device Layout"
VERSION_1 = 1 << 32
INDIRECT = 1 << 28
ECHO_UPPER = 1


def queue_drivers(rig: Rig) -> dict[int, SplitDriver]:
    return {0: SplitDriver(rig.mem, 8, base=0x10000), 1: SplitDriver(rig.mem, 4, base=0x20000)}


def echo(rig: Rig, drv: SplitDriver, queue: int, payload: bytes, head: int = 0) -> bytes:
    rig.mem.write(0x40000, payload)
    drv.chain(head, [(0x40000, len(payload), False), (0x50000, len(payload), True)])
    drv.publish(head)
    rig.notify(queue)
    used_id, used_len = drv.used_elem(drv.used_idx() - 1)
    assert used_id == head
    return rig.mem.read(0x50000, used_len)


@pytest.mark.clause("virtio-1.2", f"{P} / Common configuration structure layout")
def test_common_config_initial_values_and_read_only_fields() -> None:
    rig = Rig()
    assert rig.rd(C.DFSELECT, 4) == 0
    assert rig.rd(C.DF, 4) == rig.vdev.device_feature_word(0)
    assert rig.rd(C.MSIX, 2) == 0xFFFF
    assert rig.rd(C.NUMQ, 2) == 2
    assert (rig.rd(C.STATUS, 1), rig.rd(C.GEN, 1), rig.rd(C.QSEL, 2)) == (0, 0, 0)
    assert (rig.rd(C.QSIZE, 2), rig.rd(C.QMSIX, 2), rig.rd(C.QENABLE, 2), rig.rd(C.QNOFF, 2)) == (8, 0xFFFF, 0, 0)
    for off, size in ((C.DF, 4), (C.NUMQ, 2), (C.GEN, 1), (C.QNOFF, 2)):
        before = rig.rd(off, size)
        rig.wr(off, size, 0x5A5A5A5A & ((1 << (8 * size)) - 1))
        assert rig.rd(off, size) == before, hex(off)
    rig.wr(C.QSEL, 2, 1)
    assert (rig.rd(C.QSIZE, 2), rig.rd(C.QNOFF, 2)) == (8, 1)
    rig.wr(C.QSEL, 2, 3)  # a queue the device lacks
    assert (rig.rd(C.QSEL, 2), rig.rd(C.QSIZE, 2), rig.rd(C.QMSIX, 2), rig.rd(C.QNOFF, 2)) == (3, 0, 0xFFFF, 3)
    rig.wr(C.QSEL, 2, 2000)  # >= 1024: ignored
    assert rig.rd(C.QSEL, 2) == 3
    assert rig.rd(0x38, 4) == 0 and rig.rd(0xFFC, 4) == 0


@pytest.mark.clause("virtio-1.2", f"{P} / Common configuration structure layout")
def test_feature_windows() -> None:
    rig = Rig()
    offered = rig.vdev.device_features
    words = []
    for sel in (0, 1, 2, 7):
        rig.wr(C.DFSELECT, 4, sel)
        assert rig.rd(C.DFSELECT, 4) == sel
        words.append(rig.rd(C.DF, 4))
    assert words == [offered & 0xFFFFFFFF, offered >> 32, 0, 0]
    assert words[1] & 1  # VERSION_1
    rig.wr(C.GFSELECT, 4, 1)
    rig.wr(C.GF, 4, 1)
    rig.wr(C.GFSELECT, 4, 3)
    rig.wr(C.GF, 4, 0x1234)
    assert rig.rd(C.GF, 4) == 0  # QEMU keeps two words only
    rig.wr(C.GFSELECT, 4, 1)
    assert rig.rd(C.GF, 4) == 1
    assert rig.vdev.driver_features == VERSION_1


def test_width_rules_follow_qemu() -> None:
    rig = Rig()
    rig.wr(C.DFSELECT, 4, 0x0101)
    assert rig.rd(C.DFSELECT + 1, 1) == 0  # a piece that starts inside a field reads 0
    assert rig.rd(C.DFSELECT, 2) == 0x0101  # a narrower read of the field's start is truncated
    rig.wr(C.QDESC, 8, 0x1122334455667788)  # 8 bytes = two 4-byte pieces
    assert rig.rd(C.QDESC, 8) == 0x1122334455667788
    assert rig.rd(C.QDESC + 4, 4) == 0x11223344
    rig.wr(C.QSEL, 4, 0x00040001)  # unaligned for 4: two 2-byte pieces, queue_select=1 then queue_size=4
    assert (rig.rd(C.QSEL, 2), rig.rd(C.QSIZE, 2)) == (1, 4)
    for value, expect in ((3, 3), (0, 3), (1024, 1024), (2048, 1024)):  # QEMU: 1..1024 accepted
        rig.wr(C.QSIZE, 2, value)
        assert rig.rd(C.QSIZE, 2) == expect


@pytest.mark.clause("virtio-1.2", f"{P} / Common configuration structure layout")
def test_msix_vectors_read_back_no_vector_when_unmappable() -> None:
    rig = Rig()
    rig.wr(C.QMSIX, 2, 1)
    assert rig.rd(C.QMSIX, 2) == 1
    rig.wr(C.QMSIX, 2, 2)  # the table has 2 vectors
    assert rig.rd(C.QMSIX, 2) == 0xFFFF
    rig.wr(C.MSIX, 2, 7)
    assert rig.rd(C.MSIX, 2) == 0xFFFF
    rig.wr(C.MSIX, 2, 0)
    assert rig.rd(C.MSIX, 2) == 0
    norig = Rig(vectors=0)
    norig.wr(C.QMSIX, 2, 0)
    assert norig.rd(C.QMSIX, 2) == 0xFFFF


@pytest.mark.clause("virtio-1.2", f"{P} / Notification capability")
def test_driver_init_and_round_trip_with_msix() -> None:
    rig = Rig()
    rig.enable_msix()
    drivers = queue_drivers(rig)
    rig.init_driver(VERSION_1 | INDIRECT | ECHO_UPPER, drivers, vectors={0: 0, 1: 1}, config_vector=1)
    assert rig.fn.notify_address(1) == (4, 0x3004)
    assert echo(rig, drivers[0], 0, b"hello") == b"HELLO"
    assert rig.msis == [(MSI_ADDR, 0x40)]
    assert echo(rig, drivers[1], 1, b"queue one") == b"QUEUE ONE"
    assert rig.msis[-1] == (MSI_ADDR, 0x41)
    assert not rig.intx and not rig.irqs
    # a configuration change goes to config_msix_vector
    rig.vdev.config_changed()
    assert rig.msis[-1] == (MSI_ADDR, 0x41)
    assert rig.rd(C.GEN, 1) == 1


def test_queue_without_vector_sends_nothing_under_msix() -> None:
    rig = Rig()
    rig.enable_msix()
    drivers = queue_drivers(rig)
    rig.init_driver(VERSION_1, drivers)  # vectors left at NO_VECTOR
    assert echo(rig, drivers[0], 0, b"x") == b"x"
    assert rig.msis == [] and not rig.intx


@pytest.mark.clause("virtio-1.2", f"{P} / ISR status capability")
def test_intx_and_isr_read_to_clear() -> None:
    rig = Rig()
    drivers = queue_drivers(rig)
    rig.init_driver(VERSION_1, drivers)
    assert echo(rig, drivers[0], 0, b"abc") == b"abc"
    assert rig.intx and rig.irqs == [(10, 1)]
    assert rig.cfg_read(0x06, 2) & 0x08  # STATUS.Interrupt
    assert rig.isr() == 1
    assert not rig.intx and rig.irqs == [(10, 1), (10, 0)]
    assert rig.isr() == 0
    rig.vdev.config_changed()
    assert rig.intx
    assert rig.rd(0x1004, 4) == 3  # anywhere in the ISR page; QEMU sets bits 0 and 1
    assert not rig.intx
    rig.wr(0x1000, 1, 0xFF)  # read-only
    assert rig.isr() == 0


def test_msix_enable_lowers_intx_and_routes_to_vectors() -> None:
    rig = Rig()
    drivers = queue_drivers(rig)
    rig.init_driver(VERSION_1, drivers, vectors={0: 0})
    echo(rig, drivers[0], 0, b"1")
    assert rig.intx
    rig.enable_msix()
    assert not rig.intx
    echo(rig, drivers[0], 0, b"2", head=2)
    assert rig.msis == [(MSI_ADDR, 0x40)]


@pytest.mark.clause("virtio-1.2", f"{P} / PCI configuration access capability")
def test_pci_cfg_window() -> None:
    rig = Rig()
    cap = 0x84

    def window(bar: int, off: int, length: int) -> None:
        rig.cfg_write(cap + 4, 1, bar)
        rig.cfg_write(cap + 8, 4, off)
        rig.cfg_write(cap + 12, 4, length)

    window(4, C.DF, 4)
    rig.cfg_write(cap + 16, 4, 0xDEADBEEF)
    assert rig.cfg_read(cap + 16, 4) == rig.vdev.device_feature_word(0)
    window(0, C.DF, 4)  # QEMU ignores the bar field
    assert rig.cfg_read(cap + 16, 4) == rig.vdev.device_feature_word(0)
    rig.cfg_write(cap + 16, 4, 0xDEADBEEF)
    window(4, C.DF + 2, 2)  # a piece inside a field: 0 into the low half, the high half is stale
    assert rig.cfg_read(cap + 16, 4) == 0xDEAD0000
    window(4, C.DF, 3)  # unsupported length: data untouched
    assert rig.cfg_read(cap + 16, 4) == 0xDEAD0000
    # writes go through: driver status via the window, then read back through MMIO
    window(4, C.STATUS, 1)
    rig.cfg_write(cap + 16, 4, S.ACKNOWLEDGE)
    assert rig.rd(C.STATUS, 1) == S.ACKNOWLEDGE
    window(4, C.QSEL, 2)
    rig.cfg_write(cap + 16, 2, 1)
    assert rig.rd(C.QSEL, 2) == 1
    window(4, 0x3FFE, 4)  # aligned down to the notify area: reads 0
    assert rig.cfg_read(cap + 16, 4) == 0
    window(4, 0x4000, 4)  # outside the BAR: nothing happens
    rig.cfg_write(cap + 16, 4, 0x12345678)
    assert rig.cfg_read(cap + 16, 4) == 0x12345678
    assert rig.cfg_read(cap + 4, 1) == 4 and rig.cfg_read(cap + 12, 4) == 4


def test_queue_enable_with_bad_value_needs_reset_after_version_1() -> None:
    rig = Rig()
    rig.wr(C.STATUS, 1, S.ACKNOWLEDGE | S.DRIVER)
    rig.wr(C.QENABLE, 2, 0)
    assert rig.rd(C.STATUS, 1) == 3 and rig.rd(C.QENABLE, 2) == 0
    rig.wr(C.GFSELECT, 4, 1)
    rig.wr(C.GF, 4, 1)
    rig.wr(C.STATUS, 1, S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK)
    rig.wr(C.QENABLE, 2, 2)
    assert rig.rd(C.STATUS, 1) == S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK | S.DEVICE_NEEDS_RESET


@pytest.mark.clause("virtio-1.2", "devicenormative:Basic Facilities of a Virtio Device / Device Reset")
def test_status_zero_resets_device_queues_vectors_and_selectors() -> None:
    rig = Rig()
    rig.enable_msix()
    drivers = queue_drivers(rig)
    rig.init_driver(VERSION_1 | INDIRECT, drivers, vectors={0: 0, 1: 1}, config_vector=1)
    echo(rig, drivers[0], 0, b"before")
    rig.wr(C.DFSELECT, 4, 1)
    rig.wr(C.QSEL, 2, 1)
    rig.wr(C.STATUS, 1, 0)
    assert rig.rd(C.STATUS, 1) == 0
    assert (rig.rd(C.DFSELECT, 4), rig.rd(C.GFSELECT, 4), rig.rd(C.QSEL, 2)) == (0, 0, 0)
    assert rig.rd(C.MSIX, 2) == 0xFFFF
    for q in (0, 1):
        rig.wr(C.QSEL, 2, q)
        assert (rig.rd(C.QSIZE, 2), rig.rd(C.QMSIX, 2), rig.rd(C.QENABLE, 2), rig.rd(C.QDESC, 8)) == (8, 0xFFFF, 0, 0)
    assert rig.vdev.negotiated_features == 0 and rig.vdev.isr == 0
    # a second bring-up works
    drivers = {0: SplitDriver(rig.mem, 8, base=0x30000)}
    rig.init_driver(VERSION_1, drivers, vectors={0: 0})
    assert echo(rig, drivers[0], 0, b"after") == b"after"


def test_system_reset_and_bus_master_clear() -> None:
    rig = Rig()
    drivers = queue_drivers(rig)
    rig.init_driver(VERSION_1, drivers)
    rig.cfg_write(0x04, 2, 0x3)  # Bus Master off: QEMU takes DRIVER_OK away
    assert rig.rd(C.STATUS, 1) == S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK
    echo_before = rig.vdev.handled
    rig.bus.reset()
    assert rig.vdev.status == 0 and rig.fn.command == 0 and rig.vdev.handled == echo_before
    rig.program_bars()
    assert rig.rd(C.NUMQ, 2) == 2


def test_hostile_accesses_never_raise(caplog: pytest.LogCaptureFixture) -> None:
    rig = Rig()
    rnd = random.Random(1234)
    bases = [0xFE100000 + o for o in (0, 0x1000, 0x2000, 0x3000, 0x3FFC)] + [0xFE000000]
    for _ in range(3000):
        base = rnd.choice(bases) + rnd.randrange(-8, 0x100)
        size = rnd.choice((1, 2, 4, 8))
        if rnd.random() < 0.5:
            rig.mmio.read(base, size)
        else:
            rig.mmio.write(base, size, rnd.getrandbits(64))
        if rnd.random() < 0.1:
            off = rnd.randrange(0, 0x110)
            rig.cfg_write(off, rnd.choice((1, 2, 4)), rnd.getrandbits(32))
            rig.cfg_read(rnd.randrange(-4, 0x104), rnd.choice((1, 2, 4, 8)))
        if rnd.random() < 0.05:
            rig.program_bars()
    assert rig.cfg_read(0, 4) == 0x10051AF4
    assert not [r for r in caplog.records if r.levelname == "ERROR"]  # no guarded exception either
