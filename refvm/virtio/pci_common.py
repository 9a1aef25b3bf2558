"""The modern virtio-pci memory BAR (VIRTIO 1.2 §4.1.4): common configuration, ISR, device config, notify.

QEMU 7.2 puts the four structures in one 16 KiB 64-bit prefetchable BAR (index 4), one page each::

    0x0000 COMMON  (§4.1.4.3)   0x1000 ISR (§4.1.4.5)   0x2000 DEVICE (§4.1.4.6)   0x3000 NOTIFY (§4.1.4.4)

How an access is carried out follows QEMU's memory core, because that is what a driver observes:

* an access is cut into naturally aligned pieces of at most 4 bytes (an 8-byte read of ``queue_desc`` is
  two 4-byte reads; a 4-byte write at 0x16 is two 2-byte writes: ``queue_select`` then ``queue_size``);
* each piece is dispatched by its *starting* offset: a piece that starts on a field reaches that field
  whatever its width (the value is truncated to the piece), a piece that starts inside a field or on no
  field reads 0 and its write is dropped (§4.1.4.3.2 says the driver MUST use the field's width; the
  device only has to survive other widths).

Everything here is guest-controlled (offsets, widths, values, queue_select); nothing raises.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from refvm.virtio import features as F
from refvm.virtio.queue import NO_VECTOR

if TYPE_CHECKING:
    from refvm.virtio.pci import VirtioPciFunction

__all__ = [
    "ModernBar", "QueueRegs", "split_access", "COMMON_OFFSET", "ISR_OFFSET", "DEVICE_OFFSET", "NOTIFY_OFFSET",
    "REGION_SIZE", "MODERN_BAR_SIZE", "NOTIFY_OFF_MULTIPLIER", "QUEUE_MAX",
]  # fmt: skip

log = logging.getLogger(__name__)

COMMON_OFFSET = 0x0000
ISR_OFFSET = 0x1000
DEVICE_OFFSET = 0x2000
NOTIFY_OFFSET = 0x3000
REGION_SIZE = 0x1000
MODERN_BAR_SIZE = 0x4000
#: §4.1.4.4: queue N's notification address is cap.offset + queue_notify_off * multiplier; QEMU uses 4.
NOTIFY_OFF_MULTIPLIER = 4
#: QEMU's VIRTIO_QUEUE_MAX: queue_select / notifications beyond it are ignored.
QUEUE_MAX = 1024

# §4.1.4.3 struct virtio_pci_common_cfg: offset -> (name, width).
DEVICE_FEATURE_SELECT = 0x00
DEVICE_FEATURE = 0x04
DRIVER_FEATURE_SELECT = 0x08
DRIVER_FEATURE = 0x0C
CONFIG_MSIX_VECTOR = 0x10
NUM_QUEUES = 0x12
DEVICE_STATUS = 0x14
CONFIG_GENERATION = 0x15
QUEUE_SELECT = 0x16
QUEUE_SIZE = 0x18
QUEUE_MSIX_VECTOR = 0x1A
QUEUE_ENABLE = 0x1C
QUEUE_NOTIFY_OFF = 0x1E
QUEUE_DESC_LO = 0x20
QUEUE_DESC_HI = 0x24
QUEUE_DRIVER_LO = 0x28
QUEUE_DRIVER_HI = 0x2C
QUEUE_DEVICE_LO = 0x30
QUEUE_DEVICE_HI = 0x34
QUEUE_NOTIFY_DATA = 0x38
#: §4.1.4.3 le16 queue_reset (VIRTIO 1.2, exists when VIRTIO_F_RING_RESET is negotiated).
QUEUE_RESET = 0x3A
#: Address fields: offset -> (attribute of QueueRegs, high half?)
_ADDR_FIELDS = {
    QUEUE_DESC_LO: ("desc", False), QUEUE_DESC_HI: ("desc", True),
    QUEUE_DRIVER_LO: ("driver", False), QUEUE_DRIVER_HI: ("driver", True),
    QUEUE_DEVICE_LO: ("device", False), QUEUE_DEVICE_HI: ("device", True),
}  # fmt: skip
_U32 = 0xFFFFFFFF


def _mask(size: int) -> int:
    return (1 << (8 * size)) - 1


def split_access(offset: int, size: int, max_piece: int = 4) -> Iterator[tuple[int, int, int]]:
    """QEMU's cutting of an access into naturally aligned pieces: yields (offset, size, bit shift)."""
    done = 0
    while done < size:
        off = offset + done
        n = min(size - done, max_piece)
        if off & (n - 1) or n & (n - 1):
            n = min(1 << (n.bit_length() - 1), off & -off if off else n)
        yield off, n, 8 * done
        done += n


