"""A virtio-pci (modern, VIRTIO 1.2 §4.1) driver that works only through qtest.

The libqos idea: the test *is* the driver. Nothing here trusts the device: capabilities are parsed from raw
configuration space, the common configuration is accessed with exactly the widths §4.1.4.3 prescribes,
the initialization sequence of §3.1.1 is a set of separate steps (so a test can stop after any of them),
and interrupts are made observable without an APIC: an MSI-X vector's message address points into guest
RAM, so a delivered interrupt is a 32-bit write the test can read back. Rings live in
`conformance.drivers.virtqueue`; this module owns the transport.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from conformance.drivers.pci import (
    CAP_ID_MSIX,
    CAP_ID_VENDOR,
    CMD_IO,
    CMD_MASTER,
    CMD_MEMORY,
    Bar,
    BarAllocator,
    PciFunction,
    assign_bars,
)

if TYPE_CHECKING:
    from conformance.drivers.qtest import QtestSession
    from conformance.drivers.virtqueue import Virtqueue

VIRTIO_VENDOR = 0x1AF4

# Device status bits (§2.1).
ACKNOWLEDGE, DRIVER, DRIVER_OK, FEATURES_OK = 1, 2, 4, 8
DEVICE_NEEDS_RESET, FAILED = 64, 128

# Reserved (transport/ring) feature bits (§6).
F_NOTIFY_ON_EMPTY, F_ANY_LAYOUT, F_INDIRECT_DESC, F_EVENT_IDX = 24, 27, 28, 29
F_VERSION_1, F_ACCESS_PLATFORM, F_RING_PACKED, F_IN_ORDER = 32, 33, 34, 35
F_ORDER_PLATFORM, F_SR_IOV, F_NOTIFICATION_DATA, F_NOTIF_CONFIG_DATA, F_RING_RESET = 36, 37, 38, 39, 40

# virtio_pci_cap.cfg_type (§4.1.4).
CAP_COMMON, CAP_NOTIFY, CAP_ISR, CAP_DEVICE, CAP_PCI_CFG, CAP_SHM, CAP_VENDOR_DATA = 1, 2, 3, 4, 5, 8, 9

# struct virtio_pci_common_cfg (§4.1.4.3): offset -> width in bytes.
DEVICE_FEATURE_SELECT, DEVICE_FEATURE = 0x00, 0x04
DRIVER_FEATURE_SELECT, DRIVER_FEATURE = 0x08, 0x0C
CONFIG_MSIX_VECTOR, NUM_QUEUES, DEVICE_STATUS, CONFIG_GENERATION = 0x10, 0x12, 0x14, 0x15
QUEUE_SELECT, QUEUE_SIZE, QUEUE_MSIX_VECTOR, QUEUE_ENABLE, QUEUE_NOTIFY_OFF = 0x16, 0x18, 0x1A, 0x1C, 0x1E
QUEUE_DESC, QUEUE_DRIVER, QUEUE_DEVICE = 0x20, 0x28, 0x30
QUEUE_NOTIFY_DATA, QUEUE_RESET = 0x38, 0x3A  # VIRTIO 1.2 additions (NOTIFICATION_DATA, RING_RESET)
COMMON_WIDTHS = {
    DEVICE_FEATURE_SELECT: 4, DEVICE_FEATURE: 4, DRIVER_FEATURE_SELECT: 4, DRIVER_FEATURE: 4,
    CONFIG_MSIX_VECTOR: 2, NUM_QUEUES: 2, DEVICE_STATUS: 1, CONFIG_GENERATION: 1,
    QUEUE_SELECT: 2, QUEUE_SIZE: 2, QUEUE_MSIX_VECTOR: 2, QUEUE_ENABLE: 2, QUEUE_NOTIFY_OFF: 2,
    QUEUE_DESC: 8, QUEUE_DRIVER: 8, QUEUE_DEVICE: 8, QUEUE_NOTIFY_DATA: 2, QUEUE_RESET: 2,
}  # fmt: skip
#: The common configuration up to queue_device inclusive: what every 1.0+ device has.
COMMON_CFG_MIN_LEN = 0x38
NO_VECTOR = 0xFFFF

# ISR status bits (§4.1.4.5).
ISR_QUEUE, ISR_CONFIG = 1, 2

# MSI-X capability (PCI 3.0 §6.8.2).
MSIX_ENABLE, MSIX_FUNCTION_MASK = 1 << 15, 1 << 14
MSIX_ENTRY_SIZE = 16

#: Virtio device IDs (§5) of the device types this suite drives.
DEVICE_ID = {"net": 1, "blk": 2, "console": 3, "rng": 4, "balloon": 5}
TRANSITIONAL_ID = {"net": 0x1000, "blk": 0x1001, "balloon": 0x1002, "console": 0x1003, "rng": 0x1005}

RESET_TIMEOUT = 5.0


class GuestAllocator:
    """A bump allocator over guest RAM: rings, buffers and MSI landing slots, never freed (machines are short-
    lived). The default window sits above the first MiB (real-mode area, BIOS) and inside `-M pc`'s default
    128 MiB of RAM."""

    def __init__(self, start: int = 0x0010_0000, end: int = 0x0700_0000) -> None:
        self.start, self.end, self.next = start, end, start

    def alloc(self, size: int, align: int = 16) -> int:
        addr = (self.next + align - 1) & ~(align - 1)
        if addr + size > self.end:
            raise MemoryError(f"guest allocator exhausted: {size:#x} bytes at {addr:#x} > {self.end:#x}")
        self.next = addr + max(size, 1)
        return addr


@dataclass(frozen=True)
class VirtioCap:
    """One virtio structure capability (struct virtio_pci_cap, §4.1.4) as found in configuration space."""

    pos: int  # offset of the capability in configuration space
    cfg_type: int
    bar: int
    id: int
    offset: int
    length: int
    cap_len: int
    extra: int = 0  # notify_off_multiplier for CAP_NOTIFY


@dataclass(frozen=True)
class MsixInfo:
    pos: int
    table_size: int
    table_bar: int
    table_offset: int
    pba_bar: int
    pba_offset: int


class VirtioPciDevice:
    """One virtio-pci function, driven step by step.

    Construct with `VirtioPciDevice(qtest, func)`, then `map()` (assign BARs, enable decoding and bus
    mastering). `initialize()` runs the whole §3.1.1 sequence; the steps are public for tests that stop early.
    """

    def __init__(self, qtest: QtestSession, func: PciFunction, alloc: GuestAllocator | None = None) -> None:
        self.qt = qtest
        self.func = func
        self.alloc = alloc or GuestAllocator()
        self.caps: list[VirtioCap] = self._parse_caps()
        self.bars: dict[int, Bar] = {}
        self.queues: dict[int, Virtqueue] = {}
        self.msix_slots: dict[int, int] = {}  # vector -> guest address its message writes to
        self.features = 0  # what the driver side negotiated

    # ---- discovery -------------------------------------------------------------------------------------

    def _parse_caps(self) -> list[VirtioCap]:
        found = []
        for cap in self.func.capabilities():
            if cap.cap_id != CAP_ID_VENDOR:
                continue
            p = cap.offset
            cap_len = self.func.read8(p + 2)
            extra = self.func.read32(p + 16) if self.func.read8(p + 3) == CAP_NOTIFY and cap_len >= 20 else 0
            found.append(
                VirtioCap(
                    pos=p,
                    cfg_type=self.func.read8(p + 3),
                    bar=self.func.read8(p + 4),
                    id=self.func.read8(p + 5),
                    offset=self.func.read32(p + 8),
                    length=self.func.read32(p + 12),
                    cap_len=cap_len,
                    extra=extra,
                )
            )
        return found

    def caps_of(self, cfg_type: int) -> list[VirtioCap]:
        return [c for c in self.caps if c.cfg_type == cfg_type]

    def cap(self, cfg_type: int) -> VirtioCap:
        """The first (the device's preferred, §4.1.4) structure of a type whose BAR is a real one."""
        for c in self.caps_of(cfg_type):
            if c.bar <= 5 or cfg_type == CAP_PCI_CFG:
                return c
        raise AssertionError(f"{self.func}: no virtio capability of cfg_type {cfg_type}: {self.caps}")

    def msix(self) -> MsixInfo | None:
        pos = self.func.find_capability(CAP_ID_MSIX)
        if pos is None:
            return None
        ctrl, table, pba = self.func.read16(pos + 2), self.func.read32(pos + 4), self.func.read32(pos + 8)
        return MsixInfo(pos, (ctrl & 0x7FF) + 1, table & 7, table & ~7, pba & 7, pba & ~7)

    def map(self, allocator: BarAllocator | None = None) -> VirtioPciDevice:
        """Assign every BAR and enable memory/io decoding plus bus mastering (the device DMAs into RAM)."""
        self.bars = assign_bars(self.func, allocator or BarAllocator())
        self.func.command = self.func.command | CMD_MASTER | CMD_MEMORY | (
            CMD_IO if any(b.is_io for b in self.bars.values()) else 0
        )
        return self

    def moved_to(self, qtest: QtestSession, func: PciFunction) -> VirtioPciDevice:
        """Drive the same function on a migration's destination (`func`: it, found on the destination's bus).

        Nothing is set up again: BAR addresses, negotiated features and queue addresses are device state and
        guest RAM, which the migration carried, so only the connection the driver talks through changes; a
        check that they did carry over is the caller's (`func.bars()` against `self.bars`, the rings' indices)."""
        self.qt, self.func = qtest, func
        for vq in self.queues.values():
            vq.qt = qtest
        return self

    def region(self, cfg_type: int) -> int:
        """Guest-physical address of a virtio structure: its BAR's address plus the capability's offset."""
        c = self.cap(cfg_type)
        return self.bars[c.bar].address + c.offset

    # ---- sized access to a structure -------------------------------------------------------------------

    def _read(self, addr: int, width: int) -> int:
        return {1: self.qt.readb, 2: self.qt.readw, 4: self.qt.readl, 8: self.qt.readq}[width](addr)

    def _write(self, addr: int, width: int, value: int) -> None:
        {1: self.qt.writeb, 2: self.qt.writew, 4: self.qt.writel, 8: self.qt.writeq}[width](addr, value)

    def common_read(self, off: int, width: int | None = None) -> int:
        """Read a common-config field; 64-bit fields as two 32-bit halves (low first), as §4.1.3.1 asks."""
        width = width or COMMON_WIDTHS[off]
        base = self.region(CAP_COMMON)
        if width == 8:
            return self._read(base + off, 4) | self._read(base + off + 4, 4) << 32
        return self._read(base + off, width)

    def common_write(self, off: int, value: int, width: int | None = None) -> None:
        width = width or COMMON_WIDTHS[off]
        base = self.region(CAP_COMMON)
        if width == 8:
            self._write(base + off, 4, value & 0xFFFFFFFF)
            self._write(base + off + 4, 4, value >> 32)
        else:
            self._write(base + off, width, value)

    def config_read(self, off: int, width: int) -> int:
        """Device-specific configuration (§4.1.4.6); 64-bit fields as two halves, like common_read."""
        base = self.region(CAP_DEVICE)
        if width == 8:
            return self._read(base + off, 4) | self._read(base + off + 4, 4) << 32
        return self._read(base + off, width)

    def config_write(self, off: int, width: int, value: int) -> None:
        self._write(self.region(CAP_DEVICE) + off, width, value)

    def config_bytes(self, off: int, length: int) -> bytes:
        return bytes(self.config_read(off + i, 1) for i in range(length))

    def isr(self) -> int:
        """Read (and so clear, §4.1.4.5) the ISR status byte."""
        return self.qt.readb(self.region(CAP_ISR))

    # ---- status and features ---------------------------------------------------------------------------

    @property
    def status(self) -> int:
        return self.common_read(DEVICE_STATUS)

    @status.setter
    def status(self, value: int) -> None:
        self.common_write(DEVICE_STATUS, value)

    def add_status(self, bits: int) -> int:
        """Set status bits on top of the current ones and return what the device shows afterwards."""
        self.status = self.status | bits
        return self.status

    def reset(self, timeout: float = RESET_TIMEOUT) -> None:
        """Write 0 to device_status and wait until the device reads back 0 (§4.1.4.3.2)."""
        self.status = 0
        deadline = time.monotonic() + timeout
        while self.status != 0:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.func}: device_status not 0 within {timeout}s of a reset")
        self.queues.clear()
        self.features = 0

    def device_feature_word(self, select: int) -> int:
        self.common_write(DEVICE_FEATURE_SELECT, select)
        return self.common_read(DEVICE_FEATURE)

    def device_features(self) -> int:
        """The 64 offered feature bits (windows 0 and 1)."""
        return self.device_feature_word(0) | self.device_feature_word(1) << 32

    def driver_feature_word(self, select: int) -> int:
        self.common_write(DRIVER_FEATURE_SELECT, select)
        return self.common_read(DRIVER_FEATURE)

    def write_driver_features(self, features: int) -> None:
        for select in (0, 1):
            self.common_write(DRIVER_FEATURE_SELECT, select)
            self.common_write(DRIVER_FEATURE, (features >> (32 * select)) & 0xFFFFFFFF)

    def driver_features(self) -> int:
        return self.driver_feature_word(0) | self.driver_feature_word(1) << 32

    # ---- the §3.1.1 sequence, one step at a time ---------------------------------------------------------

    def acknowledge(self) -> None:
        """Steps 1-3: reset, then ACKNOWLEDGE, then DRIVER."""
        self.reset()
        self.add_status(ACKNOWLEDGE)
        self.add_status(DRIVER)

    def negotiate(self, features: int) -> bool:
        """Steps 4-6: write the driver's features, set FEATURES_OK, and report whether it stuck."""
        self.write_driver_features(features)
        self.features = features
        return bool(self.add_status(FEATURES_OK) & FEATURES_OK)

    def driver_ok(self) -> None:
        """Step 8 (after queues are set up in step 7)."""
        self.add_status(DRIVER_OK)

    def initialize(self, want: int = 0, drop: int = 0, driver_ok: bool = True) -> int:
        """Reset and bring the device up with VERSION_1 plus `want` (as far as offered) minus `drop`.

        Returns the negotiated features. Queues are set up by the caller between this and `driver_ok()`
        when `driver_ok` is False.
        """
        self.acknowledge()
        features = (self.device_features() & (want | 1 << F_VERSION_1)) & ~drop
        if not self.negotiate(features):
            raise AssertionError(f"{self.func}: device refused FEATURES_OK for {features:#x}")
        if driver_ok:
            self.driver_ok()
        return features

    # ---- queues ----------------------------------------------------------------------------------------

    @property
    def num_queues(self) -> int:
        return self.common_read(NUM_QUEUES)

    def select_queue(self, index: int) -> None:
        self.common_write(QUEUE_SELECT, index)

    def queue_max_size(self, index: int) -> int:
        self.select_queue(index)
        return self.common_read(QUEUE_SIZE)

    def setup_queue(self, vq: Virtqueue, vector: int | None = None) -> Virtqueue:
        """Program size, ring addresses (and a MSI-X vector) of `vq` and enable it (§4.1.5.1.3)."""
        self.select_queue(vq.index)
        self.common_write(QUEUE_SIZE, vq.size)
        self.common_write(QUEUE_DESC, vq.desc_addr)
        self.common_write(QUEUE_DRIVER, vq.driver_addr)
        self.common_write(QUEUE_DEVICE, vq.device_addr)
        if vector is not None:
            self.common_write(QUEUE_MSIX_VECTOR, vector)
        self.common_write(QUEUE_ENABLE, 1)
        vq.notify_addr = self.notify_address(vq.index)
        vq.transport = self
        self.queues[vq.index] = vq
        return vq

    def notify_address(self, index: int) -> int:
        """cap.offset + queue_notify_off * notify_off_multiplier within the notify BAR (§4.1.4.4)."""
        self.select_queue(index)
        off = self.common_read(QUEUE_NOTIFY_OFF)
        return self.region(CAP_NOTIFY) + off * self.cap(CAP_NOTIFY).extra

    def notify(self, index: int) -> None:
        """An available buffer notification: the queue index, 16 bits, at the queue's notify address."""
        self.qt.writew(self.notify_address(index), index)

    # ---- MSI-X: interrupts as RAM writes --------------------------------------------------------------

    def msix_enable(self, vectors: int | None = None) -> list[int]:
        """Enable MSI-X and aim vectors at guest-RAM slots; returns the vector numbers set up."""
        info = self.msix()
        assert info is not None, f"{self.func}: no MSI-X capability"
        count = info.table_size if vectors is None else vectors
        for vector in range(count):
            slot = self.alloc.alloc(4, 4)
            self.qt.writel(slot, 0)
            self.msix_slots[vector] = slot
            self.msix_program(vector, slot, 0x4000 | vector, masked=False)
        ctrl = self.func.read16(info.pos + 2)
        self.func.write16(info.pos + 2, (ctrl | MSIX_ENABLE) & ~MSIX_FUNCTION_MASK)
        return list(range(count))

    def msix_disable(self) -> None:
        info = self.msix()
        assert info is not None
        self.func.write16(info.pos + 2, self.func.read16(info.pos + 2) & ~MSIX_ENABLE)

    def msix_program(self, vector: int, address: int, data: int, masked: bool = False) -> None:
        info = self.msix()
        assert info is not None
        entry = self.bars[info.table_bar].address + info.table_offset + vector * MSIX_ENTRY_SIZE
        self.qt.writel(entry, address & 0xFFFFFFFF)
        self.qt.writel(entry + 4, address >> 32)
        self.qt.writel(entry + 8, data)
        self.qt.writel(entry + 12, 1 if masked else 0)

    def msix_fired(self, vector: int, clear: bool = True) -> bool:
        """Whether the vector's message landed in its RAM slot since the last clear."""
        slot = self.msix_slots[vector]
        value = self.qt.readl(slot)
        if value and clear:
            self.qt.writel(slot, 0)
        if value not in (0, 0x4000 | vector):
            raise AssertionError(f"MSI-X vector {vector} wrote {value:#x}, programmed data was {0x4000 | vector:#x}")
        return bool(value)

    def wait_msix(self, vector: int, timeout: float = 2.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.msix_fired(vector):
                return True
            time.sleep(0.001)
        return False

    def set_config_vector(self, vector: int) -> int:
        """Write config_msix_vector and return what the device reads back (NO_VECTOR means refused)."""
        self.common_write(CONFIG_MSIX_VECTOR, vector)
        return self.common_read(CONFIG_MSIX_VECTOR)

    def set_queue_vector(self, index: int, vector: int) -> int:
        self.select_queue(index)
        self.common_write(QUEUE_MSIX_VECTOR, vector)
        return self.common_read(QUEUE_MSIX_VECTOR)

    # ---- VIRTIO_PCI_CAP_PCI_CFG window (§4.1.4.9) -----------------------------------------------------

    def pci_cfg_read(self, bar: int, offset: int, length: int) -> int:
        """Read `length` bytes of BAR `bar` at `offset` through configuration space only."""
        pos = self.cap(CAP_PCI_CFG).pos
        self.func.write8(pos + 4, bar)
        self.func.write32(pos + 8, offset)
        self.func.write32(pos + 12, length)
        word = self.func.read32(pos + 16)
        return word & ((1 << (8 * length)) - 1)

    def pci_cfg_write(self, bar: int, offset: int, length: int, value: int) -> None:
        pos = self.cap(CAP_PCI_CFG).pos
        self.func.write8(pos + 4, bar)
        self.func.write32(pos + 8, offset)
        self.func.write32(pos + 12, length)
        {1: self.func.write8, 2: self.func.write16, 4: self.func.write32}[length](pos + 16, value)


def find_virtio(functions: list[PciFunction], kind: str) -> PciFunction:
    """The first function of virtio device type `kind` (modern 0x1040+id or transitional ID)."""
    ids = (0x1040 + DEVICE_ID[kind], TRANSITIONAL_ID.get(kind, -1))
    for func in functions:
        ident = func.read32(0)
        if ident & 0xFFFF == VIRTIO_VENDOR and ident >> 16 in ids:
            return func
    raise AssertionError(f"virtio-{kind} not found on bus 0: {[str(f) for f in functions]}")
