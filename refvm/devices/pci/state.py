"""A PCI function's migratable state: configuration space, INTx level and MSI-X table and PBA, as data.

QEMU's "PCIDevice" vmstate carries the 256 config bytes and the INTx levels; MSI-X adds the table and PBA.
The bytes come from the stream, so on load they are checked against the destination's own function the way
QEMU's get_pci_config_device does: every bit that the guest cannot write (IDs, class code, BAR low bits,
capability pointers and bodies, header type) must equal the destination's, so a stream can never turn a
function into another or move a capability. Writable bits may be anything a guest could have written.
STATUS bit 3 (interrupt status) is not taken from the bytes: it follows the carried INTx level.
"""

from __future__ import annotations

from dataclasses import dataclass

from refvm.migration.state import BOOL, DeviceState, StateError, buffer, sfield

__all__ = ["PciState", "load_error", "MAX_MSIX_TABLE", "MAX_MSIX_PBA"]

MAX_MSIX_TABLE = 16 * 2048
MAX_MSIX_PBA = 8 * 32


def load_error(section: str, field: str, problem: str) -> StateError:
    """The one-line error of a State that decodes but does not fit the destination's device."""
    return StateError(f"migration stream: section '{section}': field '{field}': {problem}")


@dataclass
class PciState(DeviceState):
    """One PCI function (host bridge, PIIX functions, every -device): config space, INTx, MSI-X."""

    VMSD_NAME = "PCIDevice"
    VERSION = 1

    config: bytes = sfield(buffer(256), b"\0" * 256, lambda v: len(v) == 256, "256 bytes")
    intx_level: bool = sfield(BOOL, False)
    msix_table: bytes = sfield(buffer(MAX_MSIX_TABLE), b"", lambda v: len(v) % 16 == 0, "whole 16-byte entries")
    msix_pba: bytes = sfield(buffer(MAX_MSIX_PBA), b"", lambda v: len(v) % 8 == 0, "whole qwords")