@dataclass
class QueueRegs:
    """What the driver wrote for one queue through the common configuration (QEMU's VirtIOPCIQueue).

    The three area addresses only reach the virtqueue when the driver writes 1 to ``queue_enable``
    (§4.1.4.3.2: the driver configures, then enables); until then they are just read back.
    """

    desc: int = 0
    driver: int = 0
    device: int = 0
    enabled: bool = False
    msix_vector: int = NO_VECTOR  # only used for queues the device does not have


class ModernBar:
    """BAR4: the bus device for the four modern structures (see the module docstring)."""

    def __init__(self, fn: VirtioPciFunction) -> None:
        self.fn = fn
        self.dev = fn.vdev
        self.reset()

    def reset(self) -> None:
        """Transport state back to power-on (QEMU's virtio_pci_reset; selectors are reset too, as measured)."""
        self.device_feature_select = 0
        self.driver_feature_select = 0
        self.driver_feature_words = [0, 0]
        self.queue_select = 0
        self.queue_regs: dict[int, QueueRegs] = {}

    # ---------------------------------------------------------------- bus device
    def read(self, offset: int, size: int) -> int:
        if offset < 0 or size <= 0 or offset + size > MODERN_BAR_SIZE:
            return _mask(max(0, min(size, 8)))
        value = 0
        with self.dev.lock:
            for off, n, shift in split_access(offset, size):
                value |= (self.read_piece(off, n) & _mask(n)) << shift
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        if offset < 0 or size <= 0 or offset + size > MODERN_BAR_SIZE:
            return
        with self.dev.lock:
            for off, n, shift in split_access(offset, size):
                self.write_piece(off, n, (value >> shift) & _mask(n))

    def read_piece(self, offset: int, size: int) -> int:
        """One aligned piece of at most 4 bytes inside the BAR (also the PCI_CFG window's entry point)."""
        try:
            if offset < ISR_OFFSET:
                return self._common_read(offset)
            if offset < DEVICE_OFFSET:
                return self._isr_read()
            if offset < NOTIFY_OFFSET:
                return self._device_read(offset - DEVICE_OFFSET, size)
            return 0  # §4.1.4.4: the notification area is write-only; QEMU reads 0
        except Exception:  # a model bug must not reach the vCPU thread
            log.exception("%s: BAR4 read %#x/%d failed", self.fn.name, offset, size)
            return 0

    def write_piece(self, offset: int, size: int, value: int) -> None:
        try:
            if offset < ISR_OFFSET:
                self._common_write(offset, value)
            elif offset < DEVICE_OFFSET:
                pass  # §4.1.4.5: ISR status is read-only
            elif offset < NOTIFY_OFFSET:
                self._device_write(offset - DEVICE_OFFSET, size, value)
            else:
                self._notify(offset - NOTIFY_OFFSET)
        except Exception:
            log.exception("%s: BAR4 write %#x/%d=%#x failed", self.fn.name, offset, size, value)

    # ---------------------------------------------------------------- §4.1.4.3 common configuration
    def _regs(self, index: int) -> QueueRegs:
        regs = self.queue_regs.get(index)
        if regs is None:
            regs = self.queue_regs[index] = QueueRegs()
        return regs

    def _queue(self, index: int):  # -> Virtqueue | None
        queues = self.dev.queues
        if 0 <= index < len(queues) and queues[index].max_size:
            return queues[index]
        return None

    def num_queues(self) -> int:
        """QEMU: one past the highest queue that exists (queues of size 0 do not)."""
        sizes = self.dev.queue_max_sizes
        return max((i + 1 for i, n in enumerate(sizes) if n), default=0)

    def _common_read(self, offset: int) -> int:
        dev = self.dev
        sel = self.queue_select
        q = self._queue(sel)
        if offset == DEVICE_FEATURE_SELECT:
            return self.device_feature_select
        if offset == DEVICE_FEATURE:
            return dev.device_feature_word(self.device_feature_select) if self.device_feature_select <= 1 else 0
        if offset == DRIVER_FEATURE_SELECT:
            return self.driver_feature_select
        if offset == DRIVER_FEATURE:
            sel_f = self.driver_feature_select
            return self.driver_feature_words[sel_f] if sel_f < len(self.driver_feature_words) else 0
        if offset == CONFIG_MSIX_VECTOR:
            return dev.config_msix_vector
        if offset == NUM_QUEUES:
            return self.num_queues()
        if offset == DEVICE_STATUS:
            return dev.status
        if offset == CONFIG_GENERATION:
            return dev.config_generation
        if offset == QUEUE_SELECT:
            return sel
        if offset == QUEUE_SIZE:
            return q.size if q is not None else 0
        if offset == QUEUE_MSIX_VECTOR:
            return q.msix_vector if q is not None else self._regs(sel).msix_vector
        if offset == QUEUE_ENABLE:
            return int(self._regs(sel).enabled)
        if offset == QUEUE_NOTIFY_OFF:
            return sel  # queue_notify_off = queue index (QEMU maps queues in order)
        if offset in _ADDR_FIELDS:
            name, high = _ADDR_FIELDS[offset]
            addr = getattr(self._regs(sel), name)
            return (addr >> 32) if high else (addr & _U32)
        # queue_reset: a reset completes within the write (see _reset_queue), so it is never "ongoing"
        # and reads 0 -- after enable, after a queue reset and after a device reset (§4.1.4.3.1).
        return 0  # queue_notify_data (NOTIFICATION_DATA not offered), queue_reset, the rest of the page

    def _common_write(self, offset: int, value: int) -> None:
        dev = self.dev
        fn = self.fn
        sel = self.queue_select
        if offset == DEVICE_FEATURE_SELECT:
            self.device_feature_select = value & _U32
        elif offset == DRIVER_FEATURE_SELECT:
            self.driver_feature_select = value & _U32
        elif offset == DRIVER_FEATURE:
            # QEMU keeps two words and reads back what was written; the core decides what it accepts.
            sel_f = self.driver_feature_select
            if sel_f < len(self.driver_feature_words):
                self.driver_feature_words[sel_f] = value & _U32
                dev.set_driver_feature_word(sel_f, value & _U32)
        elif offset == CONFIG_MSIX_VECTOR:
            dev.config_msix_vector = fn.checked_vector(value)
        elif offset == DEVICE_STATUS:
            fn.write_status(value & 0xFF)
        elif offset == QUEUE_SELECT:
            if value < QUEUE_MAX:
                self.queue_select = value
        elif offset == QUEUE_SIZE:
            self._set_queue_size(sel, value)
        elif offset == QUEUE_MSIX_VECTOR:
            q = self._queue(sel)
            if q is not None:
                q.msix_vector = fn.checked_vector(value)
            else:
                self._regs(sel).msix_vector = fn.checked_vector(value)
        elif offset == QUEUE_ENABLE:
            self._enable_queue(sel, value)
        elif offset == QUEUE_RESET:
            self._reset_queue(sel, value)
        elif offset in _ADDR_FIELDS:
            name, high = _ADDR_FIELDS[offset]
            regs = self._regs(sel)
            old = getattr(regs, name)
            new = ((value & _U32) << 32) | (old & _U32) if high else (old & ~_U32) | (value & _U32)
            setattr(regs, name, new)
        # device_feature, num_queues, config_generation, queue_notify_off: read-only, write dropped

    def _set_queue_size(self, index: int, value: int) -> None:
        """§4.1.4.3: the driver MAY lower queue_size. QEMU takes any 1..1024 for a queue that exists (even
        above the maximum or not a power of 2: the virtqueue core then fails the device when it is used);
        refvm also ignores the write while the queue is enabled (the driver MUST NOT change it then)."""
        q = self._queue(index)
        if q is None or not 1 <= value <= max(QUEUE_MAX, q.max_size):
            return
        if q.enabled:
            self.dev.violations.append(f"4.1.4.3.2: queue_size of enabled queue {index} written; ignored")
            return
        q.size = value

    def _enable_queue(self, index: int, value: int) -> None:
        """§4.1.4.3.2: the driver MUST NOT write 0 to queue_enable; QEMU treats any value but 1 as an error
        (DEVICE_NEEDS_RESET once VERSION_1 is negotiated)."""
        dev = self.dev
        if value != 1:
            reason = f"4.1.4.3.2: queue_enable of queue {index} written with {value:#x} (only 1 is allowed)"
            if dev.negotiated(F.VIRTIO_F_VERSION_1):
                dev.fail(reason)
            else:
                dev.violations.append(reason)
            return
        regs = self._regs(index)
        q = self._queue(index)
        if q is not None:
            q.desc_addr, q.driver_addr, q.device_addr = regs.desc, regs.driver, regs.device
            q.enabled = True
        regs.enabled = True

    def _reset_queue(self, index: int, value: int) -> None:
        """§4.1.4.3.1 / §2.6.1: writing 1 to ``queue_reset`` resets the selected queue. The device resets
        it at once (:meth:`VirtioDevice.reset_queue`), so the reset has completed when the driver next
        reads: ``queue_reset`` and ``queue_enable`` both read 0, the addresses 0, ``queue_size`` the
        maximum and ``queue_msix_vector`` NO_VECTOR; the driver may then set the queue up again and
        write ``queue_enable`` (§2.6.1.2). Without VIRTIO_F_RING_RESET negotiated the field does not
        exist and the write is dropped; values other than 1 are dropped too."""
        if value != 1:
            self.dev.violations.append(f"4.1.4.3: queue_reset of queue {index} written with {value:#x}; ignored")
            return
        if self.dev.reset_queue(index):
            self.queue_regs[index] = QueueRegs()

    # ---------------------------------------------------------------- §4.1.4.5 ISR status
    def _isr_read(self) -> int:
        """Any read anywhere in the ISR page returns and clears the ISR and deasserts INTx (QEMU)."""
        return self.fn.read_isr()

    # ---------------------------------------------------------------- §4.1.4.6 device-specific config
    def _device_read(self, offset: int, size: int) -> int:
        """Bytes beyond the device's configuration read as all-ones (QEMU's virtio_config_modern_read*)."""
        if offset + size > len(self.dev.config):
            return _mask(size)
        return self.dev.config_read(offset, size)

    def _device_write(self, offset: int, size: int, value: int) -> None:
        if offset + size <= len(self.dev.config):
            self.dev.config_write(offset, size, value)

    # ---------------------------------------------------------------- §4.1.4.4 notifications
    def _notify(self, offset: int) -> None:
        """A write anywhere in queue N's 4-byte slot notifies queue N (the value is not used)."""
        queue = offset // NOTIFY_OFF_MULTIPLIER
        if queue < QUEUE_MAX:
            self.dev.queue_notify(queue)
