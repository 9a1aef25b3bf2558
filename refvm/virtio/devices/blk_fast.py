"""virtio-blk's compiled fast path, as one device uses it: when it may run, and the ring state around a call.

The Python model in :mod:`refvm.virtio.devices.blk` costs ~37 µs of CPU per 4 KiB request here (one empty
Python call is ~0.2 µs, and a request takes ~150 of them). ``blk_fast.c`` serves the common request -- a
split-ring IN or OUT on a raw image -- in one C call per notification: walk, bounds checks, ``preadv`` /
``pwritev`` straight between the file and guest RAM, status byte, used element, used idx. At the first
request it does not take (any other type, anything malformed or unusual, an I/O error or short transfer)
it stops without consuming it, and :meth:`VirtioBlk.handle_queue` gives that request to the Python model,
so every spec answer to bad input still comes from Python.

It is used only where a plain ``preadv``/``pwritev`` on one file descriptor is exactly what the Python path
would do, checked at every notification (each can change at run time):

* the backend names such a file (:meth:`refvm.block.raw.RawFile.vectored_file`: raw, no O_DIRECT, open);
* a split ring (packed rings stay in Python);
* the drive is in no throttle group (``block_set_io_throttle`` may add it to one at any time);
* no migration dirty log is running (``GuestMemory.dirty_logging``: the C path marks nothing; a log that
  starts during a call marks all of RAM once, so no write of that call is lost);
* no deviation that changes a completion is on (``used-len-zero``);
* writes only when they need no flush (writeback cache, not read-only): other writes go to Python.

Off switches: the device property ``x-fastpath=off`` and ``REFVM_BLK_FASTPATH=0`` in the environment.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

from refvm.deviations import Deviations
from refvm.memory import GuestMemory
from refvm.virtio.device import ISR_QUEUE
from refvm.virtio.devices import blk_fast_build
from refvm.virtio.queue import Virtqueue
from refvm.virtio.split_queue import SplitQueue

__all__ = ["BlkFastPath", "CompiledRequests", "ENV", "DONE", "IRQ", "WRITE_OK", "DECIDE"]

ENV = "REFVM_BLK_FASTPATH"

# flags of bf_serve (blk_fast.c)
WRITE_OK = 1
_INDIRECT = 2
_EVENT_IDX = 4
_SUPPRESSED = 8
DECIDE = 16
#: bits of serve()'s answer (above the served count)
DONE = 1 << 16
IRQ = 1 << 17
_DECIDED = 1 << 18


class BlkFastPath:
    """The C side of one virtio-blk device: its image descriptor, its RAM table and its queues' areas."""

    def __init__(self, ffi: Any, lib: Any, mem: GuestMemory, file: Any, blk_size: int, capacity: int) -> None:
        self._ffi = ffi
        self._serve = lib.bf_serve
        self._mem = mem
        #: The raw image (:class:`refvm.block.raw.RawFile`): its ``closed`` is tested before each call.
        self.file = file
        self.dev = ffi.new("struct bf_dev *")
        self.dev.fd = file.fd
        self.dev.blk_size = blk_size
        self.dev.capacity = capacity
        self._regions: Any = None
        self._nregions = -1

    @classmethod
    def create(cls, mem: GuestMemory, backend: object, blk_size: int, capacity: int) -> BlkFastPath | None:
        """The fast path for a device on ``backend``, or None when it cannot apply (or is switched off)."""
        if os.environ.get(ENV, "1") == "0":
            return None
        vectored_file = getattr(backend, "vectored_file", None)
        file = vectored_file() if vectored_file is not None else None
        if file is None:
            return None
        loaded = blk_fast_build.load()
        if loaded is None:
            return None
        return cls(*loaded, mem, file, blk_size, capacity)

    def set_capacity(self, sectors: int) -> None:
        """The disk was resized (the device's ``capacity``, in 512-byte sectors)."""
        self.dev.capacity = sectors

    def _sync_regions(self) -> None:
        """The RAM table the C side bounds-checks every descriptor against (rebuilt when RAM changes:
        after GuestMemory.close it is empty, and every request goes to Python, which refuses it)."""
        regions = self._mem.regions
        table = self._ffi.new("struct bf_region[]", max(1, len(regions)))
        for i, r in enumerate(regions):
            table[i].gpa, table[i].size, table[i].hva = r.gpa, r.size, self._ffi.cast("uint8_t *", r.host_address)
        self._regions = table
        self._nregions = len(regions)
        self.dev.regions = table
        self.dev.nregions = len(regions)

    def _map(self, q: SplitQueue) -> tuple[Any, int, tuple[object, ...]]:
        """``(struct bf_queue, ring-feature flags, area views)`` of ``q``'s current mapping, kept as
        ``q.compiled``, which the queue drops with its views (reset, re-enable, load). Holding the views pins
        their mapping, so the C pointers into them stay valid as long as the entry lives."""
        cq = self._ffi.new("struct bf_queue *")
        for name, gpa in (("desc", q.desc_addr), ("avail", q.driver_addr), ("used", q.device_addr)):
            region = self._mem.find_region(gpa)
            assert region is not None  # Virtqueue._activate checked each area is RAM inside one region
            setattr(cq, name, self._ffi.cast("uint8_t *", region.host_address + gpa - region.gpa))
        cq.size = q.size
        cq.limit = max(q.size, q.max_size)
        flags = (_INDIRECT if q.indirect else 0) | (_EVENT_IDX if q.event_idx else 0)
        entry = q.compiled = (cq, flags, (q._desc, q._driver, q._device))
        return entry

    def serve(self, q: SplitQueue, flags: int, budget: int) -> int:
        """Serve up to ``budget`` requests of ``q`` (mapped: ``q._desc`` is set); returns ``served | DONE | IRQ``.

        ``flags``: WRITE_OK (a write is a plain pwritev) and DECIDE (take the interrupt decision when done).
        DONE: no request is left, or the budget is spent; without it the next request is Python's. IRQ (only
        with DECIDE and DONE): the driver wants a used buffer notification for the batch.
        """
        entry = q.compiled
        if entry is None:
            entry = self._map(q)
        if len(self._mem.regions) != self._nregions:
            self._sync_regions()
        flags |= entry[1] | (_SUPPRESSED if q.suppressed else 0)  # type: ignore[index]
        # the queue's cursors, read (and applied back) as SplitQueue.served_outside documents
        r = self._serve(self.dev, entry[0], q.last_avail_idx, q._avail_shadow, q.used_idx, q._avail_event, flags,
                        budget, q._signalled_used, q._pushed)
        q.served_outside(r & 0xFFFF, (r >> 19) & 0xFFFF, ((r >> 35) & 0x1FFFF) - 1, r & _DECIDED != 0)
        if self._mem.dirty_logging:  # a migration started logging during the call (it was off before it)
            self._mark_all_dirty()
        return r & 0x3FFFF

    def _mark_all_dirty(self) -> None:
        """The C side marks nothing and does not say where it wrote: when a migration's log started while it
        ran, every RAM page counts as written (rare: at most once per migration start, and only in a race)."""
        mem = self._mem
        if mem.drop_view_marks:  # x-deviation=migration-drop-dirty
            return
        for region in mem.regions:
            mem.mark_dirty(region.gpa, region.size)

    @property
    def requests_served(self) -> int:
        """Requests the compiled path completed, ever (tests and benchmarks check what served what)."""
        return int(self.dev.served)

    def take_counters(self) -> tuple[int, int, int, int]:
        """``(rd_bytes, wr_bytes, rd_operations, wr_operations)`` served since the last call."""
        d = self.dev
        out = (d.rd_bytes, d.wr_bytes, d.rd_ops, d.wr_ops)
        if any(out):
            d.rd_bytes = d.wr_bytes = d.rd_ops = d.wr_ops = 0
        return out


