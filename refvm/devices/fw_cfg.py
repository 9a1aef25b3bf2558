"""QEMU's firmware configuration device (fw_cfg) on the PC's I/O ports, as QEMU's docs/specs/fw_cfg.txt describes it.

Firmware and test libraries (SeaBIOS, OVMF, libqos) read the machine's configuration through it: a 16-bit
selector register at 0x510 picks an item, the 8-bit data register at 0x511 streams the item's bytes from
offset 0 (reads past the end give 0), and the DMA interface at 0x514 copies whole ranges to guest memory.
Items have QEMU's numbers; the files are listed in a directory (item 0x19) sorted by name, with selectors
from 0x20 in that order, as QEMU 7.2 gives them. Every guest-supplied address and length is bounds-checked:
a DMA transfer outside RAM sets the error bit instead of touching anything.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass

from refvm.memory import GuestMemory, GuestMemoryError
from refvm.migration.state import U16, U32, DeviceState, StateError, sfield

__all__ = ["FwCfg", "FwCfgDma", "FwCfgState", "FwCfgDmaState", "Key", "SELECTOR_PORT", "DATA_PORT", "DMA_PORT",
           "FILE_FIRST", "DMA_SIGNATURE"]

SELECTOR_PORT = 0x510
DATA_PORT = 0x511
DMA_PORT = 0x514
FILE_FIRST = 0x20
FILE_NAME_SIZE = 56
#: What a read of the DMA address register gives: lets a guest detect the DMA interface.
DMA_SIGNATURE = b"QEMU CFG"

ID_TRADITIONAL = 0x01
ID_DMA = 0x02

DMA_ERROR = 0x01
DMA_READ = 0x02
DMA_SKIP = 0x04
DMA_SELECT = 0x08
DMA_WRITE = 0x10


class Key:
    """QEMU's item numbers (the selector values)."""

    SIGNATURE = 0x00
    ID = 0x01
    UUID = 0x02
    RAM_SIZE = 0x03
    NOGRAPHIC = 0x04
    NB_CPUS = 0x05
    MACHINE_ID = 0x06
    BOOT_DEVICE = 0x0C
    NUMA = 0x0D
    BOOT_MENU = 0x0E
    MAX_CPUS = 0x0F
    FILE_DIR = 0x19
    ARCH_LOCAL = 0x8000
    ACPI_TABLES = 0x8000
    SMBIOS_ENTRIES = 0x8001
    IRQ0_OVERRIDE = 0x8002
    E820_TABLE = 0x8003


@dataclass
class _File:
    name: str
    data: bytes


@dataclass
class FwCfgState(DeviceState):
    """The selected item and how far into it the data port has read (QEMU's "fw_cfg": cur_entry, cur_offset);
    the items themselves are the destination's own, built from its command line."""

    VMSD_NAME = "fw_cfg"

    selector: int = sfield(U16, 0)
    offset: int = sfield(U32, 0)


@dataclass
class FwCfgDmaState(DeviceState):
    """The high half of the DMA address, written by a guest that has not written the low half yet."""

    VMSD_NAME = "fw_cfg-dma"

    high: int = sfield(U32, 0)


