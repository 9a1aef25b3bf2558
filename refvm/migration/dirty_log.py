"""KVM's dirty page log over a VM's RAM slots: the pages vCPUs wrote since the last look, for pre-copy.

`start()` turns on KVM_MEM_LOG_DIRTY_PAGES on every slot; with KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 (present on
kvm-pvm) the log is read with KVM_GET_DIRTY_LOG and the pages found are write-protected again with
KVM_CLEAR_DIRTY_LOG before their contents are sent, so a vCPU write that follows is caught by the next `sync()`
(without the capability KVM_GET_DIRTY_LOG clears and protects in one step).

What this log never sees: writes by refvm's own device models into guest RAM (they go through the host mapping,
not the guest's page tables).  Those land in GuestMemory's own log (start_dirty_log/take_dirty): the writes made
through refvm/memory.py (write, fill, write_u*: devices, the MSI-to-RAM path, the qtest server) by itself, and
those made through the memoryviews refvm/virtio keeps (a ring's used area, device-writable buffers: blk reads,
net receive, console, rng) as the ring engines mark them with GuestMemory.mark_dirty (Virtqueue._log_used at
completion, _log_ring at every ring store).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from refvm.migration.wire import TARGET_PAGE_SIZE

ALL_ONES = (1 << 64) - 1


@dataclass(frozen=True)
class Slot:
    """One KVM memory slot as registered: its number, guest-physical base, size and host address."""

    slot: int
    gpa: int
    size: int
    host_address: int

    @property
    def pages(self) -> int:
        return self.size // TARGET_PAGE_SIZE


def slots_of(memory: Any) -> list[Slot]:
    """The KVM slots of a GuestMemory as refvm registers them: slot i is region i."""
    return [Slot(i, r.gpa, r.size, r.host_address) for i, r in enumerate(memory.regions)]


def pages_of(bitmap: bytes, gpa: int) -> list[int]:
    """Guest-physical addresses of the set bits of a KVM dirty bitmap (bit i: the page at gpa + i pages), in
    order.  Read 64 bits at a time: a word of zeroes costs one test, a word of ones (a guest rewriting a range)
    one range(); only mixed words go bit by bit."""
    padded = bitmap + bytes(-len(bitmap) % 8)
    out: list[int] = []
    span = 64 * TARGET_PAGE_SIZE
    for index, word in enumerate(memoryview(padded).cast("Q")):  # little-endian: bit i of the word is page i
        if not word:
            continue
        base = gpa + index * span
        if word == ALL_ONES:
            out.extend(range(base, base + span, TARGET_PAGE_SIZE))
            continue
        while word:
            low = word & -word
            out.append(base + (low.bit_length() - 1) * TARGET_PAGE_SIZE)
            word ^= low
    return out


class KvmDirtyLog:
    """The dirty log of `slots` on `vm` (a refvm.kvm.Vm)."""

    def __init__(self, vm: Any, slots: list[Slot]) -> None:
        from refvm.kvm import caps

        self.vm, self.slots = vm, slots
        self.manual = bool(vm.check_extension(caps.KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2))
        self.active = False

    def _set_logging(self, on: bool) -> None:
        from refvm.kvm import ioctls as I

        flags = I.KVM_MEM_LOG_DIRTY_PAGES if on else 0
        for s in self.slots:
            self.vm.set_user_memory_region(s.slot, s.gpa, s.size, s.host_address, flags)

    def start(self) -> None:
        """Log from now on; every page counts as dirty until the first sync (the caller sends them all)."""
        from refvm.kvm import caps
        from refvm.kvm import ioctls as I

        if self.manual:
            self.vm.enable_cap(caps.KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, I.KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE)
        self._set_logging(True)
        self.active = True

    def sync(self) -> list[int]:
        """Guest-physical addresses of the pages written since start() or the last sync(), in order."""
        dirty: list[int] = []
        for s in self.slots:
            bitmap = self.vm.get_dirty_log(s.slot, s.pages)
            if bitmap == bytes(len(bitmap)):  # one memcmp, not a Python walk
                continue
            if self.manual:
                self.vm.clear_dirty_log(s.slot, 0, s.pages, bitmap)
            dirty += pages_of(bitmap, s.gpa)
        return dirty

    def stop(self) -> None:
        """Stop logging (a cancelled or finished migration; the slots stay mapped)."""
        if self.active:
            self._set_logging(False)
            self.active = False