class CompiledRequests:
    """The compiled path's side of :class:`~refvm.virtio.devices.blk.VirtioBlk`, as a mixin (before
    VirtioDevice in the bases): when it applies, the notification's run through it, and the counters."""

    mem: GuestMemory
    throttle: Any
    deviations: Deviations
    writeback: bool
    readonly: bool
    _host_writethrough: bool
    _stats: dict[str, int]
    isr: int
    lock: threading.RLock
    on_used_buffer: Callable[[int], None]
    #: None when it cannot apply or is off.
    _fast: BlkFastPath | None

    @property
    def stats(self) -> dict[str, int]:
        """Request counters (QEMU's blockstats names), the compiled path's included (folded in under the
        device lock: the C side counts while it runs with the GIL released, and the lock is held then)."""
        fast = self._fast
        if fast is not None:
            with self.lock:
                rd_bytes, wr_bytes, rd_ops, wr_ops = fast.take_counters()
                st = self._stats
                st["rd_bytes"] += rd_bytes
                st["wr_bytes"] += wr_bytes
                st["rd_operations"] += rd_ops
                st["wr_operations"] += wr_ops
        return self._stats

    def _fast_for(self, queue: Virtqueue) -> BlkFastPath | None:
        """The compiled path, if it may serve ``queue`` now (the conditions: this module's docstring)."""
        fast = self._fast
        if fast is None or fast.file.closed or type(queue) is not SplitQueue:
            return None
        throttle = self.throttle
        if self.mem.dirty_logging or (throttle is not None and throttle.group is not None):
            return None
        return None if "used-len-zero" in self.deviations else fast

    def _fast_flags(self) -> int:
        """WRITE_OK when a write needs nothing but the pwritev (writeback cache, writable drive)."""
        return WRITE_OK if self.writeback and not (self.readonly or self._host_writethrough) else 0

    @property
    def fast_path_active(self) -> bool:
        """Whether the compiled path serves queue 0 now (tests and benchmarks check they measure what they say)."""
        queues = getattr(self, "queues", None)
        return bool(queues) and self._fast_for(queues[0]) is not None

    @property
    def fast_requests_served(self) -> int:
        """Requests the compiled path completed so far (0 without it)."""
        return self._fast.requests_served if self._fast is not None else 0

    def _run(self, q: Virtqueue) -> None:
        """A notification: the compiled path serves the whole batch and decides the interrupt when it can;
        anything else (a request it does not take, an unmapped queue) goes the Python way."""
        fast = self._fast_for(q)
        if fast is not None and q._desc is not None:  # unmapped: Python's pop maps and checks the areas
            r = fast.serve(q, self._fast_flags() | DECIDE, q.size)  # type: ignore[arg-type]
            if r & DONE:
                if r & IRQ:  # live: queue_notify/thaw checked, and the compiled path never fails the device
                    self.isr |= ISR_QUEUE
                    self.on_used_buffer(q.index)
                return
        super()._run(q)  # type: ignore[misc]  # VirtioDevice._run: the Python model
