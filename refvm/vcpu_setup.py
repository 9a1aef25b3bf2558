"""Bridges the boot loaders (which only know guest memory) and the KVM vCPU.

Loaders return a BootCpuState; this module picks the loader for an image, writes that state into the
boot vCPU's registers, and gives every vCPU a CPUID table with its own APIC id.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from refvm.boot.cpu_state import BootCpuState, Segment
from refvm.boot.linux import load_linux
from refvm.boot.multiboot import load_multiboot
from refvm.memory import GuestMemory

#: "HdrS" at offset 0x202 marks a Linux bzImage (QEMU checks it before trying Multiboot, and so do we).
LINUX_MAGIC_OFFSET = 0x202
ELF_MAGIC = b"\x7fELF"
ELFCLASS64 = 2


def is_linux_image(image: bytes) -> bool:
    if image[LINUX_MAGIC_OFFSET : LINUX_MAGIC_OFFSET + 4] == b"HdrS":
        return True
    return image[:4] == ELF_MAGIC and len(image) > 4 and image[4] == ELFCLASS64 and not _has_multiboot(image)


def _has_multiboot(image: bytes) -> bool:
    head = image[:8192]
    for off in range(0, len(head) - 11, 4):
        if head[off : off + 4] == b"\x02\xb0\xad\x1b":
            return True
    return False


def load_kernel(
    memory: GuestMemory, image: bytes, path: str, cmdline: str, initrd: bytes | None
) -> BootCpuState:
    """Load a bzImage/vmlinux with the Linux boot protocol, anything else as Multiboot v1."""
    if is_linux_image(image):
        return load_linux(memory, image, cmdline=cmdline, initrd=initrd, name=path)
    modules = [(initrd, "initrd")] if initrd is not None else []
    return load_multiboot(memory, image, cmdline=cmdline, modules=modules, name=path)


def _kvm_segment(template: Any, seg: Segment) -> Any:
    return dataclasses.replace(
        template,
        selector=seg.selector,
        base=seg.base,
        limit=seg.limit,
        type=seg.type,
        present=seg.present,
        dpl=seg.dpl,
        db=seg.db,
        s=seg.s,
        l=seg.l,
        g=seg.g,
        unusable=0,
    )


def apply_boot_state(vcpu: Any, state: BootCpuState) -> None:
    """Put the boot vCPU into the mode and registers the loader asked for."""
    sregs = vcpu.get_sregs()
    sregs.cs = _kvm_segment(sregs.cs, state.cs)
    for name in ("ds", "es", "fs", "gs", "ss"):
        setattr(sregs, name, _kvm_segment(getattr(sregs, name), state.ds))
    sregs.gdt = dataclasses.replace(sregs.gdt, base=state.gdt_base, limit=state.gdt_limit)
    sregs.cr0 = state.cr0
    sregs.cr3 = state.cr3
    sregs.cr4 = state.cr4
    sregs.efer = state.efer
    vcpu.set_sregs(sregs)
    regs = vcpu.get_regs()
    for name, value in state.regs.items():
        setattr(regs, name, value)
    regs.rip = state.rip
    regs.rflags = state.rflags
    vcpu.set_regs(regs)


def setup_cpuid(machine: Any, supported: list[Any]) -> None:
    """Give every vCPU the CPUID of its -cpu model and -smp place (refvm/cpu), filtered by the host KVM.

    The plan (and QEMU's "host doesn't support requested feature" warnings) is made once per process; a
    guest reset recreates the vCPUs with the same tables.
    """
    import sys

    from refvm.cpu import CpuidError, Topology, build_cpuid, parse_cpu, plan_cpu
    from refvm.kvm import CpuidEntry

    cfg = machine.config
    host = [(e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx) for e in supported]
    plan = getattr(machine, "cpu_plan", None)
    if plan is None:
        try:
            plan = plan_cpu(parse_cpu(cfg.cpu), host)
        except (CpuidError, ValueError) as err:
            from refvm.machine import MachineError

            for line in getattr(err, "warnings", []):
                print(f"refvm: warning: {line}", file=sys.stderr)
            raise MachineError(str(err)) from None
        for line in plan.warnings:
            print(f"refvm: warning: {line}", file=sys.stderr)
        machine.cpu_plan = plan
    topo = cfg.topology or Topology(cfg.smp, 1, 1, cfg.smp, 1, cfg.smp)
    for runner in machine._runners:
        table = build_cpuid(plan, topo, runner.index, host)
        runner.vcpu.set_cpuid2([CpuidEntry(*e) for e in table])
