"""The vCPU state ioctls beyond registers: XSAVE, XCRs, local APIC, pending events, MP state, debug registers,
TSC frequency.

Mixed into ``Vcpu``. What a save/restore (migration, snapshot) of a vCPU needs besides ``get_regs``,
``get_sregs``, ``get_fpu`` and ``get_msrs`` (see ``Kvm.msr_index_list`` for which MSRs exist).
"""

from __future__ import annotations

from . import ioctls as I
from ._ffi import ffi
from ._sys import ioctl_int, ioctl_ptr
from .state import blob_accessors, view

#: Local APIC register offsets in ``struct kvm_lapic_state`` (the xAPIC MMIO page layout).
LAPIC_ID, LAPIC_TPR, LAPIC_LVT_LINT0, LAPIC_TIMER_ICR = 0x20, 0x80, 0x350, 0x380


class VcpuStateMixin:
    """Requires ``self._fd``, the vCPU's file descriptor."""

    _fd: int

    get_xsave, set_xsave = blob_accessors(
        "xsave", I.KVM_GET_XSAVE, I.KVM_SET_XSAVE,
        "KVM_GET_XSAVE: the 4 KiB XSAVE area (legacy FPU/SSE region first, then the XSAVE header)")
    get_lapic, set_lapic = blob_accessors(
        "lapic", I.KVM_GET_LAPIC, I.KVM_SET_LAPIC,
        "KVM_GET_LAPIC: the in-kernel local APIC's 1 KiB register page (needs the in-kernel irqchip)")
    get_vcpu_events, set_vcpu_events = blob_accessors(
        "vcpu events", I.KVM_GET_VCPU_EVENTS, I.KVM_SET_VCPU_EVENTS,
        "KVM_GET_VCPU_EVENTS: pending/injected exception, interrupt, NMI, SMM state; on set, ``flags`` "
        "(KVM_VCPUEVENT_VALID_*) says which optional parts apply")  # fmt: skip

    def get_xcrs(self) -> dict[int, int]:
        """KVM_GET_XCRS: extended control registers by number (XCR0 = enabled XSAVE features)."""
        c = view("struct kvm_xcrs")
        ioctl_ptr(self._fd, I.KVM_GET_XCRS, c)
        return {c.xcrs[i].xcr: c.xcrs[i].value for i in range(min(c.nr_xcrs, 16))}

    def set_xcrs(self, values: dict[int, int]) -> None:
        if len(values) > 16:
            raise ValueError(f"xcrs: {len(values)} registers, KVM takes at most 16")
        c = view("struct kvm_xcrs")
        c.nr_xcrs = len(values)
        for i, (xcr, value) in enumerate(sorted(values.items())):
            c.xcrs[i].xcr = xcr
            c.xcrs[i].value = value
        ioctl_ptr(self._fd, I.KVM_SET_XCRS, c)

    def get_mp_state(self) -> int:
        """KVM_GET_MP_STATE: KVM_MP_STATE_RUNNABLE, _UNINITIALIZED, _INIT_RECEIVED, _HALTED, ..."""
        c = ffi.new("struct kvm_mp_state *")
        ioctl_ptr(self._fd, I.KVM_GET_MP_STATE, c)
        return int(c.mp_state)

    def set_mp_state(self, state: int) -> None:
        ioctl_ptr(self._fd, I.KVM_SET_MP_STATE, ffi.new("struct kvm_mp_state *", {"mp_state": state}),
                  f"mp_state {state}")  # fmt: skip

    def get_debugregs(self) -> dict[str, int]:
        """KVM_GET_DEBUGREGS: DR0-DR3 (breakpoint addresses), DR6 (status) and DR7 (control)."""
        c = view("struct kvm_debugregs")
        ioctl_ptr(self._fd, I.KVM_GET_DEBUGREGS, c)
        return {**{f"dr{i}": int(c.db[i]) for i in range(4)}, "dr6": int(c.dr6), "dr7": int(c.dr7)}

    def set_debugregs(self, regs: dict[str, int]) -> None:
        """KVM_SET_DEBUGREGS (KVM refuses a DR6 or DR7 with any of bits 63:32 set: EINVAL)."""
        c = view("struct kvm_debugregs")
        for i in range(4):
            c.db[i] = regs[f"dr{i}"]
        c.dr6, c.dr7 = regs["dr6"], regs["dr7"]
        ioctl_ptr(self._fd, I.KVM_SET_DEBUGREGS, c, f"dr6 {regs['dr6']:#x} dr7 {regs['dr7']:#x}")

    def get_tsc_khz(self) -> int:
        """KVM_GET_TSC_KHZ: the guest's TSC frequency in kHz."""
        return ioctl_int(self._fd, I.KVM_GET_TSC_KHZ)

    def set_tsc_khz(self, khz: int) -> None:
        """KVM_SET_TSC_KHZ: scale the guest's TSC to ``khz`` (needs TSC scaling in the host, KVM_CAP_TSC_CONTROL)."""
        ioctl_int(self._fd, I.KVM_SET_TSC_KHZ, khz, f"{khz} kHz")
