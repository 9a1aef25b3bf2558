"""The type-0 configuration header: identification, read-only fields, COMMAND and STATUS (PCI 3.0 §6.1-6.2)."""

from __future__ import annotations

import pytest

from conformance.drivers.pci import (
    CLASS_CODE,
    COMMAND,
    DEVICE_ID,
    HEADER_TYPE,
    REVISION_ID,
    STATUS,
    STATUS_W1C,
    SUBSYSTEM_ID,
    SUBSYSTEM_VENDOR_ID,
    VENDOR_ID,
    PciFunction,
    enumerate_bus,
)

CLAUSE = "pci-3.0"


@pytest.mark.clause(CLAUSE, "header/host-bridge")
def test_host_bridge_at_00_00_0(host_bridge: PciFunction) -> None:
    head = host_bridge.header()
    assert head.vendor_id not in (0x0000, 0xFFFF)
    assert head.class_code >> 8 == 0x0600, f"class code {head.class_code:#08x}"
    assert head.layout == 0


@pytest.mark.clause(CLAUSE, "header/type0-layout")
def test_endpoint_is_type0(dut: PciFunction) -> None:
    head = dut.header()
    assert head.vendor_id != 0xFFFF
    assert head.layout == 0x00
    assert not head.multifunction


@pytest.mark.clause(CLAUSE, "header/type0-layout")
def test_enumeration_honours_multifunction(pci, functions: list[PciFunction]) -> None:
    """Every function found behind a multi-function fn 0 exists, and no fn > 0 appears without one."""
    by_slot: dict[int, list[PciFunction]] = {}
    for func in functions:
        by_slot.setdefault(func.dev, []).append(func)
    for dev, funcs in by_slot.items():
        fn0 = funcs[0]
        assert fn0.fn == 0, f"slot {dev} has functions but no function 0"
        if len(funcs) > 1:
            assert fn0.header().multifunction, f"{fn0}: extra functions without Header Type bit 7"
    # The PC machine's PIIX south bridge is a multi-function device with its IDE controller at fn 1.
    assert any(f.fn > 0 for f in functions), "no multi-function device enumerated"
    assert [str(f) for f in enumerate_bus(pci, 0)] == [str(f) for f in functions], "enumeration not stable"


@pytest.mark.clause(CLAUSE, "header/type0-layout")
def test_devices_under_test_enumerate(functions: list[PciFunction], blk: PciFunction, rng: PciFunction) -> None:
    assert str(blk) in [str(f) for f in functions] and str(rng) in [str(f) for f in functions]
    assert blk.header().base_class == 0x01, "virtio-blk is a mass-storage controller"


@pytest.mark.clause(CLAUSE, "header/read-only-ids")
@pytest.mark.parametrize(
    "offset,width",
    [(VENDOR_ID, 2), (DEVICE_ID, 2), (REVISION_ID, 1), (CLASS_CODE, 1), (CLASS_CODE + 1, 1), (CLASS_CODE + 2, 1),
     (HEADER_TYPE, 1), (SUBSYSTEM_VENDOR_ID, 2), (SUBSYSTEM_ID, 2)],
    ids=["vendor", "device", "revision", "prog-if", "subclass", "base-class", "header-type", "subsys-vendor",
         "subsys-id"],
)
def test_identification_is_read_only(dut: PciFunction, offset: int, width: int) -> None:
    read = {1: dut.read8, 2: dut.read16}[width]
    write = {1: dut.write8, 2: dut.write16}[width]
    before = read(offset)
    for value in (0, (1 << (8 * width)) - 1, before ^ 0x5A):
        write(offset, value)
        assert read(offset) == before, f"offset {offset:#x} took {value:#x}"


@pytest.mark.clause(CLAUSE, "header/read-only-ids")
def test_identification_read_only_to_dword_writes(dut: PciFunction) -> None:
    ident, rev_class, subsys = dut.read32(0x00), dut.read32(0x08), dut.read32(0x2C)
    dut.write32(0x00, 0)
    dut.write32(0x08, 0xFFFFFFFF)
    dut.write32(0x2C, 0)
    assert (dut.read32(0x00), dut.read32(0x08), dut.read32(0x2C)) == (ident, rev_class, subsys)


@pytest.mark.clause(CLAUSE, "command/register")
def test_command_reserved_bits_read_zero(dut: PciFunction, host_bridge: PciFunction) -> None:
    for func in (dut, host_bridge):
        func.write16(COMMAND, 0xFFFF)
        assert func.read16(COMMAND) & 0xF800 == 0, str(func)


@pytest.mark.clause(CLAUSE, "command/register")
def test_command_space_and_master_bits_writable(dut: PciFunction) -> None:
    for bits in (0x1, 0x2, 0x4, 0x7, 0x0):
        dut.write16(COMMAND, bits)
        assert dut.read16(COMMAND) & 0x7 == bits


@pytest.mark.clause(CLAUSE, "status/register")
def test_status_error_bits_not_settable(dut: PciFunction) -> None:
    before = dut.read16(STATUS)
    assert before & STATUS_W1C == 0, f"fresh device reports errors: {before:#06x}"
    dut.write16(STATUS, 0xFFFF)
    assert dut.read16(STATUS) & STATUS_W1C == 0


@pytest.mark.clause(CLAUSE, "status/register")
def test_status_read_only_bits_keep_value(dut: PciFunction) -> None:
    read_only = (1 << 3) | (1 << 4) | (1 << 5) | (1 << 7) | (3 << 9)
    before = dut.read16(STATUS) & read_only
    for value in (0xFFFF, 0x0000):
        dut.write16(STATUS, value)
        assert dut.read16(STATUS) & read_only == before


@pytest.mark.clause(CLAUSE, "status/register")
def test_status_dword_write_through_command(dut: PciFunction) -> None:
    """A DWORD write at 04h with ones in the STATUS half sets no error bit (common driver idiom)."""
    dut.write32(COMMAND, 0xFFFF0000 | dut.command)
    assert dut.read16(STATUS) & STATUS_W1C == 0
