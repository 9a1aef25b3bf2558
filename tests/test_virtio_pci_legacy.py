"""virtio-pci legacy interface (§4.1.4.8) of a transitional device: BAR0 round trip as a legacy driver does it.

QEMU 7.2 facts (measured over qtest on virtio-rng-pci): host features 0x79000000 for a device offering
INDIRECT_DESC|EVENT_IDX (NOTIFY_ON_EMPTY, ANY_LAYOUT and BAD_FEATURE bit 30 added); guest features masked to
the host's, all of them dropped if bit 30 is acked; registers read all-ones where no register starts;
PFN 0 resets; status ACKNOWLEDGE|DRIVER sets Bus Master Enable; the MSI-X vector registers appear at
14h/16h only while MSI-X is enabled (device config moves from 14h to 18h).
"""

from __future__ import annotations

import pytest
from test_virtio_helpers import DESC_F_NEXT, DESC_F_WRITE
from virtio_pci_rig import MSI_ADDR, Rig

from refvm.virtio import status as S

L = "devicenormative:Virtio Transport Options / Virtio Over PCI Bus / PCI-specific Initialization And Device Operation"
HOST, GUEST, PFN, QNUM, QSEL, QNOTIFY, STATUS, ISR = 0x00, 0x04, 0x08, 0x0C, 0x0E, 0x10, 0x12, 0x13


class LegacyRing:
    """A legacy split ring at one page frame: desc, avail right after, used at the next 4096 boundary."""

    def __init__(self, rig: Rig, pfn: int, size: int) -> None:
        self.mem, self.size = rig.mem, size
        self.desc = pfn << 12
        self.avail = self.desc + 16 * size
        self.used = (self.avail + 6 + 2 * size + 4095) & ~4095
        self.idx = 0
        self.mem.fill(self.desc, self.used + 6 + 8 * size - self.desc)

    def post(self, head: int, out_addr: int, out_len: int, in_addr: int, in_len: int) -> None:
        self.mem.write_u64(self.desc + 16 * head, out_addr)
        self.mem.write_u32(self.desc + 16 * head + 8, out_len)
        self.mem.write_u16(self.desc + 16 * head + 12, DESC_F_NEXT)
        self.mem.write_u16(self.desc + 16 * head + 14, head + 1)
        nxt = head + 1
        self.mem.write_u64(self.desc + 16 * nxt, in_addr)
        self.mem.write_u32(self.desc + 16 * nxt + 8, in_len)
        self.mem.write_u16(self.desc + 16 * nxt + 12, DESC_F_WRITE)
        self.mem.write_u16(self.avail + 4 + 2 * (self.idx % self.size), head)
        self.idx += 1
        self.mem.write_u16(self.avail + 2, self.idx)

    def used_elem(self) -> tuple[int, int, int]:
        idx = self.mem.read_u16(self.used + 2)
        off = self.used + 4 + 8 * ((idx - 1) % self.size)
        return idx, self.mem.read_u32(off), self.mem.read_u32(off + 4)


def legacy_bring_up(rig: Rig, features: int) -> dict[int, LegacyRing]:
    rig.out(STATUS, 1, 0)
    rig.out(STATUS, 1, S.ACKNOWLEDGE)
    rig.out(STATUS, 1, S.ACKNOWLEDGE | S.DRIVER)
    host = rig.inp(HOST, 4)
    rig.out(GUEST, 4, features & host)
    rings = {}
    for q, pfn in ((0, 0x20), (1, 0x30)):
        rig.out(QSEL, 2, q)
        size = rig.inp(QNUM, 2)
        rings[q] = LegacyRing(rig, pfn, size)
        rig.out(PFN, 4, pfn)
        assert rig.inp(PFN, 4) == pfn
    rig.out(STATUS, 1, S.ACKNOWLEDGE | S.DRIVER | S.DRIVER_OK)
    return rings


