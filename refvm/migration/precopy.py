"""Pre-copy: RAM is sent while the guest runs, then again where it was written, until little is left; only that
rest is sent with the guest stopped.

Written pages come from two logs: KVM's (vCPU writes; dirty_log.py) and GuestMemory's (device-model writes through
write/fill/write_u*).  Device models that hold zero-copy views of guest RAM (virtio rings and buffers) write past
GuestMemory's log, so a machine that ever handed out such a view migrates stop-and-copy instead (`usable`), and
one that hands out its first during pre-copy gets all its RAM sent again once stopped, until virtio marks its
writes at completion (Virtqueue.add_used, see dirty_log.py).
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from refvm.migration.dirty_log import KvmDirtyLog, Slot
from refvm.migration.stream import StreamWriter
from refvm.migration.wire import TARGET_PAGE_SIZE

MAX_PASSES = 10  # iterations after the first full copy, at most
STOP_PAGES = 256  # this few dirty pages (1 MiB) left: stop the guest and send them
PAGES_PER_PART = 256


def usable(machine: Any) -> bool:
    """Pre-copy needs a KVM VM and every device-model write to RAM in GuestMemory's log (no views handed out)."""
    return machine.vm is not None and machine.memory.views_handed_out == 0


class _Pages:
    """Sends pages by guest-physical address as offsets into the one RAM block (regions concatenated)."""

    def __init__(self, job: Any, writer: StreamWriter, block: str) -> None:
        self.job, self.writer, self.block = job, writer, block
        self.bases: list[tuple[int, int, int]] = []  # (gpa, size, offset of the region in the block)
        offset = 0
        for r in job.machine.memory.regions:
            self.bases.append((r.gpa, r.size, offset))
            offset += r.size

    def all(self) -> list[int]:
        return [gpa + page for gpa, size, _ in self.bases for page in range(0, size, TARGET_PAGE_SIZE)]

    def send(self, gpas: Iterable[int], last: bool = False) -> None:
        job, memory = self.job, self.job.machine.memory
        batch: list[tuple[str, int, bytes]] = []
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
                self.writer.ram_part(batch)
                job.transferred = self.writer.bytes_written
                batch = []
        if batch or last:
            self.writer.ram_part(batch, last=last)
            job.transferred = self.writer.bytes_written


def run(job: Any, writer: StreamWriter, block: str) -> None:
    """All RAM while the guest runs, then the pages written meanwhile, pass after pass, until at most STOP_PAGES
    (or MAX_PASSES); then stop the guest and send the rest as the RAM section's end. Leaves the machine paused."""
    machine = job.machine
    memory = machine.memory
    log = KvmDirtyLog(machine.vm, [Slot(i, r.gpa, r.size, r.host_address) for i, r in enumerate(memory.regions)])
    pages = _Pages(job, writer, block)
    views = memory.views_handed_out
    memory.start_dirty_log()
    log.start()
    try:
        log.sync()  # from here on, what the guest writes is logged; the first pass sends everything
        pages.send(pages.all())
        job.dirty_syncs = 1
        for _ in range(MAX_PASSES):
            dirty = set(log.sync()) | memory.take_dirty()
            job.dirty_syncs += 1
            if len(dirty) <= STOP_PAGES:
                pages.send(sorted(dirty))
                break
            pages.send(sorted(dirty))
        machine.pause()
        rest = set(log.sync()) | memory.take_dirty()
        if memory.views_handed_out != views:  # a device got a zero-copy view meanwhile: its writes went unlogged
            rest = set(pages.all())
        pages.send(sorted(rest), last=True)
        job.dirty_syncs += 1
    finally:
        log.stop()
        memory.stop_dirty_log()
