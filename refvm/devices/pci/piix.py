"""Configuration-space stand-ins for QEMU pc's PIIX3/PIIX4 functions at 00:01.x.

QEMU's ``-M pc -nodefaults`` has the ISA bridge (01.0, multi-function), the IDE controller (01.1) and
the PIIX4 power-management function (01.3) in slot 1, so the first ``-device`` lands in slot 2. refvm
reproduces that layout and the configuration bytes QEMU 7.2 shows before firmware runs (measured over
qtest), so that enumeration, slot numbers and ``query-pci`` agree. They are *only* configuration space:
no ISA bus behind the bridge, no IDE channels (the bus-master BAR decodes but reads all-ones), no ACPI
registers. Their chipset registers (40h-FFh) are plain read/write bytes, as QEMU's wmask shows.
"""

from __future__ import annotations

from refvm.devices.pci.config import STATUS
from refvm.devices.pci.device import QEMU_SUBSYSTEM_ID, QEMU_SUBSYSTEM_VENDOR_ID, BarSpec, PciDevice

__all__ = ["Piix3IsaBridge", "Piix3Ide", "Piix4Acpi"]

_DEVSEL_MEDIUM = 0x0200
_FAST_BACK = 0x0080


#: PIIX3 PIRQ route control registers PIRQRC[A:D].
PIRQ_ROUTE = 0x60


class _ChipsetFunction(PciDevice):
    """A function with fixed power-on values for some chipset registers, restored on reset."""

    power_on: dict[int, int] = {}
    power_on_status = 0

    def _apply_power_on(self) -> None:
        for offset, value in self.power_on.items():
            self.config.set_u8(offset, value)
        self.config.set_bits(STATUS, 2, self.power_on_status)

    def reset(self) -> None:
        super().reset()
        self._apply_power_on()


class Piix3IsaBridge(_ChipsetFunction):
    """PIIX3 PCI-to-ISA bridge, 8086:7000, class 060100h; PIRQ route registers 60h-63h start disabled."""

    type_name = "PIIX3"
    vmsd_name = "PIIX3"
    power_on = {0x4C: 0x4D, 0x4E: 0x03, 0x60: 0x80, 0x61: 0x80, 0x62: 0x80, 0x63: 0x80, 0x69: 0x02,
                0x70: 0x80, 0x76: 0x0C, 0x77: 0x0C, 0x78: 0x02, 0xA0: 0x08, 0xA8: 0x0F}  # fmt: skip
    power_on_status = _DEVSEL_MEDIUM

    def __init__(self) -> None:
        super().__init__(
            vendor_id=0x8086,
            device_id=0x7000,
            class_code=0x060100,
            multifunction=True,
            subsystem_vendor_id=QEMU_SUBSYSTEM_VENDOR_ID,
            subsystem_id=QEMU_SUBSYSTEM_ID,
        )
        self._apply_power_on()
        #: PIRQ A-D routes written at reset as firmware would (None: leave them disabled, as before firmware).
        self.firmware_routes: tuple[int, int, int, int] | None = None

    def reset(self) -> None:
        super().reset()
        self.apply_firmware_routes()

    def apply_firmware_routes(self) -> None:
        if self.firmware_routes is not None:
            for pirq, irq in enumerate(self.firmware_routes):
                self.config.set_u8(PIRQ_ROUTE + pirq, irq)

    def route(self, pirq: int) -> int | None:
        """The ISA IRQ PIRQ ``pirq`` (0..3 = A..D) is steered to, or None while its route is disabled.

        PIIX3 PIRQRC[A:D] (60h-63h): bit 7 disables the route, bits 3:0 name the IRQ; IRQs 0-2, 8 and 13
        are reserved and do not route (as QEMU's PIIX3 only drives IRQs below 16).
        """
        value = self.config.get(PIRQ_ROUTE + pirq, 1)
        if value & 0x80:
            return None
        irq = value & 0x0F
        return None if irq in (0, 1, 2, 8, 13) else irq

    def config_write_hook(self, offset: int, size: int, value: int) -> None:
        if offset < PIRQ_ROUTE + 4 and offset + size > PIRQ_ROUTE and self.bus is not None:
            self.bus.reroute_intx()


class Piix3Ide(_ChipsetFunction):
    """PIIX3 IDE, 8086:7010, class 010180h (legacy-mode ISA compatibility, bus master); BAR4 16 I/O bytes."""

    type_name = "piix3-ide"
    vmsd_name = "ide"
    power_on_status = _DEVSEL_MEDIUM | _FAST_BACK

    def __init__(self) -> None:
        super().__init__(
            vendor_id=0x8086,
            device_id=0x7010,
            class_code=0x010180,
            subsystem_vendor_id=QEMU_SUBSYSTEM_VENDOR_ID,
            subsystem_id=QEMU_SUBSYSTEM_ID,
        )
        self.add_bar(BarSpec(4, "io", 16))
        self._apply_power_on()


class Piix4Acpi(_ChipsetFunction):
    """PIIX4 power management, 8086:7113 rev 3, class 068000h, INTA; firmware gives it IRQ 9 (the SCI)."""

    type_name = "PIIX4_PM"
    vmsd_name = "piix4_pm"
    fixed_irq = 9
    power_on = {0x40: 0x01, 0x5F: 0x10, 0x63: 0x60, 0x90: 0x01, 0x91: 0xB1, 0xD2: 0x09}
    power_on_status = _DEVSEL_MEDIUM | _FAST_BACK

    def __init__(self) -> None:
        super().__init__(
            vendor_id=0x8086,
            device_id=0x7113,
            class_code=0x068000,
            revision=0x03,
            interrupt_pin=1,
            subsystem_vendor_id=QEMU_SUBSYSTEM_VENDOR_ID,
            subsystem_id=QEMU_SUBSYSTEM_ID,
        )
        self._apply_power_on()
