"""A KVM vCPU's state as data: the "cpu" section (registers, FPU/XSAVE, XCR0, MSRs, pending events, MP state,
debug registers DR0-3/DR6/DR7, TSC frequency)
and the "apic" section (the in-kernel local APIC's register page), one of each per vCPU, instance id = vCPU index
(QEMU's names for the same sections).

The fields come from tables (every general register, every segment, every carried MSR), so the schema is
generated: `state_class` builds a DeviceState dataclass from (name, sfield) pairs.  Validation is the schema's
(each value fits its kind, segment attributes use only the VMX access-rights bits, MP state is an x86 one,
...), and whatever KVM itself refuses on load (an invalid CR0/CR4/EFER combination, an MSR it does not take)
becomes one line naming the section, the instance and the ioctl.

Which MSRs: those QEMU's kvm_put_msrs carries for a guest of this kind (read in target/i386/kvm/kvm.c), limited
to the ones the source KVM lists in KVM_GET_MSR_INDEX_LIST and can read; `msrs_present` says which were
saved, and only those are written back.  Order of restore, as QEMU's: registers, XSAVE, XCRs, special
registers (EFER and the APIC base before MSRs and the LAPIC), MSRs, then the LAPIC page, events, MP state.
"""
from __future__ import annotations

import dataclasses
import sys
from typing import Any

from refvm.migration.state import BOOL, U8, U16, U32, U64, DeviceState, Kind, StateError, buffer, sfield

U64X4 = Kind("uint64", width=8, count=4)

#: kvm_regs members, in the kernel's order (the 16 general registers, rip, rflags).
REG_NAMES = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11", "r12", "r13",
             "r14", "r15", "rip", "rflags")
SEG_NAMES = ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")
#: kvm_segment's attribute members packed as VMX access rights: (member, shift, width).
SEG_ATTR_BITS = (("type", 0, 4), ("s", 4, 1), ("dpl", 5, 2), ("present", 7, 1), ("avl", 12, 1), ("l", 13, 1),
                 ("db", 14, 1), ("g", 15, 1), ("unusable", 16, 1))
SEG_ATTR_MASK = sum(((1 << width) - 1) << shift for _, shift, width in SEG_ATTR_BITS)

#: (field, MSR index) carried per vCPU, at most 64 (one bit each in msrs_present).
MSRS = (
    ("tsc", 0x10), ("sysenter_cs", 0x174), ("sysenter_esp", 0x175), ("sysenter_eip", 0x176), ("pat", 0x277),
    ("star", 0xC0000081), ("lstar", 0xC0000082), ("cstar", 0xC0000083), ("fmask", 0xC0000084),
    ("kernel_gs_base", 0xC0000102), ("tsc_aux", 0xC0000103), ("tsc_adjust", 0x3B), ("tsc_deadline", 0x6E0),
    ("misc_enable", 0x1A0), ("smbase", 0x9E), ("smi_count", 0x34), ("feature_control", 0x3A),
    ("spec_ctrl", 0x48), ("virt_ssbd", 0xC001011F), ("hwcr", 0xC0010015), ("vm_hsave_pa", 0xC0010117),
    ("mcg_status", 0x17A), ("mcg_ctl", 0x17B),
    ("kvm_wall_clock", 0x11), ("kvm_system_time", 0x12), ("kvm_wall_clock_new", 0x4B564D00),
    ("kvm_system_time_new", 0x4B564D01), ("kvm_async_pf_en", 0x4B564D02), ("kvm_steal_time", 0x4B564D03),
    ("kvm_pv_eoi_en", 0x4B564D04), ("kvm_poll_control", 0x4B564D05), ("kvm_async_pf_int", 0x4B564D06),
    ("mtrr_def_type", 0x2FF), ("mtrr_fix64k_00000", 0x250), ("mtrr_fix16k_80000", 0x258),
    ("mtrr_fix16k_a0000", 0x259), *((f"mtrr_fix4k_{0xC0000 + i * 0x8000:05x}", 0x268 + i) for i in range(8)),
    *((f"mtrr_phys_{kind}{i}", 0x200 + 2 * i + (kind == "mask")) for i in range(8) for kind in ("base", "mask")),
)
assert len(MSRS) <= 64

