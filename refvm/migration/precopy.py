"""Pre-copy: RAM is sent while the guest runs, then again where it was written, until what is left could be sent
within `downtime-limit` at the bandwidth measured so far; only that rest is sent with the guest stopped.

Written pages come from two logs: KVM's (vCPU writes; dirty_log.py) and GuestMemory's (device-model writes through
write/fill/write_u*).  Device models that hold zero-copy views of guest RAM (virtio rings and buffers) write past
GuestMemory's log, so a machine that ever handed out such a view migrates without pre-copy instead (`usable`), and
one that hands out its first during pre-copy gets all its RAM sent again once stopped, until virtio marks its
writes at completion (Virtqueue.add_used, see dirty_log.py).

The job drives the two phases, so that the guest stops, devices are saved and QEMU's events come in QEMU's order
between them: :meth:`PreCopy.iterate` (guest running) and :meth:`PreCopy.finish` (guest stopped).
"""
from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from refvm.migration.dirty_log import KvmDirtyLog, Slot
from refvm.migration.stream import StreamWriter
from refvm.migration.wire import TARGET_PAGE_SIZE

MAX_PASSES = 10  # iterations after the first full copy, at most (QEMU has no cap; a guest dirtying faster than
#                  the link would otherwise never converge, and refvm has no auto-converge throttling)
PAGES_PER_PART = 256


def usable(machine: Any) -> bool:
    """Pre-copy needs a KVM VM and every device-model write to RAM in GuestMemory's log (no views handed out)."""
    return machine.vm is not None and machine.memory.views_handed_out == 0


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
        self.log = KvmDirtyLog(job.machine.vm,
                               [Slot(i, r.gpa, r.size, r.host_address) for i, r in enumerate(self.memory.regions)])
        self.views = self.memory.views_handed_out
        self.remaining = 0  # dirty pages known at the last sync (query-migrate's remaining)
        self._logging = False
        self.first_pass_done = False
        self._carry: set[int] = set()

    def all(self) -> list[int]:
        return [gpa + page for gpa, size, _ in self.bases for page in range(0, size, TARGET_PAGE_SIZE)]

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
        runs; returns when the rest fits `downtime-limit` (or after MAX_PASSES), the guest still running."""
        self.send(self.all(), throttle=True)
        self.first_pass_done = True
        for _ in range(MAX_PASSES):
            started = time.monotonic()
            dirty = self._sync()
            if len(dirty) <= self._pages_within_downtime():
                self._carry = dirty
                return
            self.send(sorted(dirty), throttle=True)
            self.job.dirty_rate = int(len(dirty) / max(time.monotonic() - started, 1e-3))
        self._carry = set()

    def _pages_within_downtime(self) -> int:
        """How many pages the link moves in downtime-limit ms, at the rate measured so far (QEMU's threshold)."""
        elapsed = time.monotonic() - self.job.pass_started
        rate = self.writer.bytes_written / elapsed if elapsed > 0 else 0.0
        limit = self.job.options.param("max-bandwidth")
        if limit:
            rate = min(rate, limit)
        return int(rate * self.job.options.param("downtime-limit") / 1000 / TARGET_PAGE_SIZE)

    def finish(self) -> None:
        """The guest is stopped and devices are saved: send every page still dirty as the RAM section's end."""
        rest = self._carry | self._sync()
        if self.memory.views_handed_out != self.views:  # a zero-copy view appeared meanwhile: writes went unlogged
            rest = set(self.all())
        if self.job.machine.deviations.active("migration-drop-dirty"):
            rest = set()
        self.send(sorted(rest), last=True)
        self.remaining = 0
        self.close()

    def close(self) -> None:
        """Stop both dirty logs (also on failure or cancel)."""
        if self._logging:
            self._logging = False
            self.log.stop()
            self.memory.stop_dirty_log()

    def send(self, gpas: Iterable[int], last: bool = False, throttle: bool = False) -> None:
        job, memory, writer = self.job, self.memory, self.writer
        batch: list[tuple[str, int, bytes]] = []
        pass_start, pass_bytes = time.monotonic(), writer.bytes_written
        for gpa in gpas:
            if job._cancel.is_set():
                raise OSError("cancelled")
            base = next((b for b in self.bases if b[0] <= gpa < b[0] + b[1]), None)
            if base is None:
                continue
            data = memory.read(gpa, TARGET_PAGE_SIZE)
            batch.append((self.block, base[2] + gpa - base[0], data))
            if any(data):
                job.normal += 1
            else:
                job.duplicate += 1
            if len(batch) == PAGES_PER_PART:
                writer.ram_part(batch)
                job.transferred = writer.bytes_written
                batch = []
                if throttle:
                    job._throttle(writer.bytes_written - pass_bytes, pass_start)
        if batch or last:
            writer.ram_part(batch, last=last)
            job.transferred = writer.bytes_written
