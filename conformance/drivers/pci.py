"""PCI configuration access (mechanism #1 at 0xCF8/0xCFC) and a small enumerator, over a qtest session.

This is what a firmware or OS does at boot, written as a test driver: decode headers, size BARs, walk the
capability list, assign addresses and turn on decoding. It is deliberately strict about the spec (loops,
misaligned pointers, impossible BAR encodings raise) so that tests see violations instead of papering
over them; section numbers are those of the PCI Local Bus Specification 3.0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

CONFIG_ADDRESS = 0xCF8
CONFIG_DATA = 0xCFC
ENABLE_BIT = 1 << 31

# Type-0 header offsets (§6.1).
VENDOR_ID, DEVICE_ID, COMMAND, STATUS = 0x00, 0x02, 0x04, 0x06
REVISION_ID, CLASS_CODE, CACHE_LINE_SIZE, HEADER_TYPE, BIST = 0x08, 0x09, 0x0C, 0x0E, 0x0F
BAR0, CARDBUS_CIS, SUBSYSTEM_VENDOR_ID, SUBSYSTEM_ID, EXPANSION_ROM = 0x10, 0x28, 0x2C, 0x2E, 0x30
CAPABILITIES_PTR, INTERRUPT_LINE, INTERRUPT_PIN = 0x34, 0x3C, 0x3D

# COMMAND bits (§6.2.2) and STATUS bits (§6.2.3).
CMD_IO, CMD_MEMORY, CMD_MASTER, CMD_INTX_DISABLE = 1 << 0, 1 << 1, 1 << 2, 1 << 10
STATUS_INTERRUPT, STATUS_CAP_LIST = 1 << 3, 1 << 4
#: Status bits that software clears by writing 1 (§6.2.3): data parity, sig/recv target abort, recv master
#: abort, signalled system error, detected parity error.
STATUS_W1C = (1 << 8) | (1 << 11) | (1 << 12) | (1 << 13) | (1 << 14) | (1 << 15)

CAP_ID_MSI, CAP_ID_VENDOR, CAP_ID_MSIX = 0x05, 0x09, 0x11

#: At most (256 - 64) / 4 capabilities fit in the device-specific part of config space; a longer walk loops.
MAX_CAPABILITIES = 48


class PortIo(Protocol):
    """The part of a qtest session the config mechanism needs."""

    def outb(self, port: int, value: int) -> None: ...
    def outw(self, port: int, value: int) -> None: ...
    def outl(self, port: int, value: int) -> None: ...
    def inb(self, port: int) -> int: ...
    def inw(self, port: int) -> int: ...
    def inl(self, port: int) -> int: ...


class CapabilityListError(AssertionError):
    """The capability list breaks a rule of §6.7 (range, alignment, termination)."""


def config_address(bus: int, dev: int, fn: int, offset: int) -> int:
    """The CONFIG_ADDRESS dword of §3.2.2.3.2: enable bit, bus, device, function, dword register number."""
    if not (0 <= bus < 256 and 0 <= dev < 32 and 0 <= fn < 8 and 0 <= offset < 256):
        raise ValueError(f"config address out of range: {bus:02x}:{dev:02x}.{fn} +{offset:#x}")
    return ENABLE_BIT | bus << 16 | dev << 11 | fn << 8 | (offset & 0xFC)


class ConfigMechanism1:
    """Configuration reads/writes through 0xCF8/0xCFC; sub-dword accesses go to 0xCFC + (offset & 3)."""

    def __init__(self, io: PortIo) -> None:
        self.io = io

    def _select(self, bus: int, dev: int, fn: int, offset: int, width: int) -> int:
        if width not in (1, 2, 4) or (offset & 3) + width > 4:
            raise ValueError(f"config access of {width} bytes at {offset:#x} crosses a dword")
        self.io.outl(CONFIG_ADDRESS, config_address(bus, dev, fn, offset))
        return CONFIG_DATA + (offset & 3)

    def read(self, bus: int, dev: int, fn: int, offset: int, width: int) -> int:
        port = self._select(bus, dev, fn, offset, width)
        return {1: self.io.inb, 2: self.io.inw, 4: self.io.inl}[width](port)

    def write(self, bus: int, dev: int, fn: int, offset: int, width: int, value: int) -> None:
        port = self._select(bus, dev, fn, offset, width)
        {1: self.io.outb, 2: self.io.outw, 4: self.io.outl}[width](port, value)


@dataclass(frozen=True)
class Bar:
    """One decoded Base Address Register (§6.2.5.1). A 64-bit BAR occupies `index` and `index + 1`."""

    index: int
    kind: str  # "io" | "mem32" | "mem64"
    prefetchable: bool
    size: int
    address: int
    raw_low_bits: int  # the read-only encoding bits: bit 0 for io, bits 3:0 for memory

    @property
    def offset(self) -> int:
        return BAR0 + 4 * self.index

    @property
    def slots(self) -> int:
        return 2 if self.kind == "mem64" else 1

    @property
    def is_io(self) -> bool:
        return self.kind == "io"


@dataclass(frozen=True)
class Capability:
    offset: int
    cap_id: int


@dataclass(frozen=True)
class Header:
    vendor_id: int
    device_id: int
    revision: int
    class_code: int  # 24 bits: base class, subclass, programming interface
    header_type: int
    subsystem_vendor_id: int
    subsystem_id: int
    interrupt_pin: int

    @property
    def base_class(self) -> int:
        return self.class_code >> 16

    @property
    def subclass(self) -> int:
        return (self.class_code >> 8) & 0xFF

    @property
    def layout(self) -> int:
        """Header layout (bits 6:0 of Header Type): 0 for devices, 1 for PCI-to-PCI bridges."""
        return self.header_type & 0x7F

    @property
    def multifunction(self) -> bool:
        return bool(self.header_type & 0x80)


@dataclass
class PciFunction:
    """One function's configuration space."""

    cfg: ConfigMechanism1
    bus: int
    dev: int
    fn: int
    _bars: list[Bar] | None = field(default=None, repr=False)

    def __str__(self) -> str:
        return f"{self.bus:02x}:{self.dev:02x}.{self.fn}"

    # ---- raw access ------------------------------------------------------------------------------------

    def read8(self, offset: int) -> int:
        return self.cfg.read(self.bus, self.dev, self.fn, offset, 1)

    def read16(self, offset: int) -> int:
        return self.cfg.read(self.bus, self.dev, self.fn, offset, 2)

    def read32(self, offset: int) -> int:
        return self.cfg.read(self.bus, self.dev, self.fn, offset, 4)

    def write8(self, offset: int, value: int) -> None:
        self.cfg.write(self.bus, self.dev, self.fn, offset, 1, value)

    def write16(self, offset: int, value: int) -> None:
        self.cfg.write(self.bus, self.dev, self.fn, offset, 2, value)

    def write32(self, offset: int, value: int) -> None:
        self.cfg.write(self.bus, self.dev, self.fn, offset, 4, value)

    # ---- header ----------------------------------------------------------------------------------------

    @property
    def exists(self) -> bool:
        """A read of an absent function ends in master abort and returns all ones (§6.1)."""
        return self.read16(VENDOR_ID) != 0xFFFF

    def header(self) -> Header:
        ident = self.read32(VENDOR_ID)
        rev_class = self.read32(REVISION_ID)
        subsys = self.read32(SUBSYSTEM_VENDOR_ID)
        return Header(
            vendor_id=ident & 0xFFFF,
            device_id=ident >> 16,
            revision=rev_class & 0xFF,
            class_code=rev_class >> 8,
            header_type=self.read8(HEADER_TYPE),
            subsystem_vendor_id=subsys & 0xFFFF,
            subsystem_id=subsys >> 16,
            interrupt_pin=self.read8(INTERRUPT_PIN),
        )

    @property
    def command(self) -> int:
        return self.read16(COMMAND)

    @command.setter
    def command(self, value: int) -> None:
        self.write16(COMMAND, value)

    @property
    def status(self) -> int:
        return self.read16(STATUS)

    # ---- BARs ------------------------------------------------------------------------------------------

    def size_bar(self, index: int) -> Bar | None:
        """Size one BAR by writing all ones and reading back (§6.2.5.1), then restore it.

        Decoding is switched off meanwhile, as the spec advises, so the transient all-ones address never
        decodes. Returns None for an unimplemented BAR (reads back zero).
        """
        if not 0 <= index < 6:
            raise ValueError(f"type-0 headers have BARs 0..5, not {index}")
        off = BAR0 + 4 * index
        saved_cmd = self.command
        self.command = saved_cmd & ~(CMD_IO | CMD_MEMORY)
        try:
            low = self.read32(off)
            self.write32(off, 0xFFFFFFFF)
            mask = self.read32(off)
            self.write32(off, low)
            if mask == 0:
                return None
            if low & 1:
                # I/O BAR: bit 0 set, bit 1 reserved; the upper 16 bits may be hardwired to zero.
                probe = mask & 0xFFFFFFFC
                if probe & 0xFFFF0000 == 0:
                    probe |= 0xFFFF0000
                size = (~probe & 0xFFFFFFFF) + 1
                return Bar(index, "io", False, size, low & 0xFFFFFFFC, low & 0x3)
            mem_type = (low >> 1) & 0x3
            prefetch = bool(low & 0x8)
            if mem_type == 0b10:
                if index == 5:
                    raise ValueError(f"{self}: 64-bit BAR in slot 5 has no upper half")
                hi_off = off + 4
                high = self.read32(hi_off)
                self.write32(hi_off, 0xFFFFFFFF)
                mask_hi = self.read32(hi_off)
                self.write32(hi_off, high)
                probe64 = (mask_hi << 32) | (mask & 0xFFFFFFF0)
                size = (~probe64 & 0xFFFFFFFFFFFFFFFF) + 1
                return Bar(index, "mem64", prefetch, size, (high << 32) | (low & 0xFFFFFFF0), low & 0xF)
            if mem_type != 0b00:
                raise ValueError(f"{self}: BAR{index} has reserved memory type {mem_type:#b} ({low:#010x})")
            size = (~(mask & 0xFFFFFFF0) & 0xFFFFFFFF) + 1
            return Bar(index, "mem32", prefetch, size, low & 0xFFFFFFF0, low & 0xF)
        finally:
            self.command = saved_cmd

    def bars(self, refresh: bool = False) -> list[Bar]:
        """All implemented BARs; the upper half of a 64-bit BAR is consumed, not reported separately."""
        if self._bars is None or refresh:
            found: list[Bar] = []
            index = 0
            while index < 6:
                bar = self.size_bar(index)
                if bar is None:
                    index += 1
                    continue
                found.append(bar)
                index += bar.slots
            self._bars = found
        return list(self._bars)

    def bar(self, index: int) -> Bar | None:
        """The BAR starting at slot `index`, with its current address."""
        for bar in self.bars():
            if bar.index == index:
                return self.size_bar(index)
        return None

    def set_bar_address(self, bar: Bar, address: int) -> None:
        if address & (bar.size - 1):
            raise ValueError(f"{self}: BAR{bar.index} address {address:#x} not aligned to {bar.size:#x}")
        self.write32(bar.offset, address & 0xFFFFFFFF)
        if bar.kind == "mem64":
            self.write32(bar.offset + 4, address >> 32)

    # ---- capabilities ----------------------------------------------------------------------------------

    def capabilities(self) -> list[Capability]:
        """Walk the capability list (§6.7), raising CapabilityListError on any broken rule."""
        if not self.status & STATUS_CAP_LIST:
            return []
        caps: list[Capability] = []
        seen: set[int] = set()
        ptr = self.read8(CAPABILITIES_PTR)
        where = "Capabilities Pointer"
        while ptr != 0:
            if ptr & 3:
                raise CapabilityListError(f"{self}: {where} {ptr:#x} is not dword aligned")
            if ptr < 0x40:
                raise CapabilityListError(f"{self}: {where} {ptr:#x} points into the predefined header")
            if ptr in seen:
                raise CapabilityListError(f"{self}: {where} {ptr:#x} loops back to an earlier capability")
            if len(caps) >= MAX_CAPABILITIES:
                raise CapabilityListError(f"{self}: more than {MAX_CAPABILITIES} capabilities")
            seen.add(ptr)
            word = self.read16(ptr)
            caps.append(Capability(ptr, word & 0xFF))
            where = f"next pointer of capability {word & 0xFF:#04x} at {ptr:#x}"
            ptr = word >> 8
        return caps

    def find_capability(self, cap_id: int) -> int | None:
        for cap in self.capabilities():
            if cap.cap_id == cap_id:
                return cap.offset
        return None


