"""The legacy virtio-pci I/O BAR of a transitional device (VIRTIO 1.2 §4.1.4.8, "Legacy Interfaces: A Note
on PCI Device Layout") and the legacy feature handshake.

BAR0 layout (little-endian on x86)::

    0x00 host features (32, RO)    0x04 guest features (32)    0x08 queue address PFN (32)
    0x0C queue size (16, RO)       0x0E queue select (16)      0x10 queue notify (16)
    0x12 device status (8)         0x13 ISR status (8, read clears)
    0x14 config MSI-X vector (16)  0x16 queue MSI-X vector (16)     -- only while MSI-X is enabled
    then the device-specific configuration (at 0x14, or at 0x18 while MSI-X is enabled)

The queue is placed by one page frame number: descriptors at PFN * 4096, the available ring right after
them, the used ring at the next 4096-byte boundary (§2.7.2 legacy layout). A legacy driver has no
FEATURES_OK step (§3.1.2 legacy): it writes its features and later sets DRIVER_OK.

Register behaviour follows QEMU 7.2 as measured over qtest: accesses are cut into aligned pieces of at most
4 bytes dispatched by their start offset (see :mod:`refvm.virtio.pci_common`); a piece that does not start
on a register reads all-ones and its write is dropped; host features add NOTIFY_ON_EMPTY, ANY_LAYOUT and
QEMU's BAD_FEATURE bit 30 to what the device offers (a driver that acks bit 30 gets no features); writing
PFN 0 or status 0 resets the device; status ACKNOWLEDGE|DRIVER turns on Bus Master Enable (for old Linux).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from refvm.virtio import features as F
from refvm.virtio import status as S
from refvm.virtio.device import VirtioDevice
from refvm.virtio.pci_common import QUEUE_MAX, split_access

if TYPE_CHECKING:
    from refvm.virtio.pci import VirtioPciFunction

__all__ = ["LegacyBar", "legacy_bar_size", "accept_legacy_features", "LEGACY_ALIGN", "BAD_FEATURE"]

log = logging.getLogger(__name__)

HOST_FEATURES = 0x00
GUEST_FEATURES = 0x04
QUEUE_PFN = 0x08
QUEUE_NUM = 0x0C
QUEUE_SEL = 0x0E
QUEUE_NOTIFY = 0x10
STATUS = 0x12
ISR = 0x13
MSI_CONFIG_VECTOR = 0x14
MSI_QUEUE_VECTOR = 0x16
#: Where device config starts without / with MSI-X enabled.
CONFIG_OFF = 0x14
CONFIG_OFF_MSIX = 0x18
#: §4.1.4.8: the queue address is in units of 4096 bytes, and the used ring is aligned to it.
PFN_SHIFT = 12
LEGACY_ALIGN = 4096
#: QEMU offers VIRTIO_F_BAD_FEATURE (bit 30) to legacy drivers; one that acks it "did not negotiate".
BAD_FEATURE = 30
LEGACY_ONLY_FEATURES = F.bit(F.VIRTIO_F_NOTIFY_ON_EMPTY) | F.bit(F.VIRTIO_F_ANY_LAYOUT) | F.bit(BAD_FEATURE)


def legacy_bar_size(config_len: int, msix_present: bool) -> int:
    """QEMU: the header (24 bytes with MSI-X, else 20) plus device config, rounded up to a power of 2."""
    size = (CONFIG_OFF_MSIX if msix_present else CONFIG_OFF) + config_len
    return 1 << (size - 1).bit_length()


def accept_legacy_features(dev: VirtioDevice, features: int) -> None:
    """Take ``features`` as negotiated without FEATURES_OK (§3.1.2 legacy initialisation).

    The virtio core only negotiates the modern way (FEATURES_OK requires VERSION_1), so this stands in for
    its negotiation step: it sets the accepted features, locks them and re-creates the queues for the ring
    format (always split: RING_PACKED is bit 34, beyond the legacy 32-bit window).
    """
    with dev.lock:
        accepted = features & dev.device_features & 0xFFFFFFFF
        dev.driver_features = accepted
        dev.negotiated_features = accepted
        dev._features_locked = True  # noqa: SLF001 -- the core has no public legacy hook yet
        dev._setup_queues()  # noqa: SLF001


class LegacyBar:
    """BAR0 of a transitional device: the bus device for the legacy register block."""

    def __init__(self, fn: VirtioPciFunction, size: int) -> None:
        self.fn = fn
        self.dev = fn.vdev
        self.size = size
        self.reset()

    def reset(self) -> None:
        self.queue_select = 0
        self.guest_features = 0
        self.negotiated = False

    @property
    def host_features(self) -> int:
        return (self.dev.device_feature_word(0) | LEGACY_ONLY_FEATURES) & 0xFFFFFFFF

    def config_offset(self) -> int:
        msix = self.fn.msix
        return CONFIG_OFF_MSIX if msix is not None and msix.enabled else CONFIG_OFF

    # ---------------------------------------------------------------- bus device
    def read(self, offset: int, size: int) -> int:
        if offset < 0 or size <= 0 or offset + size > self.size:
            return (1 << (8 * max(0, min(size, 8)))) - 1
        value = 0
        with self.dev.lock:
            for off, n, shift in split_access(offset, size):
                try:
                    piece = self._read(off, n)
                except Exception:
                    log.exception("%s: legacy read %#x/%d failed", self.fn.name, off, n)
                    piece = 0xFFFFFFFF
                value |= (piece & ((1 << (8 * n)) - 1)) << shift
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        if offset < 0 or size <= 0 or offset + size > self.size:
            return
        with self.dev.lock:
            for off, n, shift in split_access(offset, size):
                piece = (value >> shift) & ((1 << (8 * n)) - 1)
                try:
                    self._write(off, n, piece)
                except Exception:
                    log.exception("%s: legacy write %#x/%d=%#x failed", self.fn.name, off, n, piece)

    # ---------------------------------------------------------------- registers
    def _queue(self):  # -> Virtqueue | None
        queues = self.dev.queues
        sel = self.queue_select
        if sel < len(queues) and queues[sel].max_size:
            return queues[sel]
        return None

    def _read(self, offset: int, size: int) -> int:
        cfg = self.config_offset()
        if offset >= cfg:
            off = offset - cfg
            if off + size > len(self.dev.config):
                return 0xFFFFFFFF
            return self.dev.config_read(off, size)
        q = self._queue()
        if offset == HOST_FEATURES:
            return self.host_features
        if offset == GUEST_FEATURES:
            return self.guest_features
        if offset == QUEUE_PFN:
            return (q.desc_addr >> PFN_SHIFT) & 0xFFFFFFFF if q is not None else 0
        if offset == QUEUE_NUM:
            return q.size if q is not None else 0
        if offset == QUEUE_SEL:
            return self.queue_select
        if offset == STATUS:
            return self.dev.status
        if offset == ISR:
            return self.fn.read_isr()
        if offset == MSI_CONFIG_VECTOR:
            return self.dev.config_msix_vector
        if offset == MSI_QUEUE_VECTOR:
            return q.msix_vector if q is not None else 0xFFFF
        return 0xFFFFFFFF

    def _write(self, offset: int, size: int, value: int) -> None:
        cfg = self.config_offset()
        dev = self.dev
        if offset >= cfg:
            off = offset - cfg
            if off + size <= len(dev.config):
                dev.config_write(off, size, value)
            return
        if offset == GUEST_FEATURES:
            self._set_guest_features(value)
        elif offset == QUEUE_PFN:
            self._set_pfn(value)
        elif offset == QUEUE_SEL:
            if value < QUEUE_MAX:
                self.queue_select = value
        elif offset == QUEUE_NOTIFY:
            if value < QUEUE_MAX:
                dev.queue_notify(value)
        elif offset == STATUS:
            self._set_status(value & 0xFF)
        elif offset == MSI_CONFIG_VECTOR:
            dev.config_msix_vector = self.fn.checked_vector(value)
        elif offset == MSI_QUEUE_VECTOR:
            q = self._queue()
            if q is not None:
                q.msix_vector = self.fn.checked_vector(value)

    def _set_guest_features(self, value: int) -> None:
        if value & F.bit(BAD_FEATURE):
            value = 0  # QEMU substitutes the device's "bad features" (none for our devices)
        value &= self.host_features
        self.guest_features = value
        accept_legacy_features(self.dev, value)
        self.negotiated = True

    def _set_pfn(self, value: int) -> None:
        """§4.1.4.8: the queue lives at ``PFN << 12``; 0 resets the whole device (QEMU)."""
        if value == 0:
            self.fn.reset_virtio()
            return
        q = self._queue()
        if q is None:
            return
        base = value << PFN_SHIFT
        n = q.size
        avail = base + 16 * n
        used = (avail + 6 + 2 * n + LEGACY_ALIGN - 1) & ~(LEGACY_ALIGN - 1)
        q.desc_addr, q.driver_addr, q.device_addr = base, avail, used
        q.enabled = True

    def _set_status(self, value: int) -> None:
        if value & (S.DRIVER_OK | S.FEATURES_OK) and not self.negotiated:
            accept_legacy_features(self.dev, self.guest_features)
            self.negotiated = True
        self.fn.write_status(value)
        if value == S.ACKNOWLEDGE | S.DRIVER:
            self.fn.force_bus_master()