@pytest.mark.clause("virtio-1.2", L)
def test_legacy_registers_initial_and_widths() -> None:
    rig = Rig()
    offered = rig.vdev.device_feature_word(0)
    assert rig.inp(HOST, 4) == offered | (1 << 24) | (1 << 27) | (1 << 30)
    assert rig.inp(HOST + 2, 2) == 0xFFFF  # no register starts at 2
    assert (rig.inp(GUEST, 4), rig.inp(PFN, 4), rig.inp(QNUM, 2), rig.inp(QSEL, 2)) == (0, 0, 8, 0)
    assert rig.inp(QNOTIFY, 2) == 0xFFFF and rig.inp(STATUS, 1) == 0 and rig.inp(ISR, 1) == 0
    assert rig.inp(0x14, 4) == 0x12345678  # device config at 14h without MSI-X
    assert rig.inp(0x14 + 8, 1) == 0xFF  # past the 8 config bytes
    rig.out(QNUM, 2, 4)  # read-only
    assert rig.inp(QNUM, 2) == 8
    rig.out(GUEST, 4, 0xFFFFFFFF)  # acks BAD_FEATURE: no features at all
    assert rig.inp(GUEST, 4) == 0
    rig.out(GUEST, 4, 0x30000000)
    assert rig.inp(GUEST, 4) == 0x30000000 & offered


@pytest.mark.clause("virtio-1.2", L)
def test_legacy_round_trip_with_intx() -> None:
    rig = Rig()
    rig.cfg_write(0x04, 2, 0x3)  # firmware left Bus Master off; ACKNOWLEDGE|DRIVER turns it on
    rings = legacy_bring_up(rig, 1 << 28)
    assert rig.fn.command & 0x4
    assert rig.inp(STATUS, 1) == S.ACKNOWLEDGE | S.DRIVER | S.DRIVER_OK
    assert rig.vdev.negotiated_features == 1 << 28 and rig.vdev.queues[0].kind == "split"
    rig.mem.write(0x60000, b"legacy")
    rings[1].post(0, 0x60000, 6, 0x61000, 16)
    rig.out(QNOTIFY, 2, 1)
    assert rings[1].used_elem() == (1, 0, 6)
    assert rig.mem.read(0x61000, 6) == b"legacy"
    assert rig.intx
    assert rig.inp(ISR, 1) == 1 and not rig.intx and rig.inp(ISR, 1) == 0


def test_legacy_msix_registers_shift_config() -> None:
    rig = Rig()
    rig.enable_msix()
    assert rig.inp(0x14, 2) == 0xFFFF and rig.inp(0x16, 2) == 0xFFFF
    assert rig.inp(0x18, 4) == 0x12345678
    rings = legacy_bring_up(rig, 0)  # starts with a reset, which drops vector assignments
    rig.out(0x14, 2, 1)
    rig.out(QSEL, 2, 0)
    rig.out(0x16, 2, 0)
    rig.out(QSEL, 2, 1)
    rig.out(0x16, 2, 5)  # no such vector
    assert rig.inp(0x16, 2) == 0xFFFF
    assert rig.inp(0x14, 2) == 1
    rig.mem.write(0x60000, b"m")
    rings[0].post(0, 0x60000, 1, 0x61000, 1)
    rig.out(QNOTIFY, 2, 0)
    assert rig.msis == [(MSI_ADDR, 0x40)]


def test_legacy_reset_by_pfn_zero_and_status_zero() -> None:
    rig = Rig()
    legacy_bring_up(rig, 0)
    rig.out(QSEL, 2, 1)
    rig.out(PFN, 4, 0)
    assert rig.inp(STATUS, 1) == 0 and rig.inp(QSEL, 2) == 0 and rig.inp(PFN, 4) == 0
    legacy_bring_up(rig, 0)
    rig.out(STATUS, 1, 0)
    assert rig.vdev.status == 0 and not rig.vdev.queues[0].enabled
    assert rig.inp(GUEST, 4) == 0


def test_modern_driver_on_transitional_device_after_legacy_use() -> None:
    from test_virtio_pci_modern import echo, queue_drivers

    rig = Rig()
    legacy_bring_up(rig, 0)
    rig.out(STATUS, 1, 0)
    drivers = queue_drivers(rig)
    rig.init_driver(1 << 32, drivers)
    assert echo(rig, drivers[0], 0, b"modern") == b"modern"
