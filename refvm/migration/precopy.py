"""Pre-copy: RAM is sent while the guest runs, then again where it was written, until what is left could be sent
within `downtime-limit` at the bandwidth measured so far; only that rest is sent with the guest stopped.

Written pages come from two logs: KVM's (vCPU writes; dirty_log.py, or the dirty ring, dirty_ring.py) and
GuestMemory's (device-model writes: through write/fill/write_u*, and through the zero-copy views virtio keeps of
rings and buffers, which the ring engines mark at completion and at every ring store, refvm/virtio/queue.py).

The job drives the two phases, so that the guest stops, devices are saved and QEMU's events come in QEMU's order
between them: :meth:`PreCopy.iterate` (guest running) and :meth:`PreCopy.finish` (guest stopped).
"""
from __future__ import annotations

import operator
import time
from collections.abc import Iterable, Iterator
from itertools import repeat
from typing import Any

from refvm.migration import resident
from refvm.migration.dirty_log import KvmDirtyLog, slots_of
from refvm.migration.ram_parts import RamParts, send_held
from refvm.migration.stream import StreamWriter
from refvm.migration.wire import TARGET_PAGE_SIZE

MAX_PASSES = 10  # iterations after the first full copy, at most (QEMU has no cap; a guest dirtying faster than
#                  the link would otherwise never converge, and refvm has no auto-converge throttling)
STALLED_PASSES = 2  # passes in a row that did not shrink the dirty set by 10% before the guest is stopped anyway
PAGES_PER_PART = 256
PAGE_SHIFT = TARGET_PAGE_SIZE.bit_length() - 1


def usable(machine: Any) -> bool:
    """Pre-copy needs KVM's log of vCPU writes: a machine without a VM (qtest) compares page digests instead."""
    return machine.vm is not None


