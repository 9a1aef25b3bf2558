"""Pre-copy: RAM is sent while the guest runs, then again where it was written, until what is left could be sent
within `downtime-limit` at the bandwidth measured so far; only that rest is sent with the guest stopped.

Written pages come from two logs: KVM's (vCPU writes; dirty_log.py, or the dirty ring, dirty_ring.py) and
GuestMemory's (device-model writes: through write/fill/write_u*, and through the zero-copy views virtio keeps of
rings and buffers, which the ring engines mark at completion and at every ring store, refvm/virtio/queue.py).

The job drives the two phases, so that the guest stops, devices are saved and QEMU's events come in QEMU's order
between them: :meth:`PreCopy.iterate` (guest running) and :meth:`PreCopy.finish` (guest stopped).
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

from refvm.migration import resident
from refvm.migration.dirty_log import KvmDirtyLog, slots_of
from refvm.migration.stream import StreamWriter
from refvm.migration.wire import TARGET_PAGE_SIZE

MAX_PASSES = 10  # iterations after the first full copy, at most (QEMU has no cap; a guest dirtying faster than
#                  the link would otherwise never converge, and refvm has no auto-converge throttling)
STALLED_PASSES = 2  # passes in a row that did not shrink the dirty set by 10% before the guest is stopped anyway
PAGES_PER_PART = 256
ZERO_PAGE = bytes(TARGET_PAGE_SIZE)
ZERO_RUN = bytes(PAGES_PER_PART * TARGET_PAGE_SIZE)


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
        self._carry: set[int] = set()
        self._rate = 0.0  # bytes/s of the last pass, while it was sending (not held back by max-bandwidth)
        self._held = 0.0  # seconds the passes so far waited for max-bandwidth

    def _sync(self) -> set[int]:
        dirty = set(self.log.sync()) | self.memory.take_dirty()
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

    def finish(self) -> None:
        """The guest is stopped and devices are saved: send every page still dirty as the RAM section's end."""
        rest = self._carry | self._sync()
        self.send(sorted(rest), last=True)
        self.remaining = 0
        self.close()

    def close(self) -> None:
        """Stop both dirty logs (also on failure or cancel)."""
        if self._logging:
            self._logging = False
            self.log.stop()
            self.memory.stop_dirty_log()

    def _first_runs(self) -> Iterator[tuple[int, int, bytes | None]]:
        """The first pass: every page, PAGES_PER_PART at a time; a chunk that pagemap says was never touched comes
        as known zeroes (None) without being read (reading it would fault in the zero page, page by page)."""
        most = PAGES_PER_PART * TARGET_PAGE_SIZE
        for (gpa, size, base), region in zip(self.bases, self.memory.regions, strict=True):
            touched = resident.touched_chunks(region.host_address, size, PAGES_PER_PART)
            for index, start in enumerate(range(0, size, most)):
                length = min(most, size - start)
                if touched is None or touched[index]:
                    yield base + start, length, self._read(gpa + start, length)
                else:
                    if self.job._cancel.is_set():
                        raise OSError("cancelled")
                    yield base + start, length, None

    def _runs(self, gpas: Iterable[int]) -> Iterator[tuple[int, int, bytes | None]]:
        """(offset in the block, length, bytes) for ascending ``gpas``: runs of adjacent pages in one region, read
        with one bounds check and one copy each (up to PAGES_PER_PART pages), not page by page; stops at a
        cancel."""
        run_gpa = run_off = run_len = region_end = 0
        most = PAGES_PER_PART * TARGET_PAGE_SIZE
        for gpa in gpas:
            if gpa == run_gpa + run_len and run_len and run_len < most and gpa < region_end:
                run_len += TARGET_PAGE_SIZE
                continue
            if run_len:
                yield run_off, run_len, self._read(run_gpa, run_len)
            region = next((b for b in self.bases if b[0] <= gpa < b[0] + b[1]), None)
            if region is None:
                run_len = 0
                continue
            region_end = region[0] + region[1]
            run_gpa, run_off, run_len = gpa, gpa - region[0] + region[2], TARGET_PAGE_SIZE
        if run_len:
            yield run_off, run_len, self._read(run_gpa, run_len)

    def _read(self, gpa: int, length: int) -> bytes:
        if self.job._cancel.is_set():
            raise OSError("cancelled")
        return self.memory.read(gpa, length)

    def send(self, gpas: Iterable[int], last: bool = False, throttle: bool = False) -> None:
        """Pages by guest-physical address, ascending, PAGES_PER_PART to a section part (`last`: the end)."""
        self._send_runs(self._runs(gpas), last, throttle)

    def _send_runs(self, runs: Iterable[tuple[int, int, bytes | None]], last: bool = False,
                   throttle: bool = False) -> None:
        """Runs of adjacent pages (None: known zeroes); a run of zero pages goes as a part of its own without
        looking at each page (one memcmp for the run)."""
        job, writer = self.job, self.writer
        batch: list[tuple[int, bytes | memoryview, bool]] = []
        pass_start, pass_bytes = time.monotonic(), writer.bytes_written
        for offset, length, data in runs:
            if data is None or data == ZERO_RUN[:length]:  # one memcmp for up to PAGES_PER_PART pages
                if batch:
                    writer.ram_block_part(self.block, batch)
                    batch = []
                writer.ram_zero_run(self.block, offset, length // TARGET_PAGE_SIZE)
                job.duplicate += length // TARGET_PAGE_SIZE
            else:
                view = memoryview(data)  # pages as slices of the run: the part's join is their one copy
                for at in range(0, length, TARGET_PAGE_SIZE):
                    zero = data.startswith(ZERO_PAGE, at)  # a memcmp in place (== on a view goes byte by byte)
                    batch.append((offset + at, view[at : at + TARGET_PAGE_SIZE], zero))
                    if zero:
                        job.duplicate += 1
                    else:
                        job.normal += 1
                    if len(batch) == PAGES_PER_PART:
                        writer.ram_block_part(self.block, batch)
                        batch = []
            job.transferred = writer.bytes_written
            if throttle:
                waited = time.monotonic()
                job._throttle(writer.bytes_written - pass_bytes, pass_start)
                self._held += time.monotonic() - waited
        if batch or last:
            writer.ram_block_part(self.block, batch, last=last)
            job.transferred = writer.bytes_written
