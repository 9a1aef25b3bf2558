"""fw_cfg, ACPI tables and PM, and the RTC as device models: byte layouts, and guest-controlled values that
must never crash or reach outside RAM."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refvm.clock import VirtualClock
from refvm.devices.acpi.pm import PWRBTN_EN, PWRBTN_STS, SLP_EN, AcpiPm
from refvm.devices.acpi.tables import build_acpi, dsdt_aml
from refvm.devices.fw_cfg import DMA_ERROR, DMA_READ, DMA_SELECT, FwCfg, FwCfgDma, Key
from refvm.devices.irq import IrqLine
from refvm.devices.rtc import B_24H, B_DM, HOURS, REG_B, REG_C, Rtc, RtcOptions
from refvm.memory import GuestMemory

MIB = 1 << 20


class Levels:
    def __init__(self) -> None:
        self.level: dict[int, int] = {}

    def __call__(self, irq: int, level: int) -> None:
        self.level[irq] = level


@pytest.fixture
def memory():
    mem = GuestMemory()
    mem.add_ram(0, 2 * MIB)
    yield mem
    mem.close()


# ---- fw_cfg ---------------------------------------------------------------------------------------------


def _dma(memory: GuestMemory, dma: FwCfgDma, desc: int, control: int, length: int, address: int) -> int:
    memory.write(desc, struct.pack(">IIQ", control, length, address))
    dma.write(0, 4, 0)
    dma.write(4, 4, int.from_bytes(struct.pack(">I", desc), "little"))
    return struct.unpack(">I", memory.read(desc, 4))[0]


def test_dma_read_into_ram_and_error_outside(memory: GuestMemory) -> None:
    fw = FwCfg(memory)
    dma = FwCfgDma(fw, memory)
    assert _dma(memory, dma, 0x1000, (Key.SIGNATURE << 16) | DMA_SELECT | DMA_READ, 4, 0x2000) == 0
    assert memory.read(0x2000, 4) == b"QEMU"
    # a destination that runs past the end of RAM: error, and nothing written
    end = 2 * MIB - 2
    memory.write(end, b"\xaa\xbb")
    assert _dma(memory, dma, 0x1000, (Key.SIGNATURE << 16) | DMA_SELECT | DMA_READ, 4, end) & DMA_ERROR
    assert memory.read(end, 2) == b"\xaa\xbb"


def test_dma_descriptor_outside_ram_is_ignored(memory: GuestMemory) -> None:
    dma = FwCfgDma(FwCfg(memory), memory)
    dma.write(0, 8, int.from_bytes(struct.pack(">Q", 1 << 40), "little"))  # no crash, nothing to report into


@settings(max_examples=200, deadline=None)
@given(control=st.integers(0, 2**32 - 1), length=st.integers(0, 2**32 - 1), address=st.integers(0, 2**64 - 1))
def test_dma_any_descriptor_is_safe(control: int, length: int, address: int) -> None:
    mem = GuestMemory()
    mem.add_ram(0, MIB)
    try:
        fw = FwCfg(mem)
        fw.add_file("etc/x", b"x" * 100)
        _dma(mem, FwCfgDma(fw, mem), 0x100, control, length, address)
    finally:
        mem.close()


def test_port_reads_match_qemu() -> None:
    fw = FwCfg()
    fw.write(0, 2, Key.SIGNATURE | 0x4000)  # the write-channel bit selects the same item
    assert [fw.read(1, 1) for _ in range(2)] == [ord("Q"), ord("E")]
    assert fw.read(0, 2) == 0, "a wide read returns 0 and consumes nothing"
    assert fw.read(0, 1) == ord("M"), "a byte read at the selector port is a data read"
    fw.write(0, 1, 5)  # a byte write is a (ignored) data write, not a select
    assert fw.read(1, 1) == ord("U")
    assert fw.item(Key.ID) == struct.pack("<I", 1), "no DMA bit without guest memory"


def test_file_directory_sorted_with_selectors_from_0x20() -> None:
    fw = FwCfg()
    fw.add_file("z", b"1")
    fw.add_file("a", b"22")
    directory = fw.item(Key.FILE_DIR)
    assert struct.unpack(">I", directory[:4])[0] == 2
    assert directory[4:12] == struct.pack(">IHH", 2, 0x20, 0) and directory[12:13] == b"a"
    assert fw.item(0x21) == b"1"
    with pytest.raises(ValueError):
        fw.add_file("n" * 56, b"")


# ---- ACPI -------------------------------------------------------------------------------------------------


def test_acpi_checksums_and_fadt_offsets() -> None:
    layout = build_acpi(0xE0000, [0, 1])
    blob = layout.blob
    assert blob[:8] == b"RSD PTR " and sum(blob[:20]) % 256 == 0 and sum(blob[:36]) % 256 == 0
    rsdt = struct.unpack_from("<I", blob, 16)[0] - layout.base
    tables = struct.unpack_from("<II", blob, rsdt + 36)
    for addr in tables:
        off = addr - layout.base
        length = struct.unpack_from("<I", blob, off + 4)[0]
        assert sum(blob[off : off + length]) % 256 == 0
    fadt = tables[0] - layout.base
    assert blob[fadt : fadt + 4] == b"FACP" and struct.unpack_from("<I", blob, fadt + 4)[0] == 244
    assert struct.unpack_from("<H", blob, fadt + 46)[0] == 9  # SCI_INT
    assert struct.unpack_from("<II", blob, fadt + 56)[0] == 0x600  # PM1a_EVT_BLK
    assert struct.unpack_from("<I", blob, fadt + 64)[0] == 0x604  # PM1a_CNT_BLK
    madt = tables[1] - layout.base
    assert blob[madt : madt + 4] == b"APIC"
    assert blob[madt + 44 : madt + 52] == bytes([0, 8, 0, 0, 1, 0, 0, 0])


def test_dsdt_s5_package_bytes() -> None:
    assert dsdt_aml() == b"\x08\\_S5_\x12\x06\x04\x00\x00\x00\x00"


def test_pm_power_button_sci_and_s5() -> None:
    levels, sleeps = Levels(), []
    pm = AcpiPm(IrqLine(levels, 9), sleeps.append, lambda: 0)
    pm.press_power_button()
    assert pm.read(0, 2) & PWRBTN_STS and not levels.level.get(9), "no SCI until PWRBTN_EN"
    pm.write(2, 2, PWRBTN_EN)
    assert levels.level[9] == 1
    pm.write(0, 2, PWRBTN_STS)  # write 1 to clear
    assert not pm.read(0, 2) & PWRBTN_STS and levels.level[9] == 0
    pm.write(4, 1, 0)  # low byte only: no sleep
    pm.write(5, 1, SLP_EN >> 8)  # high byte: SLP_EN with SLP_TYP 0
    assert sleeps == [0]
    assert pm.read(4, 2) & 1, "SCI_EN reads 1 (no legacy mode)"
    assert not pm.read(4, 2) & SLP_EN, "SLP_EN is write-only"


# ---- RTC ---------------------------------------------------------------------------------------------------


def _rtc(base: str = "2006-06-17T00:30:00") -> tuple[Rtc, VirtualClock, Levels]:
    clock, levels = VirtualClock(), Levels()
    return Rtc(IrqLine(levels, 8), clock, RtcOptions(base=base)), clock, levels


def _reg(rtc: Rtc, index: int, value: int | None = None) -> int:
    rtc.write(0, 1, index)
    if value is not None:
        rtc.write(1, 1, value)
        return value
    return rtc.read(1, 1)


@pytest.mark.parametrize(("base", "hour12"), [("2006-06-17T00:30:00", 0x12), ("2006-06-17T12:30:00", 0x92)])
def test_midnight_and_noon_in_12_hour_mode(base: str, hour12: int) -> None:
    rtc, _, _ = _rtc(base)
    _reg(rtc, REG_B, 0)
    assert _reg(rtc, HOURS) == hour12
    _reg(rtc, REG_B, B_DM)
    assert _reg(rtc, HOURS) == (hour12 & 0x80) | 12


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 0x7F), st.integers(0, 0xFF), st.integers(0, 3 * 10**9)), max_size=30))
def test_any_register_writes_and_time_steps_are_safe(ops: list[tuple[int, int, int]]) -> None:
    rtc, clock, levels = _rtc()
    for index, value, step in ops:
        _reg(rtc, index, value)
        clock.step(step)
        for reg in range(0x0E):
            _reg(rtc, reg)
    _reg(rtc, REG_B, B_24H)
    _reg(rtc, REG_C)
    assert levels.level.get(8, 0) == 0, "with no interrupt enabled and C read, IRQ 8 is low"