#: kvm_vcpu_events members carried: (field, kind, path in the struct).
EVENTS = (
    ("exception_injected", BOOL, "exception.injected"), ("exception_nr", U8, "exception.nr"),
    ("exception_has_error_code", BOOL, "exception.has_error_code"),
    ("exception_pending", BOOL, "exception.pending"), ("exception_error_code", U32, "exception.error_code"),
    ("interrupt_injected", BOOL, "interrupt.injected"), ("interrupt_nr", U8, "interrupt.nr"),
    ("interrupt_soft", BOOL, "interrupt.soft"), ("interrupt_shadow", U8, "interrupt.shadow"),
    ("nmi_injected", BOOL, "nmi.injected"), ("nmi_pending", BOOL, "nmi.pending"), ("nmi_masked", BOOL, "nmi.masked"),
    ("sipi_vector", U32, "sipi_vector"), ("smi_smm", BOOL, "smi.smm"), ("smi_pending", BOOL, "smi.pending"),
    ("smi_inside_nmi", BOOL, "smi.smm_inside_nmi"), ("smi_latched_init", BOOL, "smi.latched_init"),
)
#: KVM_MP_STATE_RUNNABLE .. KVM_MP_STATE_SIPI_RECEIVED: the x86 ones.
MP_STATES = range(5)
FPU_SIZE, XSAVE_SIZE, LAPIC_SIZE = 416, 4096, 1024
DR6_RESET, DR7_RESET = 0xFFFF0FF0, 0x400  # the debug status and control registers after reset (SDM vol. 3 17.2)
DEBUGREGS = ("dr0", "dr1", "dr2", "dr3", "dr6", "dr7")


def state_class(name: str, vmsd_name: str, fields: list[tuple[str, Any]], doc: str) -> type[DeviceState]:
    """A DeviceState dataclass named `name` whose fields are (field name, sfield(...)) in order."""
    return dataclasses.make_dataclass(
        name, [(fname, Any, fdef) for fname, fdef in fields], bases=(DeviceState,),
        namespace={"VMSD_NAME": vmsd_name, "VERSION": 1, "__doc__": doc, "__module__": __name__})


def _cpu_fields() -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = [(r, sfield(U64, 0)) for r in REG_NAMES[:-1]]
    out.append(("rflags", sfield(U64, 2, lambda v: v & 2, "with bit 1 set")))
    for seg in SEG_NAMES:
        out += [(f"{seg}_base", sfield(U64, 0)), (f"{seg}_limit", sfield(U32, 0xFFFF)),
                (f"{seg}_selector", sfield(U16, 0)),
                (f"{seg}_attr", sfield(U32, 0x93, lambda v: not v & ~SEG_ATTR_MASK, "VMX access rights"))]
    for table in ("gdt", "idt"):
        out += [(f"{table}_base", sfield(U64, 0)), (f"{table}_limit", sfield(U16, 0xFFFF))]
    out += [(cr, sfield(U64, 0)) for cr in ("cr0", "cr2", "cr3", "cr4")]
    out += [("cr8", sfield(U64, 0, lambda v: v < 16, "a task priority (0..15)")), ("efer", sfield(U64, 0)),
            ("apic_base", sfield(U64, 0)), ("interrupt_bitmap", sfield(U64X4, (0, 0, 0, 0))),
            ("fpu", sfield(buffer(XSAVE_SIZE), b"", lambda v: len(v) in (FPU_SIZE, XSAVE_SIZE),
                           f"a kvm_fpu ({FPU_SIZE} bytes) or kvm_xsave ({XSAVE_SIZE} bytes)")),
            ("xcr0", sfield(U64, 0, lambda v: v == 0 or v & 1, "0 (not saved) or with x87 (bit 0) set")),
            ("msrs_present", sfield(U64, 0, lambda v: v < 1 << len(MSRS), f"a mask of {len(MSRS)} MSRs"))]
    out += [(f"msr_{name}", sfield(U64, 0)) for name, _ in MSRS]
    out += [(name, sfield(kind, False if kind is BOOL else 0)) for name, kind, _ in EVENTS]
    out.append(("mp_state", sfield(U32, 0, lambda v: v in MP_STATES, "an x86 KVM_MP_STATE (0..4)")))
    out += [(f"dr{i}", sfield(U64, 0)) for i in range(4)]
    out += [(name, sfield(U64, default, lambda v: v < 1 << 32, "a 32-bit value (KVM refuses bits 63:32)"))
            for name, default in (("dr6", DR6_RESET), ("dr7", DR7_RESET))]
    out.append(("tsc_khz", sfield(U32, 0)))  # 0: not saved (a KVM without KVM_CAP_GET_TSC_KHZ)
    return out


