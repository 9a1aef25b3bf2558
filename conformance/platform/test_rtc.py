"""MC146818 RTC/CMOS at ports 0x70/0x71 over qtest (Motorola MC146818A datasheet; PC CMOS layout).

Time tests use `-rtc base=DATE` so the expected fields follow from the command line. Tests of time passing,
UIP and the three interrupts step the target's qtest clock and carry the `virtual_clock` marker: QEMU under
TCG has no `clock_step`, so they skip there.
"""

from __future__ import annotations

import pytest

from conformance.drivers.qtest import QtestError, QtestSession

BASE = "2006-06-17T16:01:21"  # a Saturday
SEC, SEC_ALARM, MIN, MIN_ALARM, HOUR, HOUR_ALARM, WDAY, MDAY, MONTH, YEAR = range(10)
REG_A, REG_B, REG_C, REG_D, CENTURY = 0x0A, 0x0B, 0x0C, 0x0D, 0x32
B_SET, B_PIE, B_AIE, B_UIE, B_DM, B_24H = 0x80, 0x40, 0x20, 0x10, 0x04, 0x02
C_IRQF, C_PF, C_AF, C_UF = 0x80, 0x40, 0x20, 0x10
RTC_IRQ = 8
MS = 1_000_000
S = 1_000_000_000


def cmos(qt: QtestSession, index: int) -> int:
    qt.outb(0x70, index)
    return qt.inb(0x71)


def cmos_write(qt: QtestSession, index: int, value: int) -> None:
    qt.outb(0x70, index)
    qt.outb(0x71, value)


def needs_clock(qt: QtestSession) -> None:
    try:
        qt.clock_step(0)
    except QtestError:
        pytest.skip("needs a virtual clock (qtest clock_step); this target has none (QEMU under TCG)")


@pytest.fixture
def rtc(libqtest) -> QtestSession:
    return libqtest("-rtc", f"base={BASE}")


@pytest.mark.clause("mc146818", "time-bcd-24h")
def test_power_on_time_is_the_base_in_bcd_24h(rtc) -> None:
    assert cmos(rtc, REG_B) & (B_DM | B_24H) == B_24H, "BCD, 24-hour as a PC BIOS leaves register B"
    assert cmos(rtc, REG_D) == 0x80, "VRT: valid RAM and time"
    fields = [cmos(rtc, i) for i in (YEAR, MONTH, MDAY, HOUR, MIN, WDAY, CENTURY)]
    assert fields == [0x06, 0x06, 0x17, 0x16, 0x01, 7, 0x20]
    assert 0x21 <= cmos(rtc, SEC) <= 0x25


@pytest.mark.clause("mc146818", "time-binary-12h")
def test_binary_and_12_hour_modes(rtc) -> None:
    cmos_write(rtc, REG_B, B_24H | B_DM)
    assert [cmos(rtc, i) for i in (MDAY, HOUR, MIN)] == [17, 16, 1]
    cmos_write(rtc, REG_B, B_DM)  # 12-hour binary: 16h is 4 PM (bit 7)
    assert cmos(rtc, HOUR) == 0x84
    cmos_write(rtc, REG_B, 0)  # 12-hour BCD
    assert cmos(rtc, HOUR) == 0x84 and cmos(rtc, MDAY) == 0x17


@pytest.mark.clause("mc146818", "set-time")
def test_time_written_under_set_bit(rtc) -> None:
    cmos_write(rtc, REG_B, B_24H | B_SET)
    for index, value in ((YEAR, 0x10), (MONTH, 0x01), (MDAY, 0x02), (HOUR, 0x03), (MIN, 0x04), (SEC, 0x05)):
        cmos_write(rtc, index, value)
    cmos_write(rtc, REG_B, B_24H)
    assert [cmos(rtc, i) for i in (YEAR, MONTH, MDAY, HOUR, MIN)] == [0x10, 0x01, 0x02, 0x03, 0x04]
    assert 0x05 <= cmos(rtc, SEC) <= 0x09
    assert cmos(rtc, WDAY) == 7, "2010-01-02 is a Saturday"


