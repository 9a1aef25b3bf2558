"""PciDevice: a type-0 PCI function -- header, BARs, capabilities, MSI-X and INTx.

Subclasses (virtio transports, the host bridge) build their configuration space in ``__init__`` with
:meth:`add_bar`, :meth:`add_capability` and :meth:`add_msix`, and react to guest writes in
:meth:`config_write_hook` / to reads in :meth:`config_read_hook`. Everything the guest can reach goes
through :meth:`config_read` / :meth:`config_write`, which never raise on guest-chosen offsets, sizes or
values. Where the spec leaves freedom, defaults follow QEMU 7.2 as measured over qtest: COMMAND writable
bits 0x0507 (I/O, memory, bus master, SERR#, interrupt disable), Cache Line Size and Interrupt Line
read/write, Latency Timer and BIST read-only, bytes 40h-FFh outside capabilities read/write, STATUS
error bits write-1-to-clear.

Decoding (mapping BARs on the PIO/MMIO buses) and INTx routing are the bus's job (:class:`PciBus`);
the device only says what it would decode (:meth:`bar_address`) and what its INTx level is.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from refvm.devices.pci.config import (
    BAR0,
    CACHE_LINE_SIZE,
    CAPABILITY_LIST,
    CLASS_PROG,
    CMD_INTX_DISABLE,
    CMD_IO,
    CMD_MASTER,
    CMD_MEMORY,
    CMD_SERR,
    COMMAND,
    DEVICE_ID,
    HEADER_SIZE,
    HEADER_TYPE,
    INTERRUPT_LINE,
    INTERRUPT_PIN,
    REVISION_ID,
    ROM_ADDRESS,
    STATUS,
    STATUS_CAP_LIST,
    STATUS_INTERRUPT,
    STATUS_W1C_BITS,
    SUBSYSTEM_ID,
    SUBSYSTEM_VENDOR_ID,
    VENDOR_ID,
    ConfigSpace,
    ranges_overlap,
)
from refvm.devices.pci.msix import ENTRY_SIZE, MSIX_CAP_ID, Msix
from refvm.devices.pci.region import BarRegion
from refvm.devices.pci.state import PciState, load_error

if TYPE_CHECKING:
    from refvm.devices.pci.bus import PciBus

__all__ = ["BarSpec", "PciDevice", "COMMAND_WMASK", "QEMU_SUBSYSTEM_VENDOR_ID", "QEMU_SUBSYSTEM_ID"]

COMMAND_WMASK = CMD_IO | CMD_MEMORY | CMD_MASTER | CMD_SERR | CMD_INTX_DISABLE
#: QEMU gives every device without its own subsystem IDs Red Hat/Qumranet 1af4:1100.
QEMU_SUBSYSTEM_VENDOR_ID = 0x1AF4
QEMU_SUBSYSTEM_ID = 0x1100

BarKind = Literal["io", "mem32", "mem64"]
_U32_MAX = 0xFFFFFFFF
_U64_MAX = (1 << 64) - 1


@dataclass
class BarSpec:
    """One Base Address Register. ``region`` receives accesses relative to the BAR's start; if omitted,
    an empty :class:`BarRegion` of ``size`` bytes is created (add sub-ranges to it, e.g. MSI-X)."""

    index: int
    kind: BarKind
    size: int
    prefetchable: bool = False
    region: Any = field(default=None, repr=False)

    @property
    def is_io(self) -> bool:
        return self.kind == "io"

    @property
    def is_64(self) -> bool:
        return self.kind == "mem64"

    @property
    def offset(self) -> int:
        return BAR0 + 4 * self.index

    @property
    def flags(self) -> int:
        """The read-only low bits (§6.2.5.1): I/O bit 0; memory type 00b/10b in bits 2:1, prefetch bit 3."""
        if self.is_io:
            return 0x1
        return (0x4 if self.is_64 else 0x0) | (0x8 if self.prefetchable else 0x0)


class PciDevice:
    """A PCI function with a 256-byte type-0 configuration space."""

    #: QEMU's type name, used in error messages and `query-pci`-like output.
    type_name = "pci-device"
    #: QEMU's vmstate name: the second half of the function's migration section idstr (`0000:00:00.0/I440FX`).
    vmsd_name = "PCIDevice"
    #: A device whose Interrupt Line firmware sets to a fixed IRQ (PIIX4 ACPI's SCI is 9), else None.
    fixed_irq: int | None = None

    def __init__(
        self,
        *,
        vendor_id: int,
        device_id: int,
        class_code: int,
        revision: int = 0,
        subsystem_vendor_id: int = 0,
        subsystem_id: int = 0,
        interrupt_pin: int = 0,
        header_type: int = 0,
        multifunction: bool = False,
        qdev_id: str = "",
    ) -> None:
        if not 0 <= interrupt_pin <= 4:
            raise ValueError(f"interrupt pin must be 0 (none) or 1-4 (INTA-INTD), not {interrupt_pin}")
        self.config = ConfigSpace(256)
        self.qdev_id = qdev_id
        self.multifunction = multifunction
        self.bars: dict[int, BarSpec] = {}
        self.capabilities: dict[int, tuple[int, int]] = {}  # offset -> (cap id, length)
        self.msix: Msix | None = None
        self.bus: PciBus | None = None
        self.slot = -1
        self.function = -1
        self.msi_dropped = 0
        self._intx_level = False
        self._lock = threading.RLock()
        c = self.config
        c.set_u16(VENDOR_ID, vendor_id)
        c.set_u16(DEVICE_ID, device_id)
        c.set_u8(REVISION_ID, revision)
        c.set(CLASS_PROG, 3, class_code)
        c.set_u8(HEADER_TYPE, (header_type & 0x7F) | (0x80 if multifunction else 0))
        c.set_u16(SUBSYSTEM_VENDOR_ID, subsystem_vendor_id)
        c.set_u16(SUBSYSTEM_ID, subsystem_id)
        c.set_u8(INTERRUPT_PIN, interrupt_pin)
        c.set_rw_mask(COMMAND, 2, COMMAND_WMASK)
        c.set_w1c_mask(STATUS, 2, STATUS_W1C_BITS)
        c.set_rw_mask(CACHE_LINE_SIZE, 1, 0xFF)
        c.set_rw_mask(INTERRUPT_LINE, 1, 0xFF)
        c.set_rw_bytes(HEADER_SIZE, b"\xff" * (c.size - HEADER_SIZE))

    # ---------------------------------------------------------------- identity
    @property
    def name(self) -> str:
        return self.type_name

    @property
    def vendor_id(self) -> int:
        return self.config.get_u16(VENDOR_ID)

    @property
    def device_id(self) -> int:
        return self.config.get_u16(DEVICE_ID)

    @property
    def class_code(self) -> int:
        return self.config.get(CLASS_PROG, 3)

    @property
    def command(self) -> int:
        return self.config.get_u16(COMMAND)

    @property
    def status(self) -> int:
        return self.config.get_u16(STATUS)

    @property
    def interrupt_pin(self) -> int:
        return self.config.get_u8(INTERRUPT_PIN)

    # ---------------------------------------------------------------- builder
    def add_bar(self, spec: BarSpec) -> BarSpec:
        """Declare a BAR: size must be a power of two (I/O >= 4 and <= 256 bytes, memory >= 16)."""
        last = 4 if spec.is_64 else 5
        if spec.kind not in ("io", "mem32", "mem64"):
            raise ValueError(f"BAR kind must be io, mem32 or mem64, not {spec.kind!r}")
        if not 0 <= spec.index <= last:
            raise ValueError(f"BAR{spec.index}: index must be 0..{last} for a {spec.kind} BAR")
        if spec.size <= 0 or spec.size & (spec.size - 1):
            raise ValueError(f"BAR{spec.index}: size {spec.size:#x} is not a power of two")
        if spec.is_io and not 4 <= spec.size <= 256:
            raise ValueError(f"BAR{spec.index}: I/O BARs decode 4..256 bytes, not {spec.size:#x}")
        if not spec.is_io and spec.size < 16:
            raise ValueError(f"BAR{spec.index}: memory BARs decode at least 16 bytes, not {spec.size:#x}")
        if spec.is_io and spec.prefetchable:
            raise ValueError(f"BAR{spec.index}: I/O BARs cannot be prefetchable")
        slots = {spec.index, spec.index + 1} if spec.is_64 else {spec.index}
        for other in self.bars.values():
            used = {other.index, other.index + 1} if other.is_64 else {other.index}
            if used & slots:
                raise ValueError(f"BAR{spec.index} overlaps BAR{other.index} of {self.name}")
        if spec.region is None:
            spec.region = BarRegion(spec.size, f"{self.name} BAR{spec.index}")
        self.bars[spec.index] = spec
        self.config.set_u32(spec.offset, spec.flags)
        mask = ~(spec.size - 1)
        if spec.is_64:
            self.config.set_u32(spec.offset + 4, 0)
            self.config.set_rw_mask(spec.offset, 4, mask & _U32_MAX & ~0xF)
            self.config.set_rw_mask(spec.offset + 4, 4, (mask >> 32) & _U32_MAX)
        else:
            self.config.set_rw_mask(spec.offset, 4, mask & _U32_MAX & ~(0x3 if spec.is_io else 0xF))
        return spec

    def _find_space(self, length: int) -> int:
        """Lowest dword-aligned offset from 40h where ``length`` bytes hold no capability (QEMU's rule)."""
        offset = HEADER_SIZE
        while offset + length <= self.config.size:
            clash = [o + n for o, (_, n) in self.capabilities.items() if ranges_overlap(o, n, offset, length)]
            if not clash:
                return offset
            offset = (max(clash) + 3) & ~3
        raise ValueError(f"{self.name}: no room for a {length}-byte capability")

    def add_capability(
        self, cap_id: int, body: bytes, *, rw_masks: bytes | None = None, offset: int | None = None
    ) -> int:
        """Link a capability into the list at 34h and set STATUS bit 4; returns its offset.

        ``body`` is what follows the ID and Next bytes (so the capability is ``2 + len(body)`` bytes);
        ``rw_masks`` gives a write mask per body byte (default: read-only). Like QEMU, the newest
        capability becomes the head of the list.
        """
        if not 0 <= cap_id <= 0xFF:
            raise ValueError(f"capability id {cap_id:#x} is not a byte")
        length = 2 + len(body)
        if rw_masks is not None and len(rw_masks) != len(body):
            raise ValueError(f"rw_masks has {len(rw_masks)} bytes for a {len(body)}-byte body")
        if offset is None:
            offset = self._find_space(length)
        if offset & 3 or offset < HEADER_SIZE or offset + length > self.config.size:
            raise ValueError(f"capability offset {offset:#x} must be dword aligned inside 40h-FFh")
        for other, (oid, olen) in self.capabilities.items():
            if ranges_overlap(offset, length, other, olen):
                raise ValueError(f"capability {cap_id:#x} at {offset:#x} overlaps capability {oid:#x} at {other:#x}")
        c = self.config
        c.set_u8(offset, cap_id)
        c.set_u8(offset + 1, c.get_u8(CAPABILITY_LIST))
        c.data[offset + 2 : offset + length] = body
        c.set_rw_bytes(offset, bytes(2) + (rw_masks or bytes(len(body))))
        c.w1cmask[offset : offset + length] = bytes(length)
        c.set_u8(CAPABILITY_LIST, offset)
        c.set_bits(STATUS, 2, STATUS_CAP_LIST)
        self.capabilities[offset] = (cap_id, length)
        return offset

    def add_msix(self, table_size: int, table_bar: int, table_offset: int, pba_bar: int, pba_offset: int) -> Msix:
        """Add the MSI-X capability (11h) and place its table and PBA inside existing memory BARs."""
        if self.msix is not None:
            raise ValueError(f"{self.name} already has MSI-X")
        if not 1 <= table_size <= 2048:
            raise ValueError(f"MSI-X table size must be 1..2048, not {table_size}")
        table_len = ENTRY_SIZE * table_size
        pba_len = ((table_size + 63) // 64) * 8
        for what, bir, off, length in (
            ("table", table_bar, table_offset, table_len),
            ("PBA", pba_bar, pba_offset, pba_len),
        ):
            spec = self.bars.get(bir)
            if spec is None or spec.is_io:
                raise ValueError(f"MSI-X {what}: BAR{bir} is not a memory BAR of {self.name}")
            if off & 7 or off < 0 or off + length > spec.size:
                raise ValueError(f"MSI-X {what}: offset {off:#x}+{length:#x} misaligned or outside BAR{bir}")
            if not isinstance(spec.region, BarRegion):
                raise ValueError(f"MSI-X {what}: BAR{bir}'s region is not a BarRegion")
        body = ((table_size - 1) | 0).to_bytes(2, "little")
        body += (table_offset | table_bar).to_bytes(4, "little") + (pba_offset | pba_bar).to_bytes(4, "little")
        masks = bytes([0x00, 0xC0]) + bytes(8)
        cap = self.add_capability(MSIX_CAP_ID, body, rw_masks=masks)
        msix = Msix(table_size, cap, lambda: self.config.get_u16(cap + 2), self._send_msi, self._lock)
        self.bars[table_bar].region.add(table_offset, table_len, msix.table_region, "msix-table")
        self.bars[pba_bar].region.add(pba_offset, pba_len, msix.pba_region, "msix-pba")
        self.msix = msix
        return msix

    # ---------------------------------------------------------------- guest config access
    def config_read(self, offset: int, size: int) -> int:
        """A configuration read from the guest; never raises on guest input."""
        with self._lock:
            self.config_read_hook(offset, size)
            return self.config.read(offset, size)

    def config_write(self, offset: int, size: int, value: int) -> None:
        """A configuration write from the guest: masked store, then side effects, then the subclass hook."""
        with self._lock:
            msix = self.msix
            control = msix.cap_offset + 3 if msix is not None else -1
            was_fmasked = msix.function_masked if msix is not None else True
            self.config.write(offset, size, value)
            if (
                ranges_overlap(offset, size, BAR0, 24)
                or ranges_overlap(offset, size, ROM_ADDRESS, 4)
                or ranges_overlap(offset, size, COMMAND, 1)
            ):
                if self.bus is not None:
                    self.bus.update_mappings()
            if ranges_overlap(offset, size, COMMAND + 1, 1) and self.bus is not None:
                self.bus.intx_update(self)
            if msix is not None and ranges_overlap(offset, size, control, 1):
                if msix.control_written(was_fmasked):
                    self.set_irq(False)
            self.config_write_hook(offset, size, value)

    def config_read_hook(self, offset: int, size: int) -> None:
        """Called before a guest config read (refresh bytes with ``config.set_*`` here). Default: nothing."""

    def config_write_hook(self, offset: int, size: int, value: int) -> None:
        """Called after a guest config write has been applied through the masks. Default: nothing."""

    # ---------------------------------------------------------------- decoding
    def bar_address(self, index: int) -> int | None:
        """Where BAR ``index`` decodes now, or None: QEMU's pci_bar_address rules.

        Unmapped when COMMAND's I/O/Memory bit is off, when the address is 0 (never a valid BAR), when
        the range would wrap or reach the top of the 32-bit (I/O and 32-bit memory) or 64-bit space --
        which is also where a BAR holding the all-ones sizing pattern lands.
        """
        spec = self.bars.get(index)
        if spec is None:
            return None
        cmd = self.config.get_u16(COMMAND)
        if spec.is_io:
            if not cmd & CMD_IO:
                return None
            addr = self.config.get_u32(spec.offset) & ~(spec.size - 1) & _U32_MAX
            last = addr + spec.size - 1
            return None if addr == 0 or last >= _U32_MAX else addr
        if not cmd & CMD_MEMORY:
            return None
        raw = self.config.get(spec.offset, 8 if spec.is_64 else 4)
        addr = raw & ~(spec.size - 1) & _U64_MAX
        last = addr + spec.size - 1
        limit = _U64_MAX if spec.is_64 else _U32_MAX
        return None if addr == 0 or last >= limit else addr

    # ---------------------------------------------------------------- interrupts
    @property
    def intx_level(self) -> bool:
        """The device's own INTx level (what STATUS bit 3 shows), before Interrupt Disable gating."""
        return self._intx_level

    @property
    def intx_asserted(self) -> bool:
        """Whether the function drives its INTx pin now (level high and Interrupt Disable clear)."""
        return self._intx_level and not self.config.get_u16(COMMAND) & CMD_INTX_DISABLE

    def set_irq(self, level: bool) -> None:
        """Drive INTx. STATUS bit 3 follows the level; the pin is gated by COMMAND bit 10 (§6.2.2-6.2.3)."""
        level = bool(level)
        with self._lock:
            if level == self._intx_level:
                return
            self._intx_level = level
            if level:
                self.config.set_bits(STATUS, 2, STATUS_INTERRUPT)
            else:
                self.config.clear_bits(STATUS, 2, STATUS_INTERRUPT)
            if self.bus is not None and self.interrupt_pin:
                self.bus.intx_update(self)

    def notify_vector(self, vector: int) -> None:
        """Interrupt the driver: through MSI-X ``vector`` if MSI-X is enabled, else by raising INTx."""
        msix = self.msix
        if msix is not None and msix.enabled:
            msix.notify(vector)
        else:
            self.set_irq(True)

    def _send_msi(self, address: int, data: int) -> None:
        """Deliver an MSI write. Like QEMU (TCG), it is dropped while Bus Master Enable is clear."""
        if self.bus is None or not self.config.get_u16(COMMAND) & CMD_MASTER:
            self.msi_dropped += 1
            return
        self.bus.deliver_msi(address, data)

    # ---------------------------------------------------------------- migration
    @property
    def idstr(self) -> str:
        """The function's migration section name, as QEMU forms it: `0000:00:04.0/virtio-blk`."""
        return f"0000:00:{max(self.slot, 0):02x}.{max(self.function, 0)}/{self.vmsd_name}"

    def save_pci(self) -> PciState:
        """Config space, INTx level and MSI-X as data (see :mod:`refvm.devices.pci.state`)."""
        with self._lock:
            msix = self.msix
            return PciState(config=self.config.snapshot(), intx_level=self._intx_level,
                            msix_table=bytes(msix.table) if msix else b"", msix_pba=bytes(msix.pba) if msix else b"")

    def check_pci(self, state: PciState, section: str, prefix: str = "") -> None:
        """Refuse a state that does not fit this function: read-only bits changed, MSI-X of another size."""
        c = self.config
        for addr, (new, old) in enumerate(zip(state.config, c.data, strict=True)):
            fixed = ~(c.wmask[addr] | c.w1cmask[addr]) & 0xFF
            if addr == STATUS:
                fixed &= ~STATUS_INTERRUPT
            if (new ^ old) & fixed:
                raise load_error(section, prefix + "config", f"byte {addr:#04x} is {new:#04x}, but this {self.name}'s "
                                 f"read-only bits {fixed:#04x} hold {old:#04x}")
        msix = self.msix
        for name, value, want in (("msix_table", state.msix_table, len(msix.table) if msix else 0),
                                  ("msix_pba", state.msix_pba, len(msix.pba) if msix else 0)):
            if len(value) != want:
                raise load_error(section, prefix + name, f"{len(value)} bytes, this {self.name} has {want}")

    def load_pci(self, state: PciState, section: str, prefix: str = "") -> None:
        """Take a validated state: bytes stored directly (no guest-write side effects), then decoding, INTx
        routing and MSI-X routes brought in line with it."""
        self.check_pci(state, section, prefix)
        with self._lock:
            self.config.data[:] = state.config
            self._intx_level = state.intx_level
            if state.intx_level:
                self.config.set_bits(STATUS, 2, STATUS_INTERRUPT)
            else:
                self.config.clear_bits(STATUS, 2, STATUS_INTERRUPT)
            if self.msix is not None:
                self.msix.table[:] = state.msix_table
                self.msix.pba[:] = state.msix_pba
                self.msix.loaded()
        if self.bus is not None:
            self.bus.update_mappings()
            self.bus.reroute_intx()

    def state_class(self) -> type[PciState]:
        return PciState

    def save(self) -> PciState:
        return self.save_pci()

    def load(self, state: PciState) -> None:
        self.load_pci(state, self.idstr)

    # ---------------------------------------------------------------- reset
    def reset(self) -> None:
        """Device reset (QEMU's pci_do_device_reset): COMMAND, STATUS errors, Cache Line Size,
        Interrupt Line and BARs cleared, MSI-X reset, INTx deasserted. Subclasses extend and call super().
        Bytes 40h-FFh outside capabilities are left alone, as in QEMU. Not ``load(PciState())``: the
        identity registers, capabilities and read-only bits survive a reset, and PciState's defaults are zeros."""
        with self._lock:
            c = self.config
            c.clear_bits(COMMAND, 2, COMMAND_WMASK)
            c.clear_bits(STATUS, 2, STATUS_W1C_BITS)
            c.set_u8(CACHE_LINE_SIZE, 0)
            c.set_u8(INTERRUPT_LINE, 0)
            for spec in self.bars.values():
                c.set_u32(spec.offset, spec.flags)
                if spec.is_64:
                    c.set_u32(spec.offset + 4, 0)
            if self.msix is not None:
                c.clear_bits(self.msix.cap_offset + 2, 2, 0xC000)
                self.msix.reset()
            self.set_irq(False)

    def __repr__(self) -> str:
        where = f"{self.slot:02x}.{self.function}" if self.slot >= 0 else "unplugged"
        return f"<{type(self).__name__} {self.vendor_id:04x}:{self.device_id:04x} at {where}>"
