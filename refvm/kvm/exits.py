"""Typed results of ``Vcpu.run()``: one small class per KVM exit reason refvm handles.

Exit objects that carry a ``data`` memoryview point *into the vCPU's kvm_run page*: they are only valid
until the next ``run()`` of the same vCPU. That is deliberate — for an ``in``/MMIO read the device writes
its answer straight into the page (``set_value``) and KVM completes the instruction on the next KVM_RUN,
with no copy and no per-exit buffer.
"""

from __future__ import annotations

from typing import ClassVar

# KVM_EXIT_* reasons from <linux/kvm.h>
KVM_EXIT_UNKNOWN = 0
KVM_EXIT_EXCEPTION = 1
KVM_EXIT_IO = 2
KVM_EXIT_HYPERCALL = 3
KVM_EXIT_DEBUG = 4
KVM_EXIT_HLT = 5
KVM_EXIT_MMIO = 6
KVM_EXIT_IRQ_WINDOW_OPEN = 7
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_INTR = 10
KVM_EXIT_INTERNAL_ERROR = 17
KVM_EXIT_SYSTEM_EVENT = 24
KVM_EXIT_DIRTY_RING_FULL = 31

KVM_EXIT_IO_IN = 0
KVM_EXIT_IO_OUT = 1

KVM_SYSTEM_EVENT_SHUTDOWN = 1
KVM_SYSTEM_EVENT_RESET = 2
KVM_SYSTEM_EVENT_CRASH = 3

KVM_INTERNAL_ERROR_EMULATION = 1
KVM_INTERNAL_ERROR_SIMUL_EX = 2
KVM_INTERNAL_ERROR_DELIVERY_EV = 3
KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON = 4


class Exit:
    """Base of all exits; ``reason`` is the KVM_EXIT_* number."""

    __slots__ = ()
    reason: ClassVar[int] = KVM_EXIT_UNKNOWN

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._repr_fields())
        return f"{type(self).__name__}({fields})"

    def _repr_fields(self) -> tuple[str, ...]:
        return tuple(s for c in type(self).__mro__ for s in getattr(c, "__slots__", ()) if s != "data")


def _le_int(data: memoryview) -> int:
    return int.from_bytes(data, "little")


class IoExit(Exit):
    """Port I/O (KVM_EXIT_IO). ``data`` is ``size * count`` bytes of the kvm_run page.

    For an ``in`` (``is_write`` false) the device writes the result into ``data`` (e.g. ``set_value``)
    before the next ``run()``; for an ``out`` ``data`` holds what the guest wrote.
    """

    __slots__ = ("port", "size", "count", "is_write", "data")
    reason = KVM_EXIT_IO

    def __init__(self, port: int, size: int, count: int, is_write: bool, data: memoryview) -> None:
        self.port = port
        self.size = size
        self.count = count
        self.is_write = is_write
        self.data = data

    @property
    def value(self) -> int:
        """The (first) data item as an unsigned little-endian int; meant for ``count == 1``."""
        return int.from_bytes(self.data[: self.size], "little")

    @property
    def values(self) -> list[int]:
        """All ``count`` items (string I/O: ``rep ins``/``rep outs``)."""
        n = self.size
        d = self.data
        return [int.from_bytes(d[i : i + n], "little") for i in range(0, n * self.count, n)]

    def set_value(self, value: int) -> None:
        """Answer an ``in`` of ``count == 1``: store ``value`` (truncated to ``size`` bytes)."""
        n = self.size
        self.data[:n] = (value & ((1 << (8 * n)) - 1)).to_bytes(n, "little")


class MmioExit(Exit):
    """Access to guest-physical memory no slot backs (KVM_EXIT_MMIO); ``data`` is ``length`` bytes."""

    __slots__ = ("phys_addr", "length", "is_write", "data")
    reason = KVM_EXIT_MMIO

    def __init__(self, phys_addr: int, length: int, is_write: bool, data: memoryview) -> None:
        self.phys_addr = phys_addr
        self.length = length
        self.is_write = is_write
        self.data = data

    @property
    def value(self) -> int:
        return int.from_bytes(self.data, "little")

    def set_value(self, value: int) -> None:
        n = self.length
        self.data[:n] = (value & ((1 << (8 * n)) - 1)).to_bytes(n, "little")


class HltExit(Exit):
    """The guest executed HLT (only reaches userspace without the in-kernel irqchip)."""

    __slots__ = ()
    reason = KVM_EXIT_HLT


class ShutdownExit(Exit):
    """Triple fault / shutdown: the guest is dead until reset."""

    __slots__ = ()
    reason = KVM_EXIT_SHUTDOWN


class InterruptedExit(Exit):
    """KVM_RUN returned EINTR (a signal, or ``immediate_exit`` was set): not an error, just come back."""

    __slots__ = ()
    reason = KVM_EXIT_INTR


class InternalErrorExit(Exit):
    """KVM could not handle something (e.g. emulation failure); ``data`` are the ``ndata`` debug words."""

    __slots__ = ("suberror", "data")
    reason = KVM_EXIT_INTERNAL_ERROR

    def __init__(self, suberror: int, data: tuple[int, ...]) -> None:
        self.suberror = suberror
        self.data = data

    def _repr_fields(self) -> tuple[str, ...]:
        return ("suberror", "data")


class FailEntryExit(Exit):
    """VM entry failed; ``hardware_entry_failure_reason`` is the VMX/SVM reason code."""

    __slots__ = ("hardware_entry_failure_reason", "cpu")
    reason = KVM_EXIT_FAIL_ENTRY

    def __init__(self, hardware_entry_failure_reason: int, cpu: int) -> None:
        self.hardware_entry_failure_reason = hardware_entry_failure_reason
        self.cpu = cpu


class SystemEventExit(Exit):
    """KVM_EXIT_SYSTEM_EVENT (shutdown/reset/crash requested through e.g. PSCI or SEV)."""

    __slots__ = ("type", "flags", "data")
    reason = KVM_EXIT_SYSTEM_EVENT

    def __init__(self, type: int, data: tuple[int, ...]) -> None:  # noqa: A002 - kernel's field name
        self.type = type
        self.data = data
        self.flags = data[0] if data else 0

    def _repr_fields(self) -> tuple[str, ...]:
        return ("type", "data")


class DebugExit(Exit):
    """KVM_EXIT_DEBUG (guest debugging enabled through KVM_SET_GUEST_DEBUG)."""

    __slots__ = ("exception", "pc", "dr6", "dr7")
    reason = KVM_EXIT_DEBUG

    def __init__(self, exception: int, pc: int, dr6: int, dr7: int) -> None:
        self.exception = exception
        self.pc = pc
        self.dr6 = dr6
        self.dr7 = dr7


class DirtyRingFullExit(Exit):
    """KVM_EXIT_DIRTY_RING_FULL: this vCPU's dirty ring reached its soft limit; KVM_RUN returns it again until
    the rings are harvested and KVM_RESET_DIRTY_RINGS re-arms them."""

    __slots__ = ()


class UnknownExit(Exit):
    """Any exit reason refvm does not model; ``exit_reason`` is the raw KVM_EXIT_* number."""

    __slots__ = ("exit_reason", "hardware_exit_reason")

    def __init__(self, exit_reason: int, hardware_exit_reason: int) -> None:
        self.exit_reason = exit_reason
        self.hardware_exit_reason = hardware_exit_reason


#: Shared instances of the exits that carry no data (no per-exit allocation for them).
HLT = HltExit()
DIRTY_RING_FULL = DirtyRingFullExit()
SHUTDOWN = ShutdownExit()
INTERRUPTED = InterruptedExit()
