"""Configuration mechanism #1 (0CF8h/0CFCh) behaves as PCI 3.0 §3.2.2.3.2 and §6.1 describe.

This is the mechanism every PC OS probes first; Linux' probe in particular needs CONFIG_ADDRESS to read back
what was written and all ones from absent functions.
"""

from __future__ import annotations

import pytest

from conformance.drivers.pci import CONFIG_ADDRESS, CONFIG_DATA, PciFunction, config_address

CLAUSE = "pci-3.0"


@pytest.mark.clause(CLAUSE, "conf1/config-address")
@pytest.mark.parametrize("value", [0x80000000, 0x80001008, 0x80FFF8FC, 0x00000000, 0x7FFFF0FC])
def test_config_address_reads_back(qtest, value: int) -> None:
    qtest.outl(CONFIG_ADDRESS, value)
    assert qtest.inl(CONFIG_ADDRESS) == value


@pytest.mark.clause(CLAUSE, "conf1/config-address")
def test_sub_dword_writes_do_not_latch(qtest) -> None:
    """Only full DWORD writes latch; a word write to 0CF8h is a plain I/O cycle (0CF9h is PIIX reset: avoid)."""
    qtest.outl(CONFIG_ADDRESS, 0x80000010)
    qtest.outw(CONFIG_ADDRESS + 2, 0x1234)
    assert qtest.inl(CONFIG_ADDRESS) == 0x80000010


@pytest.mark.clause(CLAUSE, "conf1/enable-bit")
def test_enable_bit_clear_is_not_a_config_cycle(qtest, host_bridge: PciFunction) -> None:
    ident = host_bridge.read32(0)
    qtest.outl(CONFIG_ADDRESS, config_address(0, 0, 0, 0) & ~(1 << 31))
    assert qtest.inl(CONFIG_DATA) != ident, "CONFIG_DATA answered a configuration read with Enable clear"


@pytest.mark.clause(CLAUSE, "conf1/data-width")
def test_byte_and_word_reads_match_dwords(dut: PciFunction) -> None:
    dwords = [dut.read32(off) for off in range(0, 256, 4)]
    image = b"".join(d.to_bytes(4, "little") for d in dwords)
    for off in range(0, 256, 2):
        assert dut.read16(off) == int.from_bytes(image[off:off + 2], "little"), f"word at {off:#x}"
    for off in range(256):
        assert dut.read8(off) == image[off], f"byte at {off:#x}"


@pytest.mark.clause(CLAUSE, "conf1/data-width")
def test_byte_write_changes_only_its_byte(dut: PciFunction) -> None:
    """Interrupt Line (3Ch) is read/write; its neighbours Pin/Min_Gnt/Max_Lat must not move."""
    before = dut.read32(0x3C)
    for value in (0xA5, 0x5A):
        dut.write8(0x3C, value)
        assert dut.read32(0x3C) == (before & 0xFFFFFF00) | value


@pytest.mark.clause(CLAUSE, "conf1/data-width")
def test_word_write_changes_only_its_word(dut: PciFunction) -> None:
    """A word write to COMMAND must leave STATUS (the upper word of the same dword) alone."""
    status = dut.status
    dut.write16(0x04, 0x0000)
    assert dut.read32(0x04) >> 16 == status


@pytest.mark.clause(CLAUSE, "config/absent-function")
@pytest.mark.parametrize("bus,dev,fn", [(0, 31, 0), (0, 0x1F, 7), (1, 0, 0), (0xFF, 0x1F, 7)])
def test_absent_function_reads_all_ones(pci, bus: int, dev: int, fn: int) -> None:
    func = PciFunction(pci, bus, dev, fn)
    assert func.read32(0x00) == 0xFFFFFFFF
    assert func.read32(0x08) == 0xFFFFFFFF
    assert func.read16(0x02) == 0xFFFF
    assert func.read8(0x0E) == 0xFF


@pytest.mark.clause(CLAUSE, "config/absent-function")
def test_single_function_device_has_no_other_functions(pci, dut: PciFunction) -> None:
    assert not dut.read8(0x0E) & 0x80
    for fn in range(1, 8):
        assert PciFunction(pci, dut.bus, dut.dev, fn).read32(0) == 0xFFFFFFFF, f"function {fn}"
