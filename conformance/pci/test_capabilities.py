"""Capability list and MSI-X structure (PCI 3.0 §6.7, §6.8.2).

The walk itself (conformance.drivers.pci.PciFunction.capabilities) raises on any broken list rule, so a test
that walks is already a check of range, alignment, termination and loops; the tests here add the
statements about the raw registers and the MSI-X table the walk does not look at.
"""

from __future__ import annotations

import pytest

from conformance.drivers.pci import (
    CAP_ID_MSIX,
    CAP_ID_VENDOR,
    CAPABILITIES_PTR,
    CMD_MEMORY,
    STATUS_CAP_LIST,
    BarAllocator,
    PciFunction,
    assign_bars,
)

CLAUSE = "pci-3.0"
MSIX_ENABLE, MSIX_FUNCTION_MASK, MSIX_TABLE_SIZE = 1 << 15, 1 << 14, 0x7FF
ENTRY_BYTES = 16


@pytest.mark.clause(CLAUSE, "caps/list")
def test_capability_list_is_well_formed(dut: PciFunction) -> None:
    assert dut.status & STATUS_CAP_LIST, "Status bit 4 clear on a device with capabilities"
    caps = dut.capabilities()  # raises CapabilityListError on range, alignment, loop or length
    assert caps, "Status bit 4 set but the list is empty"
    for cap in caps:
        assert 0x40 <= cap.offset <= 0xFC and cap.offset % 4 == 0, cap
    last = caps[-1]
    assert dut.read8(last.offset + 1) == 0, "list does not end with a 00h next pointer"


@pytest.mark.clause(CLAUSE, "caps/list")
def test_raw_pointers_have_reserved_bits_clear(dut: PciFunction) -> None:
    """Bits 1:0 of every pointer are reserved (00b); the walk masks nothing, so check the raw bytes."""
    pointers = [dut.read8(CAPABILITIES_PTR)] + [dut.read8(c.offset + 1) for c in dut.capabilities()]
    assert all(p & 3 == 0 for p in pointers), [hex(p) for p in pointers]


@pytest.mark.clause(CLAUSE, "caps/list")
def test_capability_pointer_read_only(dut: PciFunction) -> None:
    before = dut.read8(CAPABILITIES_PTR)
    for value in (0x00, 0xFC, 0x41):
        dut.write8(CAPABILITIES_PTR, value)
        assert dut.read8(CAPABILITIES_PTR) == before


@pytest.mark.clause(CLAUSE, "caps/list")
def test_host_bridge_without_capabilities_has_status_bit_clear(host_bridge: PciFunction) -> None:
    """Where Status bit 4 is clear, 34h carries no list; where it is set, the list must walk cleanly."""
    if host_bridge.status & STATUS_CAP_LIST:
        assert host_bridge.capabilities()
    else:
        assert host_bridge.capabilities() == []


@pytest.mark.clause(CLAUSE, "caps/ids")
def test_vendor_specific_and_msix_present(dut: PciFunction) -> None:
    ids = [c.cap_id for c in dut.capabilities()]
    assert CAP_ID_VENDOR in ids, [hex(i) for i in ids]
    assert ids.count(CAP_ID_MSIX) == 1, [hex(i) for i in ids]


def _msix(dut: PciFunction) -> tuple[int, int]:
    """(capability offset, table size N)."""
    cap = dut.find_capability(CAP_ID_MSIX)
    assert cap is not None
    return cap, (dut.read16(cap + 2) & MSIX_TABLE_SIZE) + 1


@pytest.mark.clause(CLAUSE, "msix/structure")
def test_msix_table_size_read_only(dut: PciFunction) -> None:
    cap, size = _msix(dut)
    for value in (0x07FF, 0x0000):
        dut.write16(cap + 2, value)
        assert (dut.read16(cap + 2) & MSIX_TABLE_SIZE) + 1 == size
    dut.write16(cap + 2, 0)


