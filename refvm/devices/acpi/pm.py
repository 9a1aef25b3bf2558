"""PIIX4-style ACPI power management registers (ACPI 6.4 4.8.3, Intel PIIX4 datasheet 7.2.9) at the FADT's PM1a blocks.

PM1a_EVT (base+0): PM1_STS (write 1 to clear) and PM1_EN; PM1a_CNT (base+4); PM_TMR (base+8, 24-bit,
3.579545 MHz). The power button is the fixed-feature button: a press (QMP `system_powerdown`) sets
PWRBTN_STS, and while PWRBTN_STS and PWRBTN_EN are both set the SCI (ISA IRQ 9, level) is raised. Writing
SLP_EN with SLP_TYP 0 (the DSDT's `\\_S5_`) powers the machine off; SLP_TYP 1 is QEMU's S3 (suspend).
The machine has no legacy/SMM mode (FADT SMI_CMD is 0), so SCI_EN is fixed at 1. Accesses of any width at
any offset are taken apart into bytes, so a guest's byte or word writes mean what they mean on hardware.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from refvm.devices.irq import IrqLine
from refvm.migration.state import U16, DeviceState, sfield

__all__ = ["AcpiPm", "AcpiPmState", "PWRBTN_STS", "PWRBTN_EN", "SLP_EN", "SCI_EN", "PM_TIMER_HZ", "REGION_SIZE"]

TMR_STS = 1 << 0
GBL_STS = 1 << 5
PWRBTN_STS = 1 << 8
RTC_STS = 1 << 10
WAK_STS = 1 << 15
STS_MASK = TMR_STS | GBL_STS | PWRBTN_STS | RTC_STS | WAK_STS
PWRBTN_EN = 1 << 8
EN_MASK = TMR_STS | GBL_STS | PWRBTN_EN | RTC_STS
SCI_EN = 1 << 0
SLP_EN = 1 << 13
SLP_TYP_SHIFT = 10
CNT_WRITABLE = 0x0006 | (7 << SLP_TYP_SHIFT)  # BM_RLD, GBL_RLS, SLP_TYP (SCI_EN fixed, SLP_EN write-only)
SLP_TYP_S5 = 0
SLP_TYP_S3 = 1
PM_TIMER_HZ = 3_579_545
REGION_SIZE = 0x40  # QEMU's PIIX4 PM I/O window


@dataclass
class AcpiPmState(DeviceState):
    """PM1_STS, PM1_EN and PM1_CNT (QEMU's "piix4_pm" carries the same three). The PM timer is not state: it
    counts from the destination's machine clock, which migration does not carry yet."""

    VMSD_NAME = "acpi-pm1"

    sts: int = sfield(U16, 0, lambda v: not v & ~STS_MASK, "status bits the device has")
    en: int = sfield(U16, 0, lambda v: not v & ~EN_MASK, "enable bits the device has")
    cnt: int = sfield(U16, SCI_EN, lambda v: v & ~CNT_WRITABLE == SCI_EN, "writable control bits with SCI_EN")


class AcpiPm:
    """The PM1a event/control blocks and the PM timer of one machine.

    ``on_sleep(slp_typ)`` is called (from the guest's vCPU thread) when the guest writes SLP_EN; the machine
    decides what soft-off or suspend means. ``now_ns`` is the machine clock the PM timer counts from.
    """

    def __init__(self, sci: IrqLine, on_sleep: Callable[[int], None], now_ns: Callable[[], int]) -> None:
        self.sci = sci
        self.on_sleep = on_sleep
        self.now_ns = now_ns
        self._lock = threading.Lock()
        self.sts = 0
        self.en = 0
        self.cnt = SCI_EN
        self.power_button_presses = 0

    # ---- host side ----------------------------------------------------------------------------------

    def press_power_button(self) -> None:
        """QMP `system_powerdown`: the fixed-feature power button is pressed."""
        with self._lock:
            self.sts |= PWRBTN_STS
            self.power_button_presses += 1
            self._update_sci()

    def wake(self) -> None:
        """The machine woke from a sleep state: WAK_STS tells the OS so (ACPI 6.4 4.8.3.1.1)."""
        with self._lock:
            self.sts |= WAK_STS
            self._update_sci()

    def _update_sci(self) -> None:
        self.sci.set(bool(self.sts & self.en & EN_MASK) and bool(self.cnt & SCI_EN))

    def timer(self) -> int:
        return (self.now_ns() * PM_TIMER_HZ // 1_000_000_000) & 0xFF_FFFF

    # ---- guest side ---------------------------------------------------------------------------------

    def _read_byte(self, offset: int) -> int:
        if offset < 2:
            return (self.sts >> (8 * offset)) & 0xFF
        if offset < 4:
            return (self.en >> (8 * (offset - 2))) & 0xFF
        if offset < 6:
            return (self.cnt >> (8 * (offset - 4))) & 0xFF
        if 8 <= offset < 12:
            return (self.timer() >> (8 * (offset - 8))) & 0xFF
        return 0

    def read(self, offset: int, size: int) -> int:
        with self._lock:
            if 8 <= offset < 12:  # one timer sample for the whole access, so the bytes agree
                value = self.timer() >> (8 * (offset - 8))
                return value & ((1 << (8 * size)) - 1)
            return int.from_bytes(bytes(self._read_byte(offset + i) for i in range(size)), "little")

    def write(self, offset: int, size: int, value: int) -> None:
        sleep_type = None
        with self._lock:
            for i in range(size):
                byte = (value >> (8 * i)) & 0xFF
                reg_off = offset + i
                if reg_off < 2:
                    self.sts &= ~((byte << (8 * reg_off)) & STS_MASK)
                elif reg_off < 4:
                    shift = 8 * (reg_off - 2)
                    self.en = (self.en & ~(0xFF << shift)) | ((byte << shift) & EN_MASK)
                elif reg_off < 6:
                    shift = 8 * (reg_off - 4)
                    word = (self.cnt & ~(0xFF << shift)) | (byte << shift)
                    self.cnt = (word & CNT_WRITABLE) | SCI_EN
                    if word & SLP_EN and shift == 8:
                        sleep_type = (word >> SLP_TYP_SHIFT) & 7
            self._update_sci()
        if sleep_type is not None:
            self.on_sleep(sleep_type)

    def save(self) -> AcpiPmState:
        with self._lock:
            return AcpiPmState(self.sts, self.en, self.cnt)

    def load(self, state: AcpiPmState) -> None:
        """Registers as carried; the SCI level follows them at once (it is level-triggered)."""
        with self._lock:
            self.sts, self.en, self.cnt = state.sts, state.en, state.cnt
            self._update_sci()

    def reset(self) -> None:
        """Status and enables clear, only SCI_EN set (and the SCI follows): exactly ``AcpiPmState()``."""
        self.load(AcpiPmState())
