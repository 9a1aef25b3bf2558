"""KVM's dirty ring (KVM_CAP_DIRTY_LOG_RING): per vCPU, the pages it wrote, pushed by KVM as they happen.

The alternative to the bitmap of dirty_log.py, chosen by `-accel kvm,dirty-ring-size=N` (N entries per vCPU, a
power of two, as QEMU spells it).  The capability must be enabled on the VM before any vCPU exists
(:func:`enable`); each vCPU's ring is then mmap'd from its fd at page KVM_DIRTY_LOG_PAGE_OFFSET as an array of
struct kvm_dirty_gfn {u32 flags, u32 slot, u64 offset}.  KVM sets DIRTY on an entry it filled; the VMM reads
entries in order from where it stopped, marks each RESET, and KVM_RESET_DIRTY_RINGS write-protects those pages
again and frees the entries.  Only slots with KVM_MEM_LOG_DIRTY_PAGES push entries, so outside a migration the
rings stay empty and cost nothing.  A vCPU whose ring reaches its soft limit leaves KVM_RUN with
KVM_EXIT_DIRTY_RING_FULL; its thread calls :meth:`KvmDirtyRing.harvest` and enters again (vcpu_runner.py).
With a ring enabled KVM refuses KVM_GET_DIRTY_LOG, so pre-copy uses this instead of KvmDirtyLog (same methods).
"""
from __future__ import annotations

import struct
import threading
from typing import Any

from refvm.migration.dirty_log import Slot, slots_of
from refvm.migration.wire import TARGET_PAGE_SIZE

GFN_SIZE = 16  # sizeof(struct kvm_dirty_gfn)
_GFN = struct.Struct("<IIQ")
_U32 = struct.Struct("<I")


def enable_for(vm: Any, config: Any) -> None:
    """KVM_ENABLE_CAP of the ring on ``vm`` (no vCPU created yet) with ``config.dirty_ring_size`` entries per vCPU,
    if asked; ValueError with the one line `-accel TEXT: why` when this KVM has no ring (QEMU would fall back to
    the bitmap with a warning; refvm refuses what it cannot do) or cannot have this size (QEMU's texts).

    KVM_CAP_DIRTY_LOG_RING_ACQ_REL where the host has it (QEMU's preference), else KVM_CAP_DIRTY_LOG_RING; both
    report the largest ring in bytes."""
    from refvm.kvm import KvmError, caps

    entries = config.dirty_ring_size
    if not entries:
        return
    cap = caps.KVM_CAP_DIRTY_LOG_RING_ACQ_REL
    max_bytes = vm.check_extension(cap)
    if max_bytes <= 0:
        cap = caps.KVM_CAP_DIRTY_LOG_RING
        max_bytes = vm.check_extension(cap)
    where = f"-accel {config.accel_text}"
    if max_bytes <= 0:
        raise ValueError(f"{where}: this KVM has no dirty ring (KVM_CAP_DIRTY_LOG_RING)")
    if entries * GFN_SIZE > max_bytes:
        raise ValueError(f"{where}: KVM dirty ring size {entries} too big (maximum is {max_bytes // GFN_SIZE}).  "
                         "Please use a smaller value.")
    try:
        vm.enable_cap(cap, entries * GFN_SIZE)
    except KvmError as err:
        raise ValueError(f"{where}: Enabling of KVM dirty ring failed: {err}. Suggested minimum value is 1024.") \
            from None


def rings_for(vm: Any, config: Any, memory: Any, vcpus: list[Any]) -> KvmDirtyRing | None:
    """The rings of ``vcpus`` over ``memory``'s slots (slot i = region i, as the machine registers them)."""
    if not config.dirty_ring_size:
        return None
    return KvmDirtyRing(vm, slots_of(memory), vcpus, config.dirty_ring_size)


class KvmDirtyRing:
    """The dirty rings of a VM's vCPUs over its RAM ``slots``: start(), sync(), stop() as KvmDirtyLog, and
    harvest() for a vCPU whose ring is full."""

    def __init__(self, vm: Any, slots: list[Slot], vcpus: list[Any], entries: int) -> None:
        self.vm, self.slots, self.entries = vm, slots, entries
        self.rings = [v.map_dirty_ring(entries * GFN_SIZE) for v in vcpus]
        self._next = [0] * len(self.rings)  # per ring: the entry to look at next (free-running)
        self._pending: set[int] = set()
        self._lock = threading.Lock()
        self.active = False
        self.harvests = 0  # KVM_RESET_DIRTY_RINGS calls that freed entries (ring-full exits included)

    def _set_logging(self, on: bool) -> None:
        from refvm.kvm import ioctls as I

        flags = I.KVM_MEM_LOG_DIRTY_PAGES if on else 0
        for s in self.slots:
            self.vm.set_user_memory_region(s.slot, s.gpa, s.size, s.host_address, flags)

    def start(self) -> None:
        """Log from now on (KVM write-protects the slots); every page counts as dirty until the first sync."""
        self._set_logging(True)
        self.active = True

    def harvest(self) -> None:
        """Move every DIRTY entry of every ring into the pending set and give the entries back to KVM.

        Bounded by the ring size per ring; an entry naming a slot or page refvm never registered (the ring is
        KVM's, but be strict) is reset and dropped."""
        from refvm.kvm import ioctls as I

        dirty, reset = I.KVM_DIRTY_GFN_F_DIRTY, I.KVM_DIRTY_GFN_F_RESET
        mask = self.entries - 1
        with self._lock:
            found = 0
            for i, ring in enumerate(self.rings):
                index = self._next[i]
                for _ in range(self.entries):
                    off = GFN_SIZE * (index & mask)
                    flags, slot, offset = _GFN.unpack_from(ring, off)
                    if not flags & dirty:
                        break
                    if slot < len(self.slots) and offset < self.slots[slot].pages:
                        self._pending.add(self.slots[slot].gpa + offset * TARGET_PAGE_SIZE)
                    _U32.pack_into(ring, off, reset)
                    index += 1
                    found += 1
                self._next[i] = index
            if found:
                self.vm.reset_dirty_rings()
                self.harvests += 1

    def sync(self) -> list[int]:
        """Guest-physical addresses of the pages written since start() or the last sync(), in order."""
        self.harvest()
        with self._lock:
            dirty, self._pending = sorted(self._pending), set()
        return dirty

    def stop(self) -> None:
        """Stop logging; entries still in the rings are given back (the next start begins clean)."""
        if self.active:
            self._set_logging(False)
            self.active = False
            self.harvest()
            with self._lock:
                self._pending.clear()

    def close(self) -> None:
        for ring in self.rings:
            ring.close()
        self.rings = []