class PreCopy:
    """Sends pages by guest-physical address as offsets into the one RAM block (regions concatenated)."""

    def __init__(self, job: Any, writer: StreamWriter, block: str) -> None:
        self.job, self.writer, self.block = job, writer, block
        self.memory = job.machine.memory
        self.bases: list[tuple[int, int, int]] = []  # (gpa, size, offset of the region in the block)
        offset = 0
        for r in self.memory.regions:
            self.bases.append((r.gpa, r.size, offset))
            offset += r.size
        # KVM's dirty ring with -accel kvm,dirty-ring-size=N (KVM then refuses the bitmap), else the bitmap.
        self.log = job.machine.dirty_ring or KvmDirtyLog(job.machine.vm, slots_of(self.memory))
        self.remaining = 0  # dirty pages known at the last sync (query-migrate's remaining)
        self._logging = False
        self.first_pass_done = False
        self._carry: set[int] = set()  # frame numbers left for switchover
        self._prepared: list[tuple[list[bytes | memoryview], int]] = []  # their parts, built before the stop
        self._zero_pfns: set[int] = set()  # those of them sent as ZERO records
        self._rate = 0.0  # bytes/s of the last pass, while it was sending (not held back by max-bandwidth)
        self._held = 0.0  # seconds the passes so far waited for max-bandwidth

    def _sync(self) -> set[int]:
        """Page frame numbers (gpa >> 12) written since the last sync, from both logs.  Numbers, not addresses,
        in the set: an int hashes to itself, and addresses (multiples of 4096) all fall in the same few slots of
        a set's table, which made each sync and union ~6x slower."""
        shift = repeat(PAGE_SHIFT)
        dirty = set(map(operator.rshift, self.log.sync(), shift))
        dirty.update(map(operator.rshift, self.memory.take_dirty(), shift))
        self.job._sync()
        self.remaining = len(dirty)
        return dirty

    def start(self) -> None:
        """Setup: both logs on and synced once (QEMU's first bitmap sync, before the status goes active)."""
        self.memory.start_dirty_log()
        self.log.start()
        self._logging = True
        self._sync()  # from here on, what the guest writes is logged; the first pass sends everything

    def iterate(self) -> None:
        """All RAM (at most max-bandwidth), then the pages written meanwhile, pass after pass, while the guest
        runs; returns when the rest fits `downtime-limit` at the rate of the last pass, when the guest dirties
        as fast as the passes send (STALLED_PASSES passes in a row that left at least 90% as many pages dirty
        as the one before: more passes would only add time), or after MAX_PASSES; the guest still running."""
        started = time.monotonic()
        self._send_runs(self._first_runs(), throttle=True)
        self.first_pass_done = True
        self._rate = self.writer.bytes_written / max(time.monotonic() - self.job.pass_started - self._held, 1e-3)
        previous, stalled = 0, 0
        for _ in range(MAX_PASSES):
            dirty = self._sync()
            stalled = stalled + 1 if previous and len(dirty) * 10 >= previous * 9 else 0
            if len(dirty) <= self._pages_within_downtime() or stalled >= STALLED_PASSES:
                self._carry = dirty
                self._prepare()
                return
            previous, started, before, held = len(dirty), time.monotonic(), self.writer.bytes_written, self._held
            self.send(sorted(dirty), throttle=True)
            elapsed = max(time.monotonic() - started, 1e-3)
            self._rate = (self.writer.bytes_written - before) / max(elapsed - (self._held - held), 1e-3)
            self.job.dirty_rate = int(len(dirty) / elapsed)
        self._carry = set()

    def _pages_within_downtime(self) -> int:
        """How many pages the link moves in downtime-limit ms at the rate of the last pass (QEMU's threshold),
        capped by max-bandwidth.  The rate leaves out the time the pass waited for max-bandwidth: the pass at
        switchover is not held back, and counting the waits made a guest that could stop after the first pass
        go through another full one."""
        rate = self._rate
        limit = self.job.options.param("max-bandwidth")
        if limit:
            rate = min(rate, limit)
        return int(rate * self.job.options.param("downtime-limit") / 1000 / TARGET_PAGE_SIZE)

    def _prepare(self) -> None:
        """Build the parts of the pages left for switchover now, while the guest still runs, so that at the stop
        they are only queued: a part holds views of guest RAM, whose bytes the channel reads when it writes them
        (after the stop), so only the ZERO records depend on what the pages held here; a page sent as ZERO and
        written again before the stop is sent again (finish).  Measured: ~5 ms of encoding for 16 MiB moved out
        of the downtime."""
        parts = RamParts(self.writer, self.block, self.job, PAGES_PER_PART, held=self._prepared)
        for offset, _, view in self._runs(sorted(self._carry)):
            assert view is not None
            parts.add_run(offset, view)
        parts.flush()
        self._zero_pfns = {self._pfn_at(offset) for offset in parts.zero_offsets}

    def _pfn_at(self, offset: int) -> int:
        """The frame number of the page at ``offset`` in the RAM block."""
        gpa, _, base = next(b for b in self.bases if b[2] <= offset < b[2] + b[1])
        return (gpa + offset - base) >> PAGE_SHIFT

    def send_prepared(self) -> None:
        """The guest has stopped: queue the parts built before the stop, first thing, so the channel is busy
        while devices are saved.  A page a device writes meanwhile (a drained request) may go torn in them; the
        device log has it, and :meth:`finish` sends it again, later in the stream, where it wins."""
        send_held(self.writer, self._prepared)
        self._prepared = []

    def finish(self) -> None:
        """Devices are saved: send every page still dirty as the RAM section's end: the parts built before the
        stop (unless :meth:`send_prepared` did), then the pages written since that were not in them, or were in
        them as ZERO records.  The logs stay on until :meth:`close` (after the stream is flushed: turning KVM's
        log off rewrites the memory slots, 1-7 ms here, which QEMU too does in its cleanup, not in the
        downtime)."""
        self.send_prepared()
        new = self._sync()
        rest = (new - self._carry) | (new & self._zero_pfns)
        self.send(sorted(rest), last=True)
        self.remaining = 0

    def close(self) -> None:
        """Stop both dirty logs (also on failure or cancel), and drop prepared parts (their views pin guest RAM)."""
        self._prepared = []
        if self._logging:
            self._logging = False
            self.log.stop()
            self.memory.stop_dirty_log()

    def _first_runs(self) -> Iterator[tuple[int, int, memoryview | None]]:
        """The first pass: every page, PAGES_PER_PART at a time; a chunk that pagemap says was never touched comes
        as known zeroes (None) without being looked at (reading it would fault in the zero page, page by page)."""
        most = PAGES_PER_PART * TARGET_PAGE_SIZE
        for (gpa, size, base), region in zip(self.bases, self.memory.regions, strict=True):
            touched = resident.touched_chunks(region.host_address, size, PAGES_PER_PART)
            for index, start in enumerate(range(0, size, most)):
                length = min(most, size - start)
                if touched is None or touched[index]:
                    yield base + start, length, self._view(gpa + start, length)
                else:
                    if self.job._cancel.is_set():
                        raise OSError("cancelled")
                    yield base + start, length, None

    def _runs(self, pfns: list[int]) -> Iterator[tuple[int, int, memoryview | None]]:
        """(offset in the block, length, view of the pages) for ascending page frame numbers: runs of adjacent
        pages in one
        region (up to PAGES_PER_PART pages), each one view with one bounds check, not page by page; stops at a
        cancel.  The runs' ends are found by C loops (map over the differences, list.index for each break): at
        switchover a Python statement per page costs more than the kernel's copy of it."""
        most = PAGES_PER_PART * TARGET_PAGE_SIZE
        apart = list(map((1).__ne__, map(operator.sub, pfns[1:], pfns[:-1])))
        apart.append(True)  # the last page ends the last run
        start = 0
        while start < len(pfns):
            end = apart.index(True, start) + 1  # pfns[start:end] are adjacent
            gpa, stop = pfns[start] << PAGE_SHIFT, (pfns[end - 1] + 1) << PAGE_SHIFT
            start = end
            while gpa < stop:
                region = next((b for b in self.bases if b[0] <= gpa < b[0] + b[1]), None)
                if region is None:  # not RAM (nothing registers such a page; skipped as before)
                    gpa += TARGET_PAGE_SIZE
                    continue
                length = min(stop, region[0] + region[1]) - gpa
                for at in range(0, length, most):
                    n = min(most, length - at)
                    yield gpa + at - region[0] + region[2], n, self._view(gpa + at, n)
                gpa += length

    def _view(self, gpa: int, length: int) -> memoryview:
        if self.job._cancel.is_set():
            raise OSError("cancelled")
        return self.memory.view(gpa, length)

    def send(self, pfns: list[int], last: bool = False, throttle: bool = False) -> None:
        """Pages by frame number (gpa >> 12), ascending, PAGES_PER_PART to a section part (`last`: the end)."""
        self._send_runs(self._runs(pfns), last, throttle)

    def _send_runs(self, runs: Iterable[tuple[int, int, memoryview | None]], last: bool = False,
                   throttle: bool = False) -> None:
        """Runs of adjacent pages (None: known zeroes); a run of zero pages goes as a part of its own without
        looking at each page, the others as gather lists (ram_parts.RamParts)."""
        job, writer = self.job, self.writer
        parts = RamParts(writer, self.block, job, PAGES_PER_PART)
        pass_start, pass_bytes = time.monotonic(), writer.bytes_written
        for offset, length, view in runs:
            if view is None:
                parts.zero_run(offset, length // TARGET_PAGE_SIZE)
            else:
                parts.add_run(offset, view)
            job.transferred = writer.bytes_written
            if throttle:
                waited = time.monotonic()
                job._throttle(writer.bytes_written - pass_bytes, pass_start)
                self._held += time.monotonic() - waited
        parts.flush(last=last)
        job.transferred = writer.bytes_written