@pytest.mark.clause("mc146818", "registers")
def test_register_c_reads_clear(rtc) -> None:
    cmos(rtc, REG_C)
    assert cmos(rtc, REG_C) & (C_IRQF | C_AF) == 0
    assert cmos(rtc, REG_A) & 0x7F == 0x26, "divider 010 (32.768 kHz), rate 0110 (1024 Hz), as a BIOS leaves it"


@pytest.mark.clause("mc146818", "cmos/memory-size")
@pytest.mark.parametrize(
    ("mem", "expect"),
    [("256", {0x15: 0x80, 0x16: 0x02, 0x34: 0x00, 0x35: 0x0F, 0x5B: 0, 0x5C: 0, 0x5D: 0}),
     ("5G", {0x34: 0x00, 0x35: 0xBF, 0x5B: 0x00, 0x5C: 0x80, 0x5D: 0x00})],
)  # fmt: skip
def test_cmos_memory_size_bytes(libqtest, mem: str, expect: dict[int, int]) -> None:
    qt = libqtest("-m", mem)
    assert {index: cmos(qt, index) for index in expect} == expect


@pytest.mark.virtual_clock
@pytest.mark.clause("mc146818", "time-advances")
def test_update_in_progress_then_seconds_advance(rtc) -> None:
    needs_clock(rtc)
    assert not cmos(rtc, REG_A) & 0x80
    rtc.clock_step(S - 100_000)  # 100 us before the update: inside the 244 us UIP window
    assert cmos(rtc, REG_A) & 0x80, "UIP must be set in the 244 us before an update"
    assert cmos(rtc, SEC) == 0x21
    rtc.clock_step(200_000)
    assert not cmos(rtc, REG_A) & 0x80
    assert cmos(rtc, SEC) == 0x22


@pytest.mark.virtual_clock
@pytest.mark.clause("mc146818", "periodic-interrupt")
def test_periodic_interrupt_on_irq8(rtc) -> None:
    needs_clock(rtc)
    rtc.irq_intercept_in("ioapic")
    cmos_write(rtc, REG_A, 0x2F)  # rate 15: 2 Hz
    cmos_write(rtc, REG_B, B_24H | B_PIE)
    rtc.clock_step(400 * MS)
    assert not rtc.irq_level.get(RTC_IRQ)
    rtc.clock_step(200 * MS)
    rtc.poll_irqs(0.5)
    assert rtc.irq_level.get(RTC_IRQ), "PF with PIE set must raise IRQ 8"
    assert cmos(rtc, REG_C) & (C_IRQF | C_PF) == C_IRQF | C_PF
    rtc.poll_irqs(0.2)
    assert not rtc.irq_level.get(RTC_IRQ), "reading register C lowers IRQ 8"


@pytest.mark.virtual_clock
@pytest.mark.clause("mc146818", "alarm-interrupt")
def test_alarm_interrupt(rtc) -> None:
    needs_clock(rtc)
    rtc.irq_intercept_in("ioapic")
    cmos_write(rtc, SEC_ALARM, 0x24)
    cmos_write(rtc, MIN_ALARM, 0xC0)  # don't care
    cmos_write(rtc, HOUR_ALARM, 0x16)
    cmos_write(rtc, REG_B, B_24H | B_AIE)
    rtc.clock_step(2 * S)
    assert not rtc.irq_level.get(RTC_IRQ)
    rtc.clock_step(1 * S)
    rtc.poll_irqs(0.5)
    assert rtc.irq_level.get(RTC_IRQ), "the alarm at 16:xx:24 must raise IRQ 8"
    assert cmos(rtc, REG_C) & (C_IRQF | C_AF) == C_IRQF | C_AF


@pytest.mark.virtual_clock
@pytest.mark.clause("mc146818", "update-interrupt")
def test_update_ended_interrupt(rtc) -> None:
    needs_clock(rtc)
    rtc.irq_intercept_in("ioapic")
    cmos_write(rtc, REG_B, B_24H | B_UIE)
    rtc.clock_step(S)
    rtc.poll_irqs(0.5)
    assert rtc.irq_level.get(RTC_IRQ)
    assert cmos(rtc, REG_C) & (C_IRQF | C_UF) == C_IRQF | C_UF
    cmos_write(rtc, REG_B, B_24H | B_SET | B_UIE)
    assert not cmos(rtc, REG_B) & B_UIE, "setting SET clears UIE"
