"""Assemble the PCI side of QEMU's ``pc`` machine: bus 0, i440FX at 00:00.0, PIIX at 00:01.x, conf1."""

from __future__ import annotations

from refvm.bus import MmioBus, PioBus
from refvm.devices.pci.bus import PC_PIRQ_IRQS, IntxSink, MsiSink, PciBus
from refvm.devices.pci.host import ConfigMechanism1, HostBridge
from refvm.devices.pci.piix import Piix3Ide, Piix3IsaBridge, Piix4Acpi

__all__ = ["build_pc_pci"]


def build_pc_pci(
    pio: PioBus,
    mmio: MmioBus,
    msi_sink: MsiSink,
    intx_sink: IntxSink,
    *,
    ram_size: int = 128 << 20,
    piix: bool = True,
    assign_irq_lines: bool = True,
) -> tuple[PciBus, ConfigMechanism1]:
    """Bus + host bridge (+ PIIX functions) + mechanism #1 installed on ``pio``.

    Install after the reset-control device at 0CF9h (if any) so the mechanism can chain it. Pass
    ``assign_irq_lines=False`` to leave Interrupt Line 0 like QEMU before firmware (qtest comparisons).
    """
    bus = PciBus(pio, mmio, msi_sink, intx_sink, assign_irq_lines=assign_irq_lines)
    bus.add(HostBridge(ram_size), slot=0)
    if piix:
        isa = Piix3IsaBridge()
        if assign_irq_lines:  # refvm plays the firmware: steer PIRQ A-D as SeaBIOS does on QEMU's pc
            isa.firmware_routes = PC_PIRQ_IRQS
            isa.apply_firmware_routes()
        bus.add(isa, slot=1, function=0)
        bus.pirq_router = isa.route
        bus.add(Piix3Ide(), slot=1, function=1)
        bus.add(Piix4Acpi(), slot=1, function=3)
    conf1 = ConfigMechanism1(bus)
    conf1.install(pio)
    return bus, conf1
