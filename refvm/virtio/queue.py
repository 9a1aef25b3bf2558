"""Types shared by the split and packed virtqueues (VIRTIO 1.2 section 2.6).

A virtqueue has three areas in guest memory (section 2.6): the Descriptor Area, the Driver Area
and the Device Area. The transport (PCI common config, MMIO registers) writes their addresses,
the queue size and the enable bit into a :class:`Virtqueue`; the device pops :class:`Chain`
objects (one per available buffer), reads and writes their guest buffers, and pushes them back
as used. Everything the driver wrote into guest memory is untrusted: a broken driver MUST
(section 2.7 and 2.8) becomes a :class:`VirtqueueError`, which the device core turns into
DEVICE_NEEDS_RESET (section 2.1.2). Every walk is bounded by the queue size, so no driver can
make the device loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from refvm.memory import GuestMemory, GuestMemoryError
from refvm.migration.state import StateError
from refvm.virtio.state import QueueState

__all__ = [
    "VirtqueueError",
    "Chain",
    "Virtqueue",
    "NO_VECTOR",
    "MAX_QUEUE_SIZE",
    "DESC_F_NEXT",
    "DESC_F_WRITE",
    "DESC_F_INDIRECT",
    "DEFAULT_READ_LIMIT",
    "map_into",
    "slice_views",
]

#: The "no MSI-X vector" value of queue_msix_vector / config_msix_vector (section 4.1.5.1.2).
NO_VECTOR = 0xFFFF
#: Split: "The maximum Queue Size value is 32768" (2.7); packed: "up to 2^15 entries" (2.8).
MAX_QUEUE_SIZE = 32768
#: Descriptor flags common to both formats (2.7.5, 2.8.6, 2.8.7).
DESC_F_NEXT = 1
DESC_F_WRITE = 2
DESC_F_INDIRECT = 4
#: Bound of :meth:`Chain.read_all` unless the caller gives another (a chain may describe up to 4 GiB).
DEFAULT_READ_LIMIT = 16 << 20

_U32_LIMIT = 1 << 32


class VirtqueueError(Exception):
    """The driver broke a rule of the specification; ``section`` names the clause.

    The device core catches it and sets DEVICE_NEEDS_RESET (2.1.2); it never leaves
    :meth:`refvm.virtio.device.VirtioDevice.queue_notify`.
    """

    def __init__(self, section: str, message: str) -> None:
        super().__init__(f"virtio {section}: {message}")
        self.section = section
        self.rule = message


def check_ram(mem: GuestMemory, addr: int, length: int, what: str, section: str) -> None:
    """Raise :class:`VirtqueueError` unless ``[addr, addr+length)`` is guest RAM (used for ring areas)."""
    if length:
        r = mem.find_region(addr)
        if r is not None and addr + length <= r.gpa + r.size:
            return
        if not mem.is_ram(addr, length):
            raise VirtqueueError(section, f"{what} gpa={addr:#x} len={length:#x} is not guest RAM")


#: The view of a zero-length descriptor (nothing to read or write; kept so element positions stay).
_EMPTY = memoryview(bytearray())


def map_into(
    out: list[memoryview], mem: GuestMemory, addr: int, length: int, section: str, queue: int, what: str, index: int
) -> None:
    """Append zero-copy views of the buffer ``[addr, addr+length)`` to ``out``.

    This is the one bounds check a descriptor gets: the views are slices of the RAM mapping, so
    later reads and writes through them cannot leave the checked range. A buffer crossing two
    adjacent RAM regions becomes two views; anything outside RAM is a :class:`VirtqueueError`,
    raised at pop, before the device acts on any part of the request (QEMU maps chains then too).
    ``queue``, ``what`` and ``index`` only name the buffer in that error (no string is built otherwise).
    """
    if not length:
        out.append(_EMPTY)
        return
    r = mem.find_region(addr)
    if r is not None and addr + length <= r.gpa + r.size:
        off = addr - r.gpa
        out.append(r.view[off : off + length])
        return
    try:
        out.extend(mem.views(addr, length))
    except GuestMemoryError:
        name = f"queue {queue} {what}" + (f" {index}" if index >= 0 else "")
        raise VirtqueueError(section, f"{name} gpa={addr:#x} len={length:#x} is not guest RAM") from None


def slice_views(views: list[memoryview], offset: int, length: int) -> list[memoryview]:
    """The views covering bytes ``[offset, offset+length)`` of the concatenation of ``views`` (short at the end)."""
    out: list[memoryview] = []
    for v in views:
        if length <= 0:
            break
        n = len(v)
        if offset >= n:
            offset -= n
            continue
        k = min(n - offset, length)
        out.append(v[offset : offset + k] if offset or k != n else v)
        length -= k
        offset = 0
    return out


@dataclass(slots=True, eq=False)
class Chain:
    """One available buffer: views of its device-readable and device-writable elements in guest RAM.

    ``head`` is what goes back in the used element: the head descriptor index (split, 2.7.8)
    or the Buffer ID (packed, 2.8.6). ``desc_count`` is the number of ring slots the buffer
    took (packed queues skip that many when writing the used descriptor, 2.8.6).

    ``readable`` / ``writable`` are memoryviews of guest RAM, bounds-checked once at pop; devices
    read and write (or ``preadv``/``pwritev``) through them with no further checks and no copies.
    ``writable_ranges`` keeps the guest-physical ``(addr, len)`` of each writable descriptor: the
    completion (:meth:`Virtqueue.add_used`) is the one place device writes into these buffers are
    reported, and where a migration's dirty log marks them (GuestMemory.mark_dirty).
    """

    head: int
    readable: list[memoryview]
    writable: list[memoryview]
    mem: GuestMemory = field(repr=False)
    readable_len: int = 0
    writable_len: int = 0
    desc_count: int = 1
    writable_ranges: list[tuple[int, int]] = field(default_factory=list, repr=False)

    def read_all(self, limit: int = DEFAULT_READ_LIMIT) -> bytes:
        """All device-readable bytes, concatenated; more than ``limit`` bytes is a device-side refusal."""
        if self.readable_len > limit:
            raise VirtqueueError(
                "2.7.4", f"readable part of {self.readable_len} bytes exceeds the device's limit of {limit}"
            )
        if len(self.readable) == 1:
            return bytes(self.readable[0])
        return b"".join(self.readable)

    def read(self, offset: int, length: int) -> bytes:
        """``length`` readable bytes starting ``offset`` bytes into the readable part (short at the end)."""
        return b"".join(slice_views(self.readable, offset, length))

    def readable_views(self, offset: int, length: int) -> list[memoryview]:
        """Views of ``length`` readable bytes from ``offset`` (for ``pwritev`` straight from guest RAM)."""
        return slice_views(self.readable, offset, length)

    def writable_views(self, offset: int, length: int) -> list[memoryview]:
        """Views of ``length`` writable bytes from ``offset`` (for ``preadv`` straight into guest RAM).

        Only device-writable elements are ever handed out (2.7.5.1 / 2.8.15).
        """
        return slice_views(self.writable, offset, length)

    def write_into(self, data: bytes | bytearray | memoryview, offset: int = 0, *, exact: bool = False) -> int:
        """Copy ``data`` into the device-writable part, ``offset`` bytes in; returns bytes written.

        Only device-writable elements are ever written (2.7.5.1 / 2.8.15: a device MUST NOT write
        to a device-readable buffer). With ``exact``, data that does not fit is a driver error.
        """
        src = memoryview(data).cast("B")
        total = src.nbytes
        if exact and offset + total > self.writable_len:
            raise VirtqueueError(
                "2.7.5.1",
                f"device must write {offset + total} bytes but the buffer has only {self.writable_len} "
                "device-writable bytes (a device MUST NOT write to a device-readable buffer)",
            )
        pos = 0
        for v in self.writable:
            if pos >= total:
                break
            seg = len(v)
            if offset >= seg:
                offset -= seg
                continue
            n = min(seg - offset, total - pos)
            v[offset : offset + n] = src[pos : pos + n]
            pos += n
            offset = 0
        return pos


class Virtqueue:
    """Transport-visible queue configuration plus the device-side ring engine (subclasses).

    Fields as in the PCI common configuration (4.1.4.3): ``size`` starts at ``max_size`` and the
    driver may lower it; ``desc_addr``/``driver_addr``/``device_addr`` are the three areas;
    ``enabled`` is queue_enable. A ``max_size`` of 0 means the queue is unavailable.

    The ring engine validates the configuration when first used after enabling (size rules,
    alignment 2.7.1 / 2.8.11, areas inside RAM) and caches zero-copy views of the areas.
    """

    kind = "base"
    #: Alignment of (descriptor, driver, device) areas.
    _ALIGN = (16, 2, 4)

    def __init__(self, mem: GuestMemory, index: int, max_size: int) -> None:
        if not 0 <= max_size <= MAX_QUEUE_SIZE:
            raise ValueError(f"queue {index}: max size {max_size} not in 0..{MAX_QUEUE_SIZE}")
        self.mem = mem
        self.index = index
        self.max_size = max_size
        #: Negotiated features that change the ring's behaviour (set by the device at FEATURES_OK).
        self.event_idx = False
        self.indirect = False
        self.reset()

    # ------------------------------------------------------------------ configuration
    def reset(self) -> None:
        """Back to the state after device reset (4.1.4.3.1: queue_enable reads 0; size reads the maximum)."""
        self.size = self.max_size
        self.desc_addr = 0
        self.driver_addr = 0
        self.device_addr = 0
        self._enabled = False
        self.notify_off = self.index
        self.msix_vector = NO_VECTOR
        self.in_flight = 0
        self.suppressed = False
        self._drop_views()
        self._reset_ring()

    @property
    def enabled(self) -> bool:
        return self._enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        value = bool(value)
        if value != self._enabled:
            self._enabled = value
            self._drop_views()
            self._reset_ring()

    @property
    def ready(self) -> bool:
        """Enabled by the driver (the configuration is validated when the ring is first used)."""
        return self._enabled

    def _drop_views(self) -> None:
        self._desc: memoryview | None = None
        self._driver: memoryview | None = None
        self._device: memoryview | None = None
        #: What a compiled server (virtio-blk's blk_fast) derived from the mapped areas; dropped with them.
        self.compiled: object = None

    def _reset_ring(self) -> None:  # pragma: no cover - overridden
        pass

    def _area_sizes(self) -> tuple[int, int, int]:  # pragma: no cover - overridden
        raise NotImplementedError

    def _check_size(self) -> None:
        if not 1 <= self.size <= self.max_size:
            raise VirtqueueError("4.1.4.3", f"queue {self.index}: size {self.size} not in 1..{self.max_size}")

    def _activate(self) -> None:
        """Validate the configuration and map the three areas (called lazily from the ring engine)."""
        if not self._enabled:
            raise VirtqueueError("2.6", f"queue {self.index} used while not enabled")
        self._check_size()
        sizes = self._area_sizes()
        views = []
        for name, addr, align, nbytes, section in zip(
            ("descriptor area", "driver area", "device area"),
            (self.desc_addr, self.driver_addr, self.device_addr),
            self._ALIGN,
            sizes,
            ("2.7.1", "2.7.1", "2.7.1") if self.kind == "split" else ("2.8.11", "2.8.11", "2.8.11"),
            strict=True,
        ):
            if addr % align:
                raise VirtqueueError(section, f"queue {self.index}: {name} at {addr:#x} is not {align}-byte aligned")
            check_ram(self.mem, addr, nbytes, f"queue {self.index} {name}", section)
            try:
                views.append(self.mem.view(addr, nbytes))
            except Exception as exc:  # spans two RAM regions: contiguous, but not one mapping
                raise VirtqueueError(
                    section, f"queue {self.index}: {name} at {addr:#x} spans RAM regions (unsupported): {exc}"
                ) from exc
        self._desc, self._driver, self._device = views

    # ------------------------------------------------------------------ ring engine (subclasses)
    def pop(self) -> Chain | None:
        """The next available buffer, or None when the driver has made none available."""
        raise NotImplementedError

    def push(self, chain: Chain, written: int) -> None:
        """Return ``chain`` to the driver as used with ``written`` bytes written, visible at once."""
        self.add_used(chain, written)
        self.publish()

    def add_used(self, chain: Chain, written: int) -> None:
        """Write the used element for ``chain``; the driver sees it after :meth:`publish`.

        Devices on the hot path add several and publish once per notification
        (:meth:`refvm.virtio.device.VirtioDevice.notify_used` publishes before deciding the interrupt).
        This is also the one place where the device's writes into the chain's buffers are complete:
        while a migration logs, the ring engine marks ``chain.writable_ranges`` there (:meth:`_log_used`).
        """
        raise NotImplementedError

    # ------------------------------------------------------------------ migration dirty log
    # Devices write guest RAM through views (the ring areas cached at activation, the chain's buffers), which
    # neither KVM's dirty log nor GuestMemory's write() sees.  The ring engines call these after such writes,
    # only when ``mem.dirty_logging`` (one attribute test on the hot path when no migration runs).

    def _log_used(self, chain: Chain, ring_gpa: int, ring_len: int) -> None:
        """A completion: every device-writable buffer of ``chain`` and the used-ring bytes just written.

        Whole writable descriptors, not the first ``written`` bytes: the used length counts bytes, it does not
        say where they are (virtio-blk's status byte is the last writable byte whatever the data length)."""
        if self.mem.drop_view_marks:
            return  # x-deviation=migration-drop-dirty, off by default: refvm/deviations.py
        mark = self.mem.mark_dirty
        for addr, length in chain.writable_ranges:
            mark(addr, length)
        mark(ring_gpa, ring_len)

    def _log_ring(self, gpa: int, length: int) -> None:
        """A store into a ring area the driver reads (used idx, flags, event suppression)."""
        if not self.mem.drop_view_marks:  # x-deviation=migration-drop-dirty
            self.mem.mark_dirty(gpa, length)

    def publish(self) -> None:
        """Make every element added with :meth:`add_used` visible to the driver (used idx store)."""

    def needs_interrupt(self) -> bool:
        """After pushes: does the driver want a used buffer notification now? Resets the window."""
        raise NotImplementedError

    def suppress_notifications(self, suppress: bool) -> None:
        """Advise the driver that available buffer notifications are (not) needed."""
        raise NotImplementedError

    def copy_config_from(self, other: Virtqueue) -> None:
        """Take over the transport-written configuration of ``other`` (used when the ring format changes)."""
        self.size = other.size
        self.desc_addr = other.desc_addr
        self.driver_addr = other.driver_addr
        self.device_addr = other.device_addr
        self.notify_off = other.notify_off
        self.msix_vector = other.msix_vector
        self.enabled = other.enabled

    # ------------------------------------------------------------------ migration (refvm/virtio/state.py)
    def save(self, held: tuple[Chain, ...] = ()) -> QueueState:
        """This queue as data. ``held``: chains the device keeps popped but unused, which must be the last
        ones popped; the State gives them back to the available ring (the driver still owns nothing new,
        the descriptors are in RAM) and the destination device pops them again. Any other chain in flight
        means the device did not drain: refused."""
        if self.in_flight != len(held):
            raise StateError(f"migration: queue {self.index}: {self.in_flight} requests in flight, "
                             f"{len(held)} held (the device did not drain them)")
        st = QueueState(size=self.size, enabled=self._enabled, desc_addr=self.desc_addr,
                        driver_addr=self.driver_addr, device_addr=self.device_addr, msix_vector=self.msix_vector,
                        notify_off=self.notify_off, suppressed=self.suppressed)
        self._save_ring(st, held)
        return st

    def state_problem(self, st: QueueState) -> tuple[str, str] | None:
        """(field, problem) if ``st`` cannot be this queue's state (guest- and stream-controlled values)."""
        if not self.max_size:
            return None if st.size == 0 and not st.enabled else ("size", "set on a queue the device does not have")
        top = max(1024, self.max_size)  # what the transport lets a driver write (pci_common._set_queue_size)
        if not 1 <= st.size <= top:
            return "size", f"{st.size} not in 1..{top}"
        if st.notify_off != self.index:
            return "notify_off", f"{st.notify_off} is not the queue index {self.index}"
        return self._ring_problem(st)

    def load(self, st: QueueState) -> None:
        """Take a checked state by assignment: the ``enabled`` setter would zero the ring cursors."""
        self.size, self._enabled = st.size, st.enabled
        self.desc_addr, self.driver_addr, self.device_addr = st.desc_addr, st.driver_addr, st.device_addr
        self.msix_vector, self.notify_off, self.suppressed = st.msix_vector, st.notify_off, st.suppressed
        self._drop_views()  # areas are mapped (and checked against RAM) again at first use
        self._reset_ring()
        self._load_ring(st)

    def _save_ring(self, st: QueueState, held: tuple[Chain, ...]) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _ring_problem(self, st: QueueState) -> tuple[str, str] | None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _load_ring(self, st: QueueState) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _check_push(self, chain: Chain, written: int) -> None:
        if self.in_flight <= 0:
            raise RuntimeError(f"queue {self.index}: push without a popped chain (device bug)")
        if not 0 <= written <= chain.writable_len or written >= _U32_LIMIT:
            raise RuntimeError(f"queue {self.index}: used len {written} outside 0..{chain.writable_len} (device bug)")

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.index} size={self.size}/{self.max_size} enabled={self._enabled} "
            f"desc={self.desc_addr:#x} driver={self.driver_addr:#x} device={self.device_addr:#x}>"
        )
