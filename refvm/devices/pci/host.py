"""The PC host bridge (i440FX at 00:00.0) and configuration mechanism #1 (ports 0CF8h/0CFCh).

Mechanism #1 (PCI 3.0 §3.2.2.3.2) as QEMU 7.2's pc machine implements it, measured over qtest:

* CONFIG_ADDRESS (0CF8h) latches only full dword writes; byte/word writes there are ignored. Any read
  of 0CF8h-0CFBh returns CONFIG_ADDRESS truncated to the access size -- the *low* bytes, whatever the
  port (QEMU ignores the offset). Port 0CF9h is the PIIX Reset Control Register, which overlays the
  index register for accesses that start there: pass it as ``reset_control`` (or let :meth:`install`
  take over a device already registered at 0CF9h).
* CONFIG_DATA (0CFCh-0CFFh): with Enable (bit 31) clear, reads are all-ones and writes dropped.
  Otherwise the register offset is ``(CONFIG_ADDRESS | port & 3) & 0xFF`` -- bits 1:0 of
  CONFIG_ADDRESS are ORed in, as QEMU does -- and the access keeps its size (a dword at offset 0xFD
  reads the three bytes inside config space and zero above).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from refvm.bus import PioBus
from refvm.devices.pci.bus import PciBus
from refvm.devices.pci.device import QEMU_SUBSYSTEM_ID, QEMU_SUBSYSTEM_VENDOR_ID, PciDevice
from refvm.migration.state import U32, DeviceState, sfield

__all__ = ["HostBridge", "ConfigMechanism1", "CONFIG_ADDRESS_PORT", "CONFIG_DATA_PORT", "ENABLE_BIT"]

CONFIG_ADDRESS_PORT = 0xCF8
CONFIG_DATA_PORT = 0xCFC
ENABLE_BIT = 1 << 31
#: i440FX registers QEMU initialises: SMRAM control and the coreboot RAM-size byte (RAM / 8 MiB).
I440FX_SMRAM = 0x72
I440FX_COREBOOT_RAM_SIZE = 0x57


class HostBridge(PciDevice):
    """i440FX PCI and memory controller as on ``-M pc``: 8086:1237 rev 2, class 060000h, no BARs."""

    type_name = "i440FX"
    vmsd_name = "I440FX"

    def __init__(self, ram_size: int = 128 << 20) -> None:
        super().__init__(
            vendor_id=0x8086,
            device_id=0x1237,
            class_code=0x060000,
            revision=0x02,
            subsystem_vendor_id=QEMU_SUBSYSTEM_VENDOR_ID,
            subsystem_id=QEMU_SUBSYSTEM_ID,
        )
        self.ram_size = ram_size
        self._init_chipset_bytes()

    def _init_chipset_bytes(self) -> None:
        self.config.set_u8(I440FX_SMRAM, 0x02)
        self.config.set_u8(I440FX_COREBOOT_RAM_SIZE, min(self.ram_size >> 23, 0xFF))


@dataclass
class Conf1State(DeviceState):
    """CONFIG_ADDRESS as the guest last wrote it (a driver may migrate between its 0CF8h and 0CFCh accesses)."""

    VMSD_NAME = "pci-conf1"

    address: int = sfield(U32, 0)


class _AddressPort:
    """0CF8h-0CFBh: CONFIG_ADDRESS, with the Reset Control Register's byte at 0CF9h."""

    def __init__(self, owner: ConfigMechanism1) -> None:
        self._owner = owner

    def save(self) -> Conf1State:
        return Conf1State(self._owner.address)

    def load(self, state: Conf1State) -> None:
        self._owner.address = state.address

    def read(self, offset: int, size: int) -> int:
        rcr = self._owner.reset_control
        if offset == 1 and rcr is not None:
            return rcr.read(0, 1) & 0xFF
        return self._owner.address & ((1 << (8 * size)) - 1)

    def write(self, offset: int, size: int, value: int) -> None:
        rcr = self._owner.reset_control
        if offset == 1 and rcr is not None:
            rcr.write(0, 1, value & 0xFF)
        elif offset == 0 and size == 4:
            self._owner.address = value & 0xFFFFFFFF


class _DataPort:
    """0CFCh-0CFFh: CONFIG_DATA."""

    def __init__(self, owner: ConfigMechanism1) -> None:
        self._owner = owner

    def read(self, offset: int, size: int) -> int:
        return self._owner.data_read(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        self._owner.data_write(offset, size, value)


class ConfigMechanism1:
    """Configuration mechanism #1 in front of a :class:`PciBus`."""

    def __init__(self, bus: PciBus, reset_control: Any = None) -> None:
        self.bus = bus
        self.reset_control = reset_control
        self.address = 0
        self.address_port = _AddressPort(self)
        self.data_port = _DataPort(self)

    def install(self, pio: PioBus) -> None:
        """Register 0CF8h (4 bytes) and 0CFCh (4 bytes). A device already at 0CF9h (the PIIX Reset
        Control Register) is unregistered and chained behind the index register, since a dword write
        to 0CF8h must reach CONFIG_ADDRESS whole rather than be split around it."""
        existing = pio.lookup(0xCF9)
        if existing is not None and existing.base == 0xCF9 and existing.length == 1:
            self.reset_control = pio.unregister(0xCF9)
        pio.register(CONFIG_ADDRESS_PORT, 4, self.address_port, "pci-conf-idx")
        pio.register(CONFIG_DATA_PORT, 4, self.data_port, "pci-conf-data")

    def _target(self, offset: int) -> tuple[int, int, int, int] | None:
        addr = self.address
        if not addr & ENABLE_BIT:
            return None
        return (addr >> 16) & 0xFF, (addr >> 11) & 0x1F, (addr >> 8) & 0x7, (addr | (offset & 3)) & 0xFF

    def data_read(self, offset: int, size: int) -> int:
        target = self._target(offset)
        if target is None:
            return (1 << (8 * size)) - 1
        bus, dev, fn, reg = target
        return self.bus.config_read(bus, dev, fn, reg, size)

    def data_write(self, offset: int, size: int, value: int) -> None:
        target = self._target(offset)
        if target is not None:
            bus, dev, fn, reg = target
            self.bus.config_write(bus, dev, fn, reg, size, value)