class FwCfg:
    """The item store plus the selector/data port pair (registered at 0x510, two bytes)."""

    def __init__(self, memory: GuestMemory | None = None) -> None:
        self.memory = memory
        self._items: dict[int, bytes] = {}
        self._files: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self.selector = 0
        self.offset = 0
        self.add_bytes(Key.SIGNATURE, b"QEMU")
        self.add_bytes(Key.ID, struct.pack("<I", ID_TRADITIONAL | (ID_DMA if memory is not None else 0)))

    # ---- building (machine side) ----------------------------------------------------------------------

    def add_bytes(self, key: int, data: bytes) -> None:
        self._items[key] = bytes(data)

    def add_u16(self, key: int, value: int) -> None:
        self.add_bytes(key, struct.pack("<H", value & 0xFFFF))

    def add_u32(self, key: int, value: int) -> None:
        self.add_bytes(key, struct.pack("<I", value & 0xFFFF_FFFF))

    def add_u64(self, key: int, value: int) -> None:
        self.add_bytes(key, struct.pack("<Q", value & (1 << 64) - 1))

    def add_file(self, name: str, data: bytes) -> None:
        """Add a named blob; selectors are given out in name order when the directory is built."""
        if len(name.encode()) >= FILE_NAME_SIZE:
            raise ValueError(f"fw_cfg file name '{name}' is longer than {FILE_NAME_SIZE - 1} bytes")
        self._files[name] = bytes(data)

    def file_selectors(self) -> dict[str, int]:
        return {name: FILE_FIRST + i for i, name in enumerate(sorted(self._files))}

    def _directory(self) -> bytes:
        names = sorted(self._files)
        out = bytearray(struct.pack(">I", len(names)))
        for i, name in enumerate(names):
            out += struct.pack(">IHH", len(self._files[name]), FILE_FIRST + i, 0)
            out += name.encode().ljust(FILE_NAME_SIZE, b"\0")
        return bytes(out)

    def item(self, key: int) -> bytes:
        """The bytes item ``key`` holds (empty for an unknown key, which reads as zeros)."""
        key &= 0xBFFF  # the write-channel bit (0x4000) selects the same item
        if key == Key.FILE_DIR:
            return self._directory()
        if key >= FILE_FIRST and key < Key.ARCH_LOCAL:
            names = sorted(self._files)
            index = key - FILE_FIRST
            return self._files[names[index]] if index < len(names) else b""
        return self._items.get(key, b"")

    # ---- the port pair ----------------------------------------------------------------------------------

    def select(self, key: int) -> None:
        with self._lock:
            self.selector = key & 0xFFFF
            self.offset = 0

    def read_data(self, count: int) -> bytes:
        """``count`` bytes from the current offset of the selected item; past its end, zeros."""
        with self._lock:
            data = self.item(self.selector)
            chunk = data[self.offset : self.offset + count]
            self.offset = min(self.offset + count, max(len(data), self.offset))
            return chunk.ljust(count, b"\0")

    def skip(self, count: int) -> None:
        with self._lock:
            self.offset = min(self.offset + count, len(self.item(self.selector)))

    def read(self, offset: int, size: int) -> int:
        # QEMU 7.2, observed: a byte read at either port is a data read (the selector is write only and
        # shares the decoder); a wider read returns 0 and leaves the offset alone.
        if size == 1:
            return self.read_data(1)[0]
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == 0 and size >= 2:
            self.select(value & 0xFFFF)
        # Writes to the data register are ignored (QEMU >= 2.4: the write channel is DMA only).

    def reset(self) -> None:
        """Item 0 (the signature) selected, at offset 0: the power-on state, which is ``FwCfgState()``."""
        self.load(FwCfgState())

    def save(self) -> FwCfgState:
        with self._lock:
            return FwCfgState(self.selector, self.offset)

    def load(self, state: FwCfgState) -> None:
        with self._lock:
            length = len(self.item(state.selector))
            if state.offset > length:  # the offset never passes the end of the item (read_data, skip)
                raise StateError(f"migration stream: section 'fw_cfg': field 'offset': {state.offset} is past the "
                                 f"end of item {state.selector:#x} ({length} bytes here)")
            self.selector, self.offset = state.selector, state.offset


class FwCfgDma:
    """The DMA address register at 0x514 (8 bytes, big endian): writing the low half starts a transfer.

    The guest writes the address of a FWCfgDmaAccess {be32 control; be32 length; be64 address}; the device
    runs it and writes control back (0 when done, the error bit on failure). ``on_access`` lets the machine
    count transfers (tests); it is not needed otherwise.
    """

    def __init__(self, fw_cfg: FwCfg, memory: GuestMemory, on_access: Callable[[int], None] | None = None) -> None:
        self.fw_cfg = fw_cfg
        self.memory = memory
        self.high = 0
        self.on_access = on_access

    def read(self, offset: int, size: int) -> int:
        return int.from_bytes(DMA_SIGNATURE[offset : offset + size].ljust(size, b"\0"), "little")

    def write(self, offset: int, size: int, value: int) -> None:
        raw = value.to_bytes(size, "little")  # the bytes as the guest put them on the bus
        if offset == 0 and size == 8:
            self._run(int.from_bytes(raw, "big"))
        elif offset == 0 and size == 4:
            self.high = int.from_bytes(raw, "big")
        elif offset == 4 and size == 4:
            address = (self.high << 32) | int.from_bytes(raw, "big")
            self.high = 0
            self._run(address)

    def _run(self, desc: int) -> None:
        if self.on_access is not None:
            self.on_access(desc)
        try:
            control, length, address = struct.unpack(">IIQ", self.memory.read(desc, 16))
        except GuestMemoryError:
            return  # no descriptor to report an error in
        status = self._transfer(control, length, address)
        try:
            self.memory.write(desc, struct.pack(">I", status))
        except GuestMemoryError:
            pass

    def _transfer(self, control: int, length: int, address: int) -> int:
        """Run one descriptor; the new control value (0 on success, DMA_ERROR otherwise)."""
        if control & DMA_SELECT:
            self.fw_cfg.select(control >> 16)
        if control & DMA_WRITE:
            # Like QEMU 7.2 for read-only items: the write fails, the offset still moves.
            self.fw_cfg.skip(length)
            return DMA_ERROR
        if control & DMA_READ:
            if not self.memory.is_ram(address, length) and length:
                return DMA_ERROR
            if length:
                self.memory.write(address, self.fw_cfg.read_data(length))
            return 0
        if control & DMA_SKIP:
            self.fw_cfg.skip(length)
        return 0

    def reset(self) -> None:
        """No high half pending: ``FwCfgDmaState()``."""
        self.load(FwCfgDmaState())

    def save(self) -> FwCfgDmaState:
        return FwCfgDmaState(self.high)

    def load(self, state: FwCfgDmaState) -> None:
        self.high = state.high
