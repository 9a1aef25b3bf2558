"""Legacy INTx registers: Interrupt Pin/Line, Interrupt Disable and Interrupt Status (PCI 3.0 §6.2.2-6.2.4)."""

from __future__ import annotations

import pytest

from conformance.drivers.pci import (
    CMD_INTX_DISABLE,
    COMMAND,
    INTERRUPT_LINE,
    INTERRUPT_PIN,
    STATUS,
    STATUS_INTERRUPT,
    PciFunction,
)

CLAUSE = "pci-3.0"


@pytest.mark.clause(CLAUSE, "intx/pin-line")
def test_interrupt_pin_range_and_read_only(dut: PciFunction) -> None:
    pin = dut.read8(INTERRUPT_PIN)
    assert 0 <= pin <= 4
    assert pin != 0, "the devices under test use INTx as their fallback (INTA#)"
    for value in (0, 4, 0xFF):
        dut.write8(INTERRUPT_PIN, value)
        assert dut.read8(INTERRUPT_PIN) == pin


@pytest.mark.clause(CLAUSE, "intx/pin-line")
def test_all_functions_have_valid_pins(functions: list[PciFunction]) -> None:
    for func in functions:
        assert func.read8(INTERRUPT_PIN) <= 4, str(func)


@pytest.mark.clause(CLAUSE, "intx/pin-line")
def test_interrupt_line_read_write(dut: PciFunction) -> None:
    for value in (0x0B, 0xFF, 0x00):
        dut.write8(INTERRUPT_LINE, value)
        assert dut.read8(INTERRUPT_LINE) == value


@pytest.mark.clause(CLAUSE, "intx/disable")
def test_interrupt_disable_bit(dut: PciFunction) -> None:
    assert dut.read16(COMMAND) & CMD_INTX_DISABLE == 0, "Interrupt Disable not clear after reset"
    dut.write16(COMMAND, CMD_INTX_DISABLE)
    assert dut.read16(COMMAND) & CMD_INTX_DISABLE
    dut.write16(COMMAND, 0)
    assert dut.read16(COMMAND) & CMD_INTX_DISABLE == 0


@pytest.mark.clause(CLAUSE, "intx/disable")
def test_interrupt_status_read_only(dut: PciFunction) -> None:
    before = dut.read16(STATUS) & STATUS_INTERRUPT
    assert before == 0, "no interrupt can be pending on a device that has done nothing"
    for value in (STATUS_INTERRUPT, 0xFFFF):
        dut.write16(STATUS, value)
        assert dut.read16(STATUS) & STATUS_INTERRUPT == before