CpuState = state_class("CpuState", "cpu", _cpu_fields(),
                       "One vCPU: registers, FPU, XCR0, MSRs, events, MP state, debug registers, TSC frequency.")
ApicState = state_class("ApicState", "apic", [("regs", sfield(buffer(LAPIC_SIZE), bytes(LAPIC_SIZE),
                                               lambda v: len(v) == LAPIC_SIZE, f"{LAPIC_SIZE} bytes"))],
                        "The in-kernel local APIC of one vCPU: its register page (kvm_lapic_state).")


def refused(section: str, index: int, err: OSError) -> StateError:
    return StateError(f"migration stream: section '{section}' instance {index}: KVM refused the state: {err}")


def _pack_attr(seg: Any) -> int:
    return sum((getattr(seg, member) & ((1 << width) - 1)) << shift for member, shift, width in SEG_ATTR_BITS)


def _unpack_attr(attr: int) -> dict[str, int]:
    return {member: (attr >> shift) & ((1 << width) - 1) for member, shift, width in SEG_ATTR_BITS}


def _get_path(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _set_path(obj: Any, path: str, value: int) -> None:
    *parents, last = path.split(".")
    for part in parents:
        obj = getattr(obj, part)
    setattr(obj, last, value)


class KvmCpu:
    """A KVM vCPU seen as a migratable device (save/load), given the MSRs this host's KVM saves and restores."""

    def __init__(self, vcpu: Any, msr_index: set[int], xsave: bool = True) -> None:
        self.vcpu, self.msr_index, self.xsave = vcpu, msr_index, xsave

    def save(self) -> DeviceState:
        from refvm.kvm.state import view

        vcpu = self.vcpu
        values: dict[str, Any] = dataclasses.asdict(vcpu.get_regs())
        sregs = vcpu.get_sregs()
        for seg in SEG_NAMES:
            s = getattr(sregs, seg)
            values.update({f"{seg}_base": s.base, f"{seg}_limit": s.limit, f"{seg}_selector": s.selector,
                           f"{seg}_attr": _pack_attr(s)})
        for table in ("gdt", "idt"):
            values.update({f"{table}_base": getattr(sregs, table).base, f"{table}_limit": getattr(sregs, table).limit})
        values.update({n: getattr(sregs, n) for n in ("cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base")})
        values["interrupt_bitmap"] = tuple(sregs.interrupt_bitmap)
        values["fpu"] = vcpu.get_xsave() if self.xsave else vcpu.get_fpu()
        values["xcr0"] = vcpu.get_xcrs().get(0, 0) if self.xsave else 0
        values.update(self._save_msrs())
        events = view("struct kvm_vcpu_events", vcpu.get_vcpu_events())
        for name, kind, path in EVENTS:
            raw = int(_get_path(events, path))
            values[name] = bool(raw) if kind is BOOL else raw
        values["mp_state"] = vcpu.get_mp_state()
        values.update(vcpu.get_debugregs())
        values["tsc_khz"] = self._tsc_khz()
        return CpuState(**values).validate()

    def _tsc_khz(self) -> int:
        """The vCPU's TSC frequency, 0 where KVM cannot say (QEMU's env->tsc_khz)."""
        from refvm.kvm import KvmError

        try:
            return self.vcpu.get_tsc_khz()
        except KvmError:
            return 0

    def _set_tsc_khz(self, khz: int) -> None:
        """Give the vCPU the source's TSC frequency before its TSC is written.  As QEMU (kvm_arch_set_tsc_khz,
        whose failure kvm_arch_put_registers ignores): where the frequencies differ and KVM cannot scale, a
        warning, and the guest goes on at the host's frequency."""
        from refvm.kvm import KvmError

        here = self._tsc_khz()
        if not khz or khz == here:
            return
        try:
            self.vcpu.set_tsc_khz(khz)
        except KvmError:
            print(f"refvm: warning: TSC frequency mismatch between VM ({khz} kHz) and host ({here} kHz), "
                  "and TSC scaling unavailable", file=sys.stderr)

    def _save_msrs(self) -> dict[str, int]:
        """The carried MSRs this KVM lists; one that will not read is left out (its bit stays clear)."""
        from refvm.kvm import KvmError

        wanted = [(bit, name, index) for bit, (name, index) in enumerate(MSRS) if index in self.msr_index]
        try:
            got = self.vcpu.get_msrs([index for _, _, index in wanted])
        except KvmError:
            got = {}
            for _, _, index in wanted:
                try:
                    got.update(self.vcpu.get_msrs([index]))
                except KvmError:
                    pass
        out = {f"msr_{name}": got[index] for _, name, index in wanted if index in got}
        out["msrs_present"] = sum(1 << bit for bit, _, index in wanted if index in got)
        return out

    def load(self, state: Any) -> None:
        """Registers, FPU, XCR0, special registers and MSRs (then the LAPIC, then `load_late`), in QEMU's order;
        KVM's refusal of any part is one StateError line."""
        from refvm.kvm import DTable, KvmError, Regs, Segment, Sregs

        vcpu = self.vcpu
        self._set_tsc_khz(state.tsc_khz)
        try:
            vcpu.set_regs(Regs(**{r: getattr(state, r) for r in REG_NAMES}))
            if len(state.fpu) == XSAVE_SIZE:
                vcpu.set_xsave(state.fpu)
            else:
                vcpu.set_fpu(state.fpu)
            if state.xcr0:
                vcpu.set_xcrs({0: state.xcr0})
            segs = {seg: Segment(base=getattr(state, f"{seg}_base"), limit=getattr(state, f"{seg}_limit"),
                                 selector=getattr(state, f"{seg}_selector"),
                                 **_unpack_attr(getattr(state, f"{seg}_attr"))) for seg in SEG_NAMES}
            vcpu.set_sregs(Sregs(
                **segs, gdt=DTable(state.gdt_base, state.gdt_limit), idt=DTable(state.idt_base, state.idt_limit),
                cr0=state.cr0, cr2=state.cr2, cr3=state.cr3, cr4=state.cr4, cr8=state.cr8, efer=state.efer,
                apic_base=state.apic_base, interrupt_bitmap=state.interrupt_bitmap))
            msrs = {index: getattr(state, f"msr_{name}") for bit, (name, index) in enumerate(MSRS)
                    if state.msrs_present >> bit & 1}
            if msrs:
                vcpu.set_msrs(msrs)
        except (KvmError, ValueError) as err:
            raise refused("cpu", vcpu.id, err) from None

    def load_late(self, state: Any) -> None:
        """Pending events, MP state and debug registers, which KVM takes after the LAPIC page (QEMU's order)."""
        from refvm.kvm import KvmError
        from refvm.kvm import ioctls as I
        from refvm.kvm.state import blob, view

        events = view("struct kvm_vcpu_events")
        for name, _, path in EVENTS:
            _set_path(events, path, int(getattr(state, name)))
        events.flags = I.KVM_VCPUEVENT_VALID_NMI_PENDING | I.KVM_VCPUEVENT_VALID_SIPI_VECTOR | \
            I.KVM_VCPUEVENT_VALID_SHADOW
        if state.smi_smm or state.smi_pending or state.smi_inside_nmi or state.smi_latched_init:
            events.flags |= I.KVM_VCPUEVENT_VALID_SMM
        try:
            self.vcpu.set_vcpu_events(blob(events))
            self.vcpu.set_mp_state(state.mp_state)
            self.vcpu.set_debugregs({name: getattr(state, name) for name in DEBUGREGS})
        except (KvmError, ValueError) as err:
            raise refused("cpu", self.vcpu.id, err) from None


class KvmApic:
    """The in-kernel local APIC of one vCPU as a migratable device."""

    def __init__(self, vcpu: Any) -> None:
        self.vcpu = vcpu

    def save(self) -> DeviceState:
        return ApicState(regs=self.vcpu.get_lapic()).validate()

    def load(self, state: Any) -> None:
        from refvm.kvm import KvmError

        try:
            self.vcpu.set_lapic(state.regs)
        except (KvmError, ValueError) as err:
            raise refused("apic", self.vcpu.id, err) from None
