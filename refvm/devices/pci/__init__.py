"""PCI: configuration space with honest masks, type-0 functions, BAR decoding, MSI-X, INTx, conf1.

One job per module: ``config`` (bytes + masks), ``region`` (sub-ranges inside a BAR), ``msix``,
``device`` (PciDevice/BarSpec), ``bus`` (slots, decoding, interrupt routing), ``host`` (i440FX,
mechanism #1), ``piix`` (slot-1 chipset stand-ins), ``pc`` (assembly), ``query`` (query-pci JSON).
"""

from refvm.devices.pci.bus import PC_PIRQ_IRQS, PciBus, PciError, pirq_for
from refvm.devices.pci.config import ConfigSpace
from refvm.devices.pci.device import BarSpec, PciDevice
from refvm.devices.pci.host import ConfigMechanism1, HostBridge
from refvm.devices.pci.msix import Msix
from refvm.devices.pci.pc import build_pc_pci
from refvm.devices.pci.piix import Piix3Ide, Piix3IsaBridge, Piix4Acpi
from refvm.devices.pci.query import query_pci
from refvm.devices.pci.region import BarRegion

__all__ = [
    "BarRegion", "BarSpec", "ConfigMechanism1", "ConfigSpace", "HostBridge", "Msix", "PC_PIRQ_IRQS", "PciBus",
    "PciDevice", "PciError", "Piix3Ide", "Piix3IsaBridge", "Piix4Acpi", "build_pc_pci", "pirq_for", "query_pci",
]  # fmt: skip
