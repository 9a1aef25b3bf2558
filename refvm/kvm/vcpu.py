"""Vcpu: one virtual CPU — registers, MSRs, CPUID and the KVM_RUN exit loop.

``run()`` is the hot path (benchmarked by ``bench/exit_cost.py``). It uses ``fcntl.ioctl`` (which drops
the GIL, so other vCPU threads and the I/O thread keep running) *without* an argument: given ``0``,
fcntl.ioctl first tries (and fails) to parse it as a writable then a read-only buffer, raising and
clearing two TypeErrors — ~0.7 µs per call, most of refvm's overhead over C. It then decodes the
kvm_run header with one precompiled ``struct`` unpack, and hands out cached exit objects: a guest
hammering one port gets the same ``IoExit`` instance back, whose ``data`` view points into the (shared,
mmap'd) kvm_run page.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import struct
from typing import TYPE_CHECKING

from . import exits as X
from . import ioctls as I
from ._ffi import ffi
from ._sys import ioctl_ptr
from .errors import KvmError
from .types import CpuidEntry, Regs, Sregs, cpuid2_buffer, read_cpuid2
from .vcpu_state import VcpuStateMixin

if TYPE_CHECKING:
    from .vm import Vm

# kvm_run: exit_reason u32 @8; union @32. io = direction u8, size u8, port u16, count u32, data_offset u64.
_HDR = struct.Struct("<8xI20xBBHIQ")
_MMIO = struct.Struct("<QxxxxxxxxIB")  # phys_addr @32, data[8] @40, len @48, is_write @52
_FAIL = struct.Struct("<QI")
_INTERNAL = struct.Struct("<II")
_DEBUG = struct.Struct("<I4xQQQ")
_RUN_UNION = 32
_MMIO_DATA = 40
_EXIT_CACHE_MAX = 512


class Vcpu(VcpuStateMixin):
    """A vCPU fd plus its mmap'd kvm_run page. Created by ``Vm.create_vcpu()``.

    ``run()`` must be called from one thread at a time (KVM's rule too); other threads may set
    ``immediate_exit`` and signal the running thread to get an ``InterruptedExit`` back.
    """

    def __init__(self, vm: Vm, fd: int, vcpu_id: int, mmap_size: int) -> None:
        self.vm = vm
        self.id = vcpu_id
        self._fd = fd
        self._mm = mmap.mmap(fd, mmap_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._mv = memoryview(self._mm)
        self._cbuf = ffi.from_buffer(self._mm)
        #: ``struct kvm_run *`` over the shared page, for fields the typed exits do not cover.
        self.kvm_run = ffi.cast("struct kvm_run *", self._cbuf)
        self._io_cache: dict[tuple[int, ...], X.IoExit] = {}
        self._mmio_view = self._mv[_MMIO_DATA : _MMIO_DATA + 8]

    @property
    def fd(self) -> int:
        return self._fd

    def fileno(self) -> int:
        return self._fd

    # -- the exit loop --------------------------------------------------------------------------

    def run(self) -> X.Exit:
        """KVM_RUN once and return the exit. EINTR (signal or ``immediate_exit``) -> ``InterruptedExit``."""
        try:
            _run_ioctl(self._fd, _KVM_RUN)  # no arg: fcntl.ioctl then skips 2 failing buffer parses
        except InterruptedError:
            return X.INTERRUPTED
        except OSError as e:
            raise KvmError("KVM_RUN", e.errno or 0) from None
        hdr = _HDR.unpack_from(self._mm)
        if hdr[0] == 2:  # KVM_EXIT_IO
            ex = self._io_cache.get(hdr)
            if ex is None:
                ex = self._new_io_exit(hdr)
            return ex
        return self._decode_other(hdr[0])

    def _new_io_exit(self, hdr: tuple[int, ...]) -> X.IoExit:
        _, direction, size, port, count, off = hdr
        cache = self._io_cache
        if len(cache) >= _EXIT_CACHE_MAX:
            cache.clear()
        ex = X.IoExit(port, size, count, direction == X.KVM_EXIT_IO_OUT, self._mv[off : off + size * count])
        cache[hdr] = ex
        return ex

    def _decode_other(self, reason: int) -> X.Exit:
        mm = self._mm
        if reason == X.KVM_EXIT_MMIO:
            addr, length, is_write = _MMIO.unpack_from(mm, _RUN_UNION)
            return X.MmioExit(addr, length, bool(is_write), self._mmio_view[:length])
        if reason == X.KVM_EXIT_HLT:
            return X.HLT
        if reason == X.KVM_EXIT_SHUTDOWN:
            return X.SHUTDOWN
        if reason == X.KVM_EXIT_INTR:
            return X.INTERRUPTED
        if reason == X.KVM_EXIT_INTERNAL_ERROR:
            sub, ndata = _INTERNAL.unpack_from(mm, _RUN_UNION)
            ndata = min(ndata, 16)
            return X.InternalErrorExit(sub, struct.unpack_from(f"<{ndata}Q", mm, _RUN_UNION + 8))
        if reason == X.KVM_EXIT_FAIL_ENTRY:
            return X.FailEntryExit(*_FAIL.unpack_from(mm, _RUN_UNION))
        if reason == X.KVM_EXIT_SYSTEM_EVENT:
            typ, ndata = _INTERNAL.unpack_from(mm, _RUN_UNION)
            words = struct.unpack_from(f"<{min(max(ndata, 1), 16)}Q", mm, _RUN_UNION + 8)
            return X.SystemEventExit(typ, words)
        if reason == X.KVM_EXIT_DEBUG:
            return X.DebugExit(*_DEBUG.unpack_from(mm, _RUN_UNION))
        if reason == X.KVM_EXIT_DIRTY_RING_FULL:
            return X.DIRTY_RING_FULL
        return X.UnknownExit(reason, struct.unpack_from("<Q", mm, _RUN_UNION)[0])

    def map_dirty_ring(self, nbytes: int) -> mmap.mmap:
        """This vCPU's dirty ring (KVM_CAP_DIRTY_LOG_RING enabled on the VM with ring size ``nbytes``): an array
        of struct kvm_dirty_gfn shared with KVM, at page KVM_DIRTY_LOG_PAGE_OFFSET of the vCPU fd."""
        try:
            return mmap.mmap(self._fd, nbytes, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE,
                             offset=I.KVM_DIRTY_LOG_PAGE_OFFSET * mmap.PAGESIZE)
        except OSError as e:
            raise KvmError("mmap dirty ring", e.errno or 0) from None

    @property
    def immediate_exit(self) -> int:
        """kvm_run.immediate_exit: when non-zero, KVM_RUN returns EINTR at once (race-free vCPU stop)."""
        return self._mm[1]

    @immediate_exit.setter
    def immediate_exit(self, value: int) -> None:
        self._mm[1] = 1 if value else 0

    # -- registers ------------------------------------------------------------------------------

    def get_regs(self) -> Regs:
        c = ffi.new("struct kvm_regs *")
        ioctl_ptr(self._fd, I.KVM_GET_REGS, c)
        return Regs.from_c(c)

    def set_regs(self, regs: Regs) -> None:
        c = ffi.new("struct kvm_regs *")
        regs.to_c(c)
        ioctl_ptr(self._fd, I.KVM_SET_REGS, c)

    def get_sregs(self) -> Sregs:
        c = ffi.new("struct kvm_sregs *")
        ioctl_ptr(self._fd, I.KVM_GET_SREGS, c)
        return Sregs.from_c(c)

    def set_sregs(self, sregs: Sregs) -> None:
        c = ffi.new("struct kvm_sregs *")
        sregs.to_c(c)
        ioctl_ptr(self._fd, I.KVM_SET_SREGS, c)

    def get_fpu(self) -> bytes:
        """Raw ``struct kvm_fpu`` (416 bytes), for save/restore."""
        c = ffi.new("struct kvm_fpu *")
        ioctl_ptr(self._fd, I.KVM_GET_FPU, c)
        return bytes(ffi.buffer(c))

    def set_fpu(self, raw: bytes) -> None:
        c = ffi.new("struct kvm_fpu *")
        ffi.buffer(c)[:] = raw
        ioctl_ptr(self._fd, I.KVM_SET_FPU, c)

    # -- MSRs -----------------------------------------------------------------------------------

    def get_msrs(self, indices: list[int]) -> dict[int, int]:
        """Read MSRs. KVM stops at the first MSR it cannot read; that one is named in the KvmError."""
        n = len(indices)
        c = ffi.new("struct kvm_msrs *", {"nmsrs": n, "entries": n})
        for i, idx in enumerate(indices):
            c.entries[i].index = idx
        done = ioctl_ptr(self._fd, I.KVM_GET_MSRS, c)
        if done < n:
            raise KvmError("KVM_GET_MSRS", errno.EINVAL, f"MSR {indices[done]:#x} not readable")
        return {c.entries[i].index: c.entries[i].data for i in range(n)}

    def set_msrs(self, values: dict[int, int]) -> None:
        """Write MSRs; raises KvmError naming the first MSR KVM refused."""
        items = list(values.items())
        n = len(items)
        c = ffi.new("struct kvm_msrs *", {"nmsrs": n, "entries": n})
        for i, (idx, val) in enumerate(items):
            c.entries[i].index = idx
            c.entries[i].data = val
        done = ioctl_ptr(self._fd, I.KVM_SET_MSRS, c)
        if done < n:
            idx, val = items[done]
            raise KvmError("KVM_SET_MSRS", errno.EINVAL, f"MSR {idx:#x} <- {val:#x} refused")

    # -- CPUID ----------------------------------------------------------------------------------

    def get_supported_cpuid(self) -> list[CpuidEntry]:
        """What KVM can expose (KVM_GET_SUPPORTED_CPUID on /dev/kvm): the usual start for set_cpuid2."""
        return self.vm.kvm.supported_cpuid()

    def set_cpuid2(self, entries: list[CpuidEntry]) -> None:
        """KVM_SET_CPUID2 (on kvm-pvm only partly honoured: read back with get_cpuid2 / guest CPUID)."""
        ioctl_ptr(self._fd, I.KVM_SET_CPUID2, cpuid2_buffer(entries), f"{len(entries)} entries")

    def get_cpuid2(self) -> list[CpuidEntry]:
        """KVM_GET_CPUID2: the table last set with set_cpuid2."""
        return read_cpuid2(self._fd, I.KVM_GET_CPUID2)

    # -- lifetime -------------------------------------------------------------------------------

    def close(self) -> None:
        """Unmap kvm_run and close the fd. Exit objects from this vCPU must not be used afterwards."""
        if self._fd < 0:
            return
        self._io_cache.clear()
        self.kvm_run = None  # type: ignore[assignment]
        try:
            ffi.release(self._cbuf)
            self._mmio_view.release()
            self._mv.release()
            self._mm.close()
        except BufferError:
            pass  # a caller still holds an exit's data view: the mapping goes when that view dies
        os.close(self._fd)
        self._fd = -1

    def __enter__(self) -> Vcpu:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_run_ioctl = fcntl.ioctl
_KVM_RUN = I.KVM_RUN