@pytest.mark.clause(CLAUSE, "msix/structure")
def test_msix_table_and_pba_fit_their_bars(dut: PciFunction) -> None:
    cap, size = _msix(dut)
    bars = {b.index: b for b in dut.bars()}
    table_reg, pba_reg = dut.read32(cap + 4), dut.read32(cap + 8)
    for what, reg in (("table", table_reg), ("PBA", pba_reg)):
        bir = reg & 7
        assert bir <= 5, f"{what} BIR {bir} is reserved"
        assert bir in bars and not bars[bir].is_io, f"{what} BIR {bir} is not an implemented memory BAR"
    table_off, pba_off = table_reg & ~7, pba_reg & ~7
    table_end = table_off + ENTRY_BYTES * size
    pba_end = pba_off + 8 * ((size + 63) // 64)
    assert table_end <= bars[table_reg & 7].size, "MSI-X table runs past its BAR"
    assert pba_end <= bars[pba_reg & 7].size, "PBA runs past its BAR"
    if table_reg & 7 == pba_reg & 7:
        assert table_end <= pba_off or pba_end <= table_off, "MSI-X table and PBA overlap"


@pytest.mark.clause(CLAUSE, "msix/masking")
def test_msix_enable_and_function_mask_writable(dut: PciFunction) -> None:
    cap, _ = _msix(dut)
    control = cap + 2
    assert dut.read16(control) & (MSIX_ENABLE | MSIX_FUNCTION_MASK) == 0, "not zero after reset"
    for bits in (MSIX_FUNCTION_MASK, MSIX_ENABLE | MSIX_FUNCTION_MASK, MSIX_ENABLE, 0):
        dut.write16(control, bits)
        assert dut.read16(control) & (MSIX_ENABLE | MSIX_FUNCTION_MASK) == bits


def _mapped_table(qtest, dut: PciFunction) -> tuple[int, int, int]:
    """Assign BARs, enable memory decoding; returns (table address, PBA address, N)."""
    cap, size = _msix(dut)
    bars = assign_bars(dut, BarAllocator(), enable=False)
    dut.command = dut.command | CMD_MEMORY
    table_reg, pba_reg = dut.read32(cap + 4), dut.read32(cap + 8)
    return bars[table_reg & 7].address + (table_reg & ~7), bars[pba_reg & 7].address + (pba_reg & ~7), size


@pytest.mark.clause(CLAUSE, "msix/masking")
def test_msix_vector_mask_set_after_reset_and_writable(qtest, dut: PciFunction) -> None:
    table, _, size = _mapped_table(qtest, dut)
    for entry in range(size):
        ctl = table + ENTRY_BYTES * entry + 12
        assert qtest.readl(ctl) & 1 == 1, f"entry {entry} not masked after reset"
        qtest.writel(ctl, 0)
        assert qtest.readl(ctl) & 1 == 0, f"entry {entry} mask did not clear"
        qtest.writel(ctl, 1)
        assert qtest.readl(ctl) & 1 == 1, f"entry {entry} mask did not set"


@pytest.mark.clause(CLAUSE, "msix/masking")
def test_msix_entry_address_and_data_writable(qtest, dut: PciFunction) -> None:
    table, _, size = _mapped_table(qtest, dut)
    for entry in range(size):
        base = table + ENTRY_BYTES * entry
        qtest.writel(base, 0xFEE0100C)
        qtest.writel(base + 4, 0)
        qtest.writel(base + 8, 0x4000 + entry)
        assert qtest.read(base, 12) == (0xFEE0100C).to_bytes(4, "little") + bytes(4) + (
            0x4000 + entry).to_bytes(4, "little")


@pytest.mark.clause(CLAUSE, "msix/masking")
def test_msix_pending_bits_read_only(qtest, dut: PciFunction) -> None:
    _, pba, size = _mapped_table(qtest, dut)
    qwords = (size + 63) // 64
    before = [qtest.readq(pba + 8 * i) for i in range(qwords)]
    for i in range(qwords):
        qtest.writeq(pba + 8 * i, 0xFFFFFFFFFFFFFFFF)
    assert [qtest.readq(pba + 8 * i) for i in range(qwords)] == before