class BarAllocator:
    """Hands out naturally aligned addresses from three windows, like firmware does before the OS runs.

    The defaults suit QEMU's `pc` machine with its default 128 MiB of RAM: I/O from 0xC000, 32-bit memory
    from 0xE0000000 (below the IOAPIC at 0xFEC00000) and 64-bit memory from 32 GiB.
    """

    def __init__(self, io: int = 0xC000, mem32: int = 0xE0000000, mem64: int = 0x8_0000_0000) -> None:
        self.next = {"io": io, "mem32": mem32, "mem64": mem64}

    def allocate(self, bar: Bar) -> int:
        window = bar.kind
        align = max(bar.size, 4 if bar.is_io else 16)
        addr = (self.next[window] + align - 1) & ~(align - 1)
        self.next[window] = addr + bar.size
        return addr


def assign_bars(func: PciFunction, allocator: BarAllocator, enable: bool = True) -> dict[int, Bar]:
    """Program every BAR of `func` and (with `enable`) turn on I/O and memory decoding in COMMAND.

    Returns the BARs with their new addresses, keyed by slot index.
    """
    assigned: dict[int, Bar] = {}
    cmd = func.command
    func.command = cmd & ~(CMD_IO | CMD_MEMORY)
    for bar in func.bars():
        addr = allocator.allocate(bar)
        func.set_bar_address(bar, addr)
        assigned[bar.index] = Bar(bar.index, bar.kind, bar.prefetchable, bar.size, addr, bar.raw_low_bits)
    if enable:
        if any(b.is_io for b in assigned.values()):
            cmd |= CMD_IO
        if any(not b.is_io for b in assigned.values()):
            cmd |= CMD_MEMORY
    func.command = cmd
    return assigned


def enumerate_bus(cfg: ConfigMechanism1, bus: int = 0) -> list[PciFunction]:
    """Every function present on `bus`; functions 1-7 are probed only where function 0 is multi-function."""
    found: list[PciFunction] = []
    for dev in range(32):
        fn0 = PciFunction(cfg, bus, dev, 0)
        if not fn0.exists:
            continue
        found.append(fn0)
        if fn0.read8(HEADER_TYPE) & 0x80:
            for fn in range(1, 8):
                func = PciFunction(cfg, bus, dev, fn)
                if func.exists:
                    found.append(func)
    return found
