"""Virtqueue notifications through KVM ioeventfds, handled on the IoThread.

Without this, every queue notify is an MMIO (or PIO) exit: the vCPU thread leaves KVM_RUN, decodes the
write, and runs the whole device back-end (a disk read, say) before the guest gets its CPU back. With an
ioeventfd the kernel completes the guest's write at once and just signals an eventfd; the IoThread wakes
up and calls ``device.queue_notify(q)`` under the device lock -- the same call the slow path makes, so
the device sees exactly the same sequence of events, only on another thread.

Where the notify lives (VIRTIO 1.2 §4.1.4.4 / §4.1.4.8), as QEMU's virtio-pci registers its eventfds:

* modern: BAR4 + 3000h + 4 * queue (``VirtioPciFunction.notify_address``), an MMIO write of any width:
  one ioeventfd of length 0 ("any length", KVM_CAP_IOEVENTFD_ANY_LENGTH) and no datamatch; without
  that capability two, for 2- and 4-byte writes;
* legacy (transitional or disable-modern): BAR0 + 10h, a 16-bit port write whose value is the queue
  index: a PIO ioeventfd of length 2 with datamatch on the index.

Writes these do not match (odd offsets, other widths, out-of-range queue indices) still exit and take the
slow path, so guest-visible behaviour is unchanged. Registrations follow the BARs: a mapping listener on
the PCI bus re-syncs them synchronously whenever decoding changes (COMMAND bits, BAR moves, reset), so
a write to a BAR's new address never hits a stale ioeventfd. A signal that arrives after its BAR moved is
a spurious notification, which §2.7.10.2 makes harmless.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from refvm.iothread import IoThread, read_eventfd
from refvm.kvm import KvmError
from refvm.virtio.pci import LEGACY_BAR, MODERN_BAR, VirtioPciFunction
from refvm.virtio.pci_legacy import QUEUE_NOTIFY

if TYPE_CHECKING:
    from refvm.devices.pci.bus import PciBus
    from refvm.fastpath.stats import FastPathStats
    from refvm.kvm import Vm

__all__ = ["NotifyEventfds", "Registration"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Registration:
    """One KVM_IOEVENTFD assignment (what must be passed again to deassign it)."""

    addr: int
    length: int
    datamatch: int | None
    pio: bool


@dataclass
class _Notifier:
    """One virtqueue of one function: its eventfd and where that eventfd is registered now."""

    fn: VirtioPciFunction
    queue: int
    label: str
    efd: int
    assigned: set[Registration] = field(default_factory=set)


class NotifyEventfds:
    """ioeventfds for every queue of every virtio-pci function on ``bus``, dispatched on ``iothread``."""

    def __init__(
        self, vm: Vm, bus: PciBus, iothread: IoThread, stats: FastPathStats, *, any_length: bool = True
    ) -> None:
        self.vm = vm
        self.bus = bus
        self.iothread = iothread
        self.stats = stats
        self.any_length = any_length
        self._lock = threading.Lock()  # a leaf lock: taken after the bus lock, never before
        self._notifiers: list[_Notifier] = []
        self._closed = False
        for slot, function, dev in bus.devices():
            if isinstance(dev, VirtioPciFunction):
                self._add_function(slot, function, dev)
        bus.add_mapping_listener(self.sync)  # also runs sync() once, under the bus lock

    def _add_function(self, slot: int, function: int, fn: VirtioPciFunction) -> None:
        name = fn.qdev_id or f"{fn.type_name}@{slot:02x}.{function}"
        for queue, size in enumerate(fn.vdev.queue_max_sizes):
            if not size:
                continue
            efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            notifier = _Notifier(fn, queue, f"{name}/q{queue}", efd)
            self._notifiers.append(notifier)
            self.iothread.add_fd(efd, lambda n=notifier: self._fire(n))

    # ---------------------------------------------------------------- IoThread side
    def _fire(self, n: _Notifier) -> None:
        """The guest wrote the notify register (once or more since we last looked): run the queue."""
        if not read_eventfd(n.efd):
            return
        self.stats.count_notify(n.label)
        n.fn.vdev.queue_notify(n.queue)  # takes the device lock; never raises (VirtioDevice contract)

    def drain(self) -> None:
        """Run notifications signalled but not yet handled (call on the IoThread before closing)."""
        for n in list(self._notifiers):
            self._fire(n)

    # ---------------------------------------------------------------- registrations
    def _wanted(self, n: _Notifier, mappings: dict[tuple[int, int, int], int]) -> set[Registration]:
        fn = n.fn
        want: set[Registration] = set()
        if fn.modern:
            base = mappings.get((fn.slot, fn.function, MODERN_BAR))
            if base is not None:
                _bar, offset = fn.notify_address(n.queue)
                lengths = (0,) if self.any_length else (2, 4)
                want.update(Registration(base + offset, length, None, False) for length in lengths)
        if fn.legacy:
            base = mappings.get((fn.slot, fn.function, LEGACY_BAR))
            if base is not None:
                want.add(Registration(base + QUEUE_NOTIFY, 2, n.queue, True))
        return want

    def sync(self) -> None:
        """Make the ioeventfds match the BARs decoded now (bus mapping listener; never raises)."""
        try:
            mappings = self.bus.mappings()
            with self._lock:
                if self._closed:
                    return
                wanted = [self._wanted(n, mappings) for n in self._notifiers]
                # Everything stale goes first: two functions may have swapped addresses.
                for n, want in zip(self._notifiers, wanted, strict=True):
                    for reg in n.assigned - want:
                        self._deassign(n, reg)
                for n, want in zip(self._notifiers, wanted, strict=True):
                    for reg in want - n.assigned:
                        self._assign(n, reg)
        except Exception:  # noqa: BLE001 - a config write from the guest must never fail because of us
            self.stats.errors += 1
            log.exception("fastpath: ioeventfd sync failed")

    def _assign(self, n: _Notifier, reg: Registration) -> None:
        try:
            self.vm.ioeventfd(n.efd, reg.addr, reg.length, datamatch=reg.datamatch, pio=reg.pio)
        except KvmError as err:
            # Most likely EEXIST: someone else owns that address. The slow path still works.
            self.stats.errors += 1
            log.warning("fastpath: %s: no ioeventfd at %#x: %s", n.label, reg.addr, err)
            return
        n.assigned.add(reg)
        self.stats.ioeventfd_assigned += 1

    def _deassign(self, n: _Notifier, reg: Registration) -> None:
        n.assigned.discard(reg)
        try:
            self.vm.ioeventfd(n.efd, reg.addr, reg.length, datamatch=reg.datamatch, pio=reg.pio, deassign=True)
        except KvmError as err:
            self.stats.errors += 1
            log.warning("fastpath: %s: deassigning ioeventfd at %#x: %s", n.label, reg.addr, err)
            return
        self.stats.ioeventfd_deassigned += 1

    def registrations(self) -> dict[str, list[Registration]]:
        """What is registered now, by queue label (for tests and the stats query)."""
        with self._lock:
            return {n.label: sorted(n.assigned, key=lambda r: (r.pio, r.addr, r.length)) for n in self._notifiers}

    # ---------------------------------------------------------------- teardown
    def close(self) -> None:
        """Stop following the bus, deassign every ioeventfd and stop watching the eventfds.

        The eventfds themselves are closed by :meth:`release`, after the IoThread has drained them.
        """
        self.bus.remove_mapping_listener(self.sync)
        with self._lock:
            self._closed = True
            for n in self._notifiers:
                for reg in list(n.assigned):
                    self._deassign(n, reg)

    def release(self) -> None:
        """Close the eventfds (after the IoThread stopped)."""
        with self._lock:
            for n in self._notifiers:
                self.iothread.remove_fd(n.efd)
                os.close(n.efd)
            self._notifiers = []
