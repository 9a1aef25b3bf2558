"""The transport-independent virtio device (VIRTIO 1.2 chapters 2 and 3).

A transport (PCI, MMIO) owns the registers; it forwards to a :class:`VirtioDevice`:

* ``status`` / :meth:`write_status` -- the device status field and its state machine (2.1, 3.1.1);
* :meth:`device_feature_word` / :meth:`driver_feature_word` / :meth:`set_driver_feature_word` --
  32-bit feature windows selected by ``*_feature_select`` (2.2, 4.1.4.3);
* :meth:`config_read` / :meth:`config_write` / :attr:`config_generation` (2.5);
* ``queues[i]`` -- per-queue configuration and rings (2.6); look the queue up on every access:
  the list is rebuilt when the ring format is negotiated (FEATURES_OK) and on reset;
* :meth:`queue_notify` -- an available buffer notification (2.9);
* :meth:`reset_queue` -- one queue back to its initial state (2.6.1, VIRTIO_F_RING_RESET);
* :meth:`read_isr` -- the interrupt status bits (bit 0 used buffer, bit 1 configuration change).

and receives interrupts through ``on_used_buffer(queue_index)`` and ``on_config_change()``.

Device types subclass it: set ``device_id``, ``features`` (device-specific bits), ``queue_max_sizes``,
fill ``config`` and implement :meth:`handle_queue`. A driver error -- a :class:`VirtqueueError` or a
:class:`~refvm.memory.GuestMemoryError` from a buffer -- never escapes: :meth:`fail` sets
DEVICE_NEEDS_RESET, notifies the driver and stops queue processing until reset (2.1.2).

Status machine, as modelled here:

* writing 0 resets (2.4): status, negotiated and driver-written features, queues, ISR, error state;
  the configuration generation is kept (it only has to change when config contents change, 2.5);
* the driver MUST NOT clear status bits (2.1.1); a write that does is tolerated like QEMU does (the
  value is taken as written), recorded in :attr:`violations`; DEVICE_NEEDS_RESET is the device's own
  bit: drivers can neither set nor clear it, and accepted features stay locked until reset;
* FEATURES_OK (3.1.1 step 5, 2.2.2): accepted only if the driver's features are a subset of the offered
  ones, include VERSION_1 (section 6: this core is modern only) and pass :meth:`validate_features`;
  otherwise the bit reads back clear (3.1.1 step 6). After acceptance feature writes are ignored;
* DRIVER_OK without accepted FEATURES_OK is a broken initialisation (3.1.1): the device fails;
* queues are processed only while DRIVER_OK is set and neither FAILED nor DEVICE_NEEDS_RESET is
  (2.1.2: the device MUST NOT consume buffers before DRIVER_OK); earlier notifications are counted
  in :attr:`ignored_notifications` and dropped.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from refvm.deviations import NO_DEVIATIONS, Deviations
from refvm.memory import GuestMemory, GuestMemoryError
from refvm.virtio import features as F
from refvm.virtio import status as S
from refvm.virtio.packed_queue import PackedQueue
from refvm.virtio.queue import NO_VECTOR, Chain, Virtqueue, VirtqueueError
from refvm.virtio.split_queue import SplitQueue
from refvm.virtio.state import NoDeviceState, VirtioCoreState

__all__ = ["VirtioDevice", "ISR_QUEUE", "ISR_CONFIG"]

log = logging.getLogger(__name__)

#: Interrupt status bits (4.1.4.5 for PCI; MMIO's InterruptStatus uses the same two).
ISR_QUEUE = 1
ISR_CONFIG = 2


def _noop_used(_index: int) -> None:
    return None


def _noop_config() -> None:
    return None


class VirtioDevice:
    """Base class of virtio device models; see the module docstring for the transport contract."""

    #: Virtio device ID (section 5), e.g. 2 for block.
    device_id: int = 0
    #: Device-type feature bits; the core adds :data:`refvm.virtio.features.CORE_FEATURES`.
    features: int = 0
    #: Maximum size of each queue (0: queue unavailable); its length is the number of queues.
    queue_max_sizes: tuple[int, ...] = ()
    #: Names of device-type feature bits, for reports.
    feature_names: dict[int, str] = {}
    #: The machine's deliberate deviations (refvm/deviations.py); its PCI function sets them when plugged.
    deviations: Deviations = NO_DEVIATIONS

    def __init__(
        self,
        mem: GuestMemory,
        *,
        packed: bool = True,
        event_idx: bool = True,
        indirect: bool = True,
        ring_reset: bool = True,
        config_size: int = 0,
    ) -> None:
        self.mem = mem
        core = F.CORE_FEATURES
        if ring_reset:  # QEMU 7.2's queue_reset property is on by default (hw_compat_7_1 turns it off)
            core |= F.bit(F.VIRTIO_F_RING_RESET)
        if not packed:
            core &= ~F.bit(F.VIRTIO_F_RING_PACKED)
        if not event_idx:
            core &= ~F.bit(F.VIRTIO_F_RING_EVENT_IDX)
        if not indirect:
            core &= ~F.bit(F.VIRTIO_F_RING_INDIRECT_DESC)
        self._core_features = core
        self.config = bytearray(config_size)
        self.lock = threading.RLock()
        self.on_used_buffer: Callable[[int], None] = _noop_used
        self.on_config_change: Callable[[], None] = _noop_config
        self._generation = 0
        self._config_dirty = False
        self.violations: list[str] = []
        self.failures: list[str] = []
        self.queues: list[Virtqueue] = []
        #: Saved for a migration: the device touches neither rings nor guest memory until thaw() or load.
        self._frozen = False
        self._reset_state()

    # ------------------------------------------------------------------ identity / features (2.2)
    @property
    def device_features(self) -> int:
        """Everything this device offers: its own bits plus the core's (section 6)."""
        return self.features | self._core_features

    @property
    def num_queues(self) -> int:
        return len(self.queue_max_sizes)

    def device_feature_word(self, select: int) -> int:
        """``device_feature`` for ``device_feature_select`` = ``select`` (bits 32*select .. +31)."""
        if not 0 <= select < F.FEATURE_WORDS:
            return 0
        return (self.device_features >> (32 * select)) & 0xFFFFFFFF

    def driver_feature_word(self, select: int) -> int:
        """``driver_feature`` as the driver wrote it (4.1.4.3.1: the device MAY mirror invalid bits)."""
        if not 0 <= select < F.FEATURE_WORDS:
            return 0
        return (self.driver_features >> (32 * select)) & 0xFFFFFFFF

    def set_driver_feature_word(self, select: int, value: int) -> None:
        """The driver writes ``driver_feature``; ignored once FEATURES_OK was accepted (3.1.1 step 5)."""
        with self.lock:
            if self._features_locked:
                self._violation(f"3.1.1: driver_feature[{select}] = {value:#x} written after FEATURES_OK; ignored")
                return
            if not 0 <= select < F.FEATURE_WORDS:
                self._violation(f"2.2: driver_feature_select {select} beyond the defined feature bits; ignored")
                return
            shift = 32 * select
            mask = 0xFFFFFFFF << shift
            self.driver_features = (self.driver_features & ~mask) | ((value & 0xFFFFFFFF) << shift)

    def validate_features(self, features: int) -> str | None:
        """Device-specific dependency check (2.2.1: no feature without the features it requires).

        Return None to accept or a reason to refuse FEATURES_OK. Called with the lock held.
        """
        return None

    def negotiated(self, bit: int) -> bool:
        """True if feature ``bit`` was accepted with FEATURES_OK."""
        return (self.negotiated_features >> bit) & 1 == 1

    # ------------------------------------------------------------------ status (2.1, 3.1.1)
    @property
    def status(self) -> int:
        return self._status

    @property
    def live(self) -> bool:
        """DRIVER_OK set, neither FAILED nor DEVICE_NEEDS_RESET, not frozen: queues may be processed."""
        st = self._status
        return st & S.DRIVER_OK != 0 and st & (S.FAILED | S.DEVICE_NEEDS_RESET) == 0 and not self._frozen

    def write_status(self, value: int) -> None:
        """The driver writes ``device_status``; 0 resets the device (2.4, 4.1.4.3.1)."""
        with self.lock:
            value &= 0xFF
            if value == 0:
                self.reset()
                return
            old = self._status
            if value & S.DEVICE_NEEDS_RESET and not old & S.DEVICE_NEEDS_RESET:
                self._violation("2.1: driver set DEVICE_NEEDS_RESET, a device-owned bit; ignored")
            new = (value & ~S.DEVICE_NEEDS_RESET) | (old & S.DEVICE_NEEDS_RESET)
            cleared = old & ~new & S.DRIVER_BITS
            if cleared:
                self._violation(f"2.1.1: driver cleared status bits {S.describe(cleared)} without a reset")
            added = new & ~old
            if added & (S.FEATURES_OK | S.DRIVER_OK) and new & (S.ACKNOWLEDGE | S.DRIVER) != (S.ACKNOWLEDGE | S.DRIVER):
                self._violation(f"3.1.1: {S.describe(added)} set before ACKNOWLEDGE and DRIVER")
            if added & S.FEATURES_OK:
                reason = self._negotiate()
                if reason is not None:
                    new &= ~S.FEATURES_OK
                    self.feature_refusals.append(reason)
                    log.info("%s: FEATURES_OK refused: %s", type(self).__name__, reason)
            self._status = new
            if added & S.DRIVER_OK:
                if not self._features_locked:
                    self.fail("3.1.1: DRIVER_OK set before FEATURES_OK was accepted")
                    return
                self.driver_ok()

    def _negotiate(self) -> str | None:
        """Check the driver's features for FEATURES_OK (2.2.2); on success lock them and set up queues."""
        drv = self.driver_features
        offered = self.device_features
        extra = drv & ~offered
        if extra and not self.deviations.active("accept-invalid-features"):
            return f"2.2.1: driver accepted features not offered: {F.describe(extra, self.feature_names)}"
        if not F.has(drv, F.VIRTIO_F_VERSION_1):
            return "6: VIRTIO_F_VERSION_1 not accepted (this device has no legacy interface here)"
        reason = self.validate_features(drv)
        if reason is not None:
            return reason
        self.negotiated_features = drv
        self._features_locked = True
        self._setup_queues()
        return None

    def _setup_queues(self) -> None:
        """Give every queue the negotiated ring format and ring features (2.6, section 6)."""
        packed = self.negotiated(F.VIRTIO_F_RING_PACKED)
        cls: type[Virtqueue] = PackedQueue if packed else SplitQueue
        new_queues: list[Virtqueue] = []
        for q in self.queues:
            nq = q if type(q) is cls else cls(self.mem, q.index, q.max_size)
            if nq is not q:
                nq.copy_config_from(q)
            nq.event_idx = self.negotiated(F.VIRTIO_F_RING_EVENT_IDX)
            nq.indirect = self.negotiated(F.VIRTIO_F_RING_INDIRECT_DESC)
            new_queues.append(nq)
        self.shape_queues(new_queues, self.negotiated_features)
        self.queues = new_queues

    def reset(self) -> None:
        """Device reset (2.4): status 0, features, queues and interrupt state back to initial values."""
        with self.lock:
            self._reset_state()
            self.reset_device()

    def _reset_state(self) -> None:
        self._status = 0
        self.driver_features = 0
        self.negotiated_features = 0
        self._features_locked = False
        self.feature_refusals: list[str] = []
        self.isr = 0
        self.config_msix_vector = NO_VECTOR
        self.error: str | None = None
        self.ignored_notifications = 0
        self.queues = [SplitQueue(self.mem, i, n) for i, n in enumerate(self.queue_max_sizes)]

    def reset_device(self) -> None:
        """Device-specific reset hook (called with the lock held, after the core state was reset).

        If it changes configuration contents it calls :meth:`config_changed` (no interrupt is sent:
        DRIVER_OK is clear), so the driver sees a new generation.
        """

    def driver_ok(self) -> None:
        """Hook: the device went live (DRIVER_OK accepted). Called with the lock held."""

    # ------------------------------------------------------------------ errors (2.1.2)
    def fail(self, reason: str) -> None:
        """Enter the error state: DEVICE_NEEDS_RESET, a configuration change notification if
        DRIVER_OK is set (2.1.2), no queue processing until reset."""
        with self.lock:
            self.failures.append(reason)
            if self._status & S.DEVICE_NEEDS_RESET:
                return
            log.warning("%s: DEVICE_NEEDS_RESET: %s", type(self).__name__, reason)
            self.error = reason
            self._status |= S.DEVICE_NEEDS_RESET
            if self._status & S.DRIVER_OK:
                self._raise_config()

    def _violation(self, what: str) -> None:
        self.violations.append(what)
        log.info("%s: driver violation: %s", type(self).__name__, what)

    # ------------------------------------------------------------------ configuration space (2.5)
    @property
    def config_generation(self) -> int:
        """The 8-bit configuration generation; reading it settles a pending change."""
        with self.lock:
            self._settle_generation()
            return self._generation

    def _settle_generation(self) -> None:
        # 4.1.4.3.1 note: increment once per batch of changes, when the driver next looks, so an
        # 8-bit counter cannot wrap back to a value the driver saw while reading.
        if self._config_dirty:
            self._config_dirty = False
            self._generation = (self._generation + 1) & 0xFF

    def config_read(self, offset: int, size: int) -> int:
        """Little-endian read of ``size`` bytes; bytes beyond the config space read as 0."""
        with self.lock:
            self._settle_generation()
            if offset < 0 or size <= 0:
                return 0
            data = bytes(self.config[offset : offset + size])
            return int.from_bytes(data.ljust(size, b"\0"), "little")

    def config_write(self, offset: int, size: int, value: int) -> None:
        """The driver writes config bytes; passed to :meth:`write_config` (default: read-only space)."""
        with self.lock:
            if offset < 0 or size <= 0 or offset + size > len(self.config):
                self._violation(f"2.5: config write at {offset}+{size} outside the {len(self.config)}-byte space")
                return
            self.write_config(offset, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))

    def write_config(self, offset: int, data: bytes) -> None:
        """Device hook for driver config writes (within bounds); the default ignores them."""
        self._violation(f"2.5: write to read-only config at {offset} ignored")

    def config_changed(self) -> None:
        """The device changed its configuration: bump the generation, notify the driver if live."""
        with self.lock:
            if not self._config_dirty:
                self._config_dirty = True
            if self._status & S.DRIVER_OK:
                self._raise_config()

    def _raise_config(self) -> None:
        self.isr |= ISR_CONFIG
        self.on_config_change()

    def read_isr(self) -> int:
        """Read-and-clear of the ISR status (4.1.4.5)."""
        with self.lock:
            v = self.isr
            if not self.deviations.active("isr-not-cleared"):
                self.isr = 0
            return v

    # ------------------------------------------------------------------ queues (2.6, 2.9)
    def queue_notify(self, index: int, data: int | None = None) -> None:
        """An available buffer notification for queue ``index``; never raises.

        Spurious notifications (no new buffers, disabled or unknown queue) are harmless (2.7.10.2).
        """
        with self.lock:
            if not self.live:
                self.ignored_notifications += 1
                return
            if not 0 <= index < len(self.queues):
                self._violation(f"2.9: notification for queue {index}, which does not exist")
                return
            q = self.queues[index]
            if not q.ready:
                return
            self._run(q)

    def _run(self, q: Virtqueue) -> None:
        try:
            self.handle_queue(q)
        except VirtqueueError as exc:
            q.publish()  # what was completed before the error stays completed
            self.fail(str(exc))
            return
        except GuestMemoryError as exc:
            q.publish()
            self.fail(f"virtio 2.7.5/2.8.4: queue {q.index}: buffer outside guest RAM: {exc}")
            return
        except Exception as exc:  # a device model bug must not take the vCPU thread down
            log.exception("%s: handle_queue(%d) crashed", type(self).__name__, q.index)
            q.publish()
            self.fail(f"device error on queue {q.index}: {exc!r}")
            return
        self.notify_used(q)

    def notify_used(self, q: Virtqueue) -> None:
        """Send a used buffer notification if the driver wants one (for devices that complete
        requests later, e.g. from I/O threads). Call with the lock held or from a handler.

        First publishes the used elements added since the last call: one used idx store per batch."""
        q.publish()
        if not self.live:
            return
        try:
            wanted = q.needs_interrupt()
        except (VirtqueueError, GuestMemoryError) as exc:
            self.fail(str(exc))
            return
        if wanted:
            self.isr |= ISR_QUEUE
            self.on_used_buffer(q.index)

    def complete(self, q: Virtqueue, chain: Chain, written: int) -> None:
        """Push a chain finished outside :meth:`handle_queue` and notify as needed (thread safe).

        Dropped if the device was reset or failed meanwhile (2.4: no queue access after reset).
        """
        with self.lock:
            if not self.live or q.index >= len(self.queues) or self.queues[q.index] is not q:
                return
            q.push(chain, written)
            self.notify_used(q)

    def reset_queue(self, index: int) -> bool:
        """Reset one virtqueue (2.6.1 Virtqueue Reset; the transport's ``queue_reset``, 4.1.4.3).

        2.6.1.1.1: the device stops using the queue -- no more requests executed, no notifications --
        and its state goes back to the default: size back to the maximum, ring addresses 0, disabled,
        available/used indices and MSI-X vector reset (QEMU's __virtio_queue_reset). The queue object is
        replaced, so a request still in flight on the old one is dropped by :meth:`complete`. The
        negotiated ring format and ring features stay. Returns False (nothing done) when
        VIRTIO_F_RING_RESET was not negotiated or the queue does not exist. Synchronous: the reset is
        complete when this returns.
        """
        with self.lock:
            if not self.negotiated(F.VIRTIO_F_RING_RESET):
                self._violation(f"4.1.4.3: queue_reset of queue {index} without VIRTIO_F_RING_RESET; ignored")
                return False
            if not 0 <= index < len(self.queues) or not self.queues[index].max_size:
                return False
            old = self.queues[index]
            new = type(old)(self.mem, index, old.max_size)
            new.event_idx, new.indirect = old.event_idx, old.indirect
            self.queues[index] = new
            self.queue_reset_device(index)
            return True

    def queue_reset_device(self, index: int) -> None:
        """Device-specific hook after queue ``index`` was reset (lock held): drop what the device keeps
        from that queue (held buffers, pending requests). The default keeps nothing."""

    # ------------------------------------------------------------------ migration (refvm/virtio/state.py)
    #: The State class of the device type's own state (saved by save_device, loaded by load_device).
    DEVICE_STATE: type = NoDeviceState
    #: QEMU's vmsd name of the device type, the second half of its section idstr (`0000:00:04.0/virtio-blk`).
    VMSD_NAME = "virtio-device"

    def quiesce(self) -> None:
        """Before save (lock held): finish or give back every request in flight. Default: nothing is."""

    def held_chains(self, index: int) -> tuple[Chain, ...]:
        """Chains of queue ``index`` the device keeps popped but unused (the last ones popped), which a save
        gives back to the available ring; the device pops them again in :meth:`load_device`. Default none."""
        return ()

    def freeze(self) -> None:
        """The cut of a migration (lock held, right after the state was taken): from now on nothing the
        device does reaches the rings or guest memory -- host input waits in the device, notifications are
        counted and dropped -- so the RAM copied next matches the state. Undone by :meth:`thaw` (the
        migration failed) or a load."""
        self._frozen = True

    def thaw(self) -> None:
        """Resume after :meth:`freeze`: every ready queue is run once, for what arrived meanwhile (a spurious
        run finds nothing, 2.7.10.2)."""
        with self.lock:
            if not self._frozen:
                return
            self._frozen = False
            if self.live:
                for q in list(self.queues):
                    if q.ready:
                        self._run(q)

    def save_core(self) -> VirtioCoreState:
        """Status, features, ISR, generation and every queue (call with the lock held, after quiesce)."""
        return VirtioCoreState(
            status=self._status, driver_features=self.driver_features, negotiated_features=self.negotiated_features,
            features_locked=self._features_locked, isr=self.isr, config_msix_vector=self.config_msix_vector,
            generation=self._generation, config_dirty=self._config_dirty, error=(self.error or "").encode()[:1024],
            queues=tuple(q.save(self.held_chains(q.index)) for q in self.queues))

    def core_problem(self, st: VirtioCoreState, legacy: bool = False) -> tuple[str, str] | None:
        """(field, problem) when ``st`` cannot be this device's state; checked before anything is loaded.
        ``legacy``: a legacy driver negotiated through the transport (no VERSION_1, 32 feature bits)."""
        if st.features_locked:
            extra = st.negotiated_features & ~self.device_features
            if extra and not self.deviations.active("accept-invalid-features"):
                return "negotiated_features", f"{F.describe(extra, self.feature_names)} not offered by this device"
            if legacy and st.negotiated_features >> 32:
                return "negotiated_features", f"{st.negotiated_features:#x} beyond a legacy driver's 32 bits"
            if not legacy and not F.has(st.negotiated_features, F.VIRTIO_F_VERSION_1):
                return "negotiated_features", "VIRTIO_F_VERSION_1 missing"
        elif st.negotiated_features:
            return "negotiated_features", f"{st.negotiated_features:#x} without features_locked"
        elif st.status & S.FEATURES_OK or st.status & S.DRIVER_OK and not st.status & S.DEVICE_NEEDS_RESET:
            return "status", f"{S.describe(st.status)} without accepted features"  # unreachable by a driver
        if len(st.queues) != len(self.queue_max_sizes):
            return "queues", f"{len(st.queues)} queues, this device has {len(self.queue_max_sizes)}"
        for q, qst in zip(self._queues_for(st.negotiated_features), st.queues, strict=True):
            found = q.state_problem(qst)
            if found:
                return f"queues[{q.index}].{found[0]}", found[1]
        return None

    def _queues_for(self, negotiated: int) -> list[Virtqueue]:
        """Fresh queues in the ring format ``negotiated`` selects, with its ring features."""
        cls: type[Virtqueue] = PackedQueue if F.has(negotiated, F.VIRTIO_F_RING_PACKED) else SplitQueue
        queues = [cls(self.mem, i, n) for i, n in enumerate(self.queue_max_sizes)]
        for q in queues:
            q.event_idx = F.has(negotiated, F.VIRTIO_F_RING_EVENT_IDX)
            q.indirect = F.has(negotiated, F.VIRTIO_F_RING_INDIRECT_DESC)
        self.shape_queues(queues, negotiated)
        return queues

    def shape_queues(self, queues: list[Virtqueue], negotiated: int) -> None:
        """Replace queues whose existence depends on the negotiated features (virtio-net without MQ); called
        at FEATURES_OK and when a migration builds the queues. No side effects on the device. Default none."""

    def load_core(self, st: VirtioCoreState) -> None:
        """Take a checked state by assignment (no status machine, no reset hooks, no ring resets)."""
        with self.lock:
            self._frozen = False
            self._status, self.driver_features = st.status, st.driver_features
            self.negotiated_features, self._features_locked = st.negotiated_features, st.features_locked
            self.isr, self.config_msix_vector = st.isr, st.config_msix_vector
            self._generation, self._config_dirty = st.generation, st.config_dirty
            self.error = st.error.decode(errors="replace") or None
            queues = self._queues_for(st.negotiated_features)
            for q, qst in zip(queues, st.queues, strict=True):
                q.load(qst)
            self.queues = queues

    def save_device(self) -> NoDeviceState:
        """The device type's own state (lock held). Default: none."""
        return NoDeviceState()

    def device_problem(self, st: object, core: VirtioCoreState) -> tuple[str, str] | None:
        """(field, problem) when the device-type state does not fit this device (``core``: the checked core
        state about to be loaded with it, e.g. its negotiated features). Default: fits."""
        return None

    def load_device(self, st: object) -> None:
        """Take the device type's own checked state (lock held). Default: nothing to take."""

    def post_load(self) -> None:
        """After the whole function (transport, PCI, MSI-X) was loaded, lock held: resume work the state
        implies, e.g. deliver carried input into buffers the driver posted. Default: nothing."""

    def handle_queue(self, queue: Virtqueue) -> None:
        """Device hook: pop chains from ``queue``, use them, push them (called with the lock held)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} id={self.device_id} status={S.describe(self._status)}>"

