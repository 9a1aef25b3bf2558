"""QMP ``query-pci`` output for a :class:`PciBus`, in QEMU 7.2's shape (qapi/pci.json PciInfo).

Field rules taken from QEMU's qmp_query_pci and checked against QEMU 7.2's answer: ``class_info.class``
is base class << 8 | subclass, ``desc`` only for classes in QEMU's description table; ``irq`` only
when Interrupt Pin is non-zero (it is Interrupt Line); regions list implemented BARs with the address
they decode at or -1, and ``prefetch``/``mem_type_64`` only for memory BARs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from refvm.devices.pci.bus import PciBus
from refvm.devices.pci.config import INTERRUPT_LINE, INTERRUPT_PIN, SUBSYSTEM_ID, SUBSYSTEM_VENDOR_ID
from refvm.devices.pci.device import PciDevice

__all__ = ["query_pci", "query_pci_tree", "device_info", "CLASS_DESCRIPTIONS"]

#: QEMU 7.2's pci_class_descriptions (class >> 8 -> desc), as listed by hw/pci/pci.c.
CLASS_DESCRIPTIONS: dict[int, str] = {
    0x0001: "VGA controller", 0x0100: "SCSI controller", 0x0101: "IDE controller",
    0x0102: "Floppy controller", 0x0103: "IPI controller", 0x0104: "RAID controller",
    0x0106: "SATA controller", 0x0107: "SAS controller", 0x0180: "Storage controller",
    0x0200: "Ethernet controller", 0x0201: "Token Ring controller", 0x0202: "FDDI controller",
    0x0203: "ATM controller", 0x0280: "Network controller", 0x0300: "VGA controller",
    0x0301: "XGA controller", 0x0302: "3D controller", 0x0380: "Display controller",
    0x0400: "Video controller", 0x0401: "Audio controller", 0x0402: "Phone", 0x0403: "Audio controller",
    0x0480: "Multimedia controller", 0x0500: "RAM controller", 0x0501: "Flash controller",
    0x0580: "Memory controller", 0x0600: "Host bridge", 0x0601: "ISA bridge", 0x0602: "EISA bridge",
    0x0603: "MC bridge", 0x0604: "PCI bridge", 0x0605: "PCMCIA bridge", 0x0606: "NUBUS bridge",
    0x0607: "CARDBUS bridge", 0x0608: "RACEWAY bridge", 0x0680: "Bridge", 0x0700: "Serial port",
    0x0701: "Parallel port", 0x0800: "Interrupt controller", 0x0801: "DMA controller", 0x0802: "Timer",
    0x0803: "RTC", 0x0900: "Keyboard", 0x0901: "Pen", 0x0902: "Mouse", 0x0A00: "Dock station",
    0x0B00: "i386 cpu", 0x0C00: "Firewire controller", 0x0C01: "Access bus controller",
    0x0C02: "SSA controller", 0x0C03: "USB controller", 0x0C04: "Fibre channel controller", 0x0C05: "SMBus",
}  # fmt: skip


def device_info(bus: PciBus, slot: int, function: int, device: PciDevice) -> dict[str, Any]:
    """One PciDeviceInfo."""
    cfg = device.config
    cls = device.class_code >> 8
    class_info: dict[str, Any] = {"class": cls}
    if cls in CLASS_DESCRIPTIONS:
        class_info["desc"] = CLASS_DESCRIPTIONS[cls]
    regions: list[dict[str, Any]] = []
    for index, spec in sorted(device.bars.items()):
        addr = device.bar_address(index)
        region: dict[str, Any] = {
            "bar": index,
            "type": "io" if spec.is_io else "memory",
            "address": -1 if addr is None else addr,
            "size": spec.size,
        }
        if not spec.is_io:
            region["prefetch"] = spec.prefetchable
            region["mem_type_64"] = spec.is_64
        regions.append(region)
    info: dict[str, Any] = {
        "bus": bus.bus_number,
        "slot": slot,
        "function": function,
        "class_info": class_info,
        "id": {
            "device": device.device_id,
            "vendor": device.vendor_id,
            "subsystem": cfg.get_u16(SUBSYSTEM_ID),
            "subsystem-vendor": cfg.get_u16(SUBSYSTEM_VENDOR_ID),
        },
        "irq_pin": cfg.get_u8(INTERRUPT_PIN),
        "qdev_id": device.qdev_id,
        "regions": regions,
    }
    if cfg.get_u8(INTERRUPT_PIN):
        info["irq"] = cfg.get_u8(INTERRUPT_LINE)
    return info


def query_pci(bus: PciBus, functions: Iterable[PciDevice] | None = None) -> list[dict[str, Any]]:
    """The ``return`` value of ``query-pci`` for a machine with this one root bus: ``functions`` (by default
    every function on the bus, in devfn order), each at the slot and function it is plugged at."""
    if functions is None:
        functions = [d for _s, _f, d in bus.devices()]
    return [{"bus": bus.bus_number, "devices": [device_info(bus, d.slot, d.function, d) for d in functions]}]


def query_pci_tree(tree: Any) -> list[dict[str, Any]]:
    """``query-pci`` from a machine's device tree (refvm/devices/tree.py): the bus is the host bridge node's
    transport and each function is a node's transport, in devfn order."""
    return query_pci(tree.pci_bus(), [n.transport for n in tree.pci_nodes()])
