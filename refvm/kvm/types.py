"""Plain Python register/CPUID types and their conversion to and from the cffi structs.

Callers get mutable dataclasses (easy to print, compare and tweak) instead of cdata, so no cffi object
ever escapes the binding layer and state can be copied or serialised (migration) without a live fd.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field

from ._ffi import ffi
from ._sys import ioctl_ptr
from .errors import KvmError

REG_NAMES = (
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
    "rip", "rflags",
)  # fmt: skip


@dataclass
class Regs:
    """General-purpose registers (struct kvm_regs). rflags bit 1 is architecturally always set."""

    rax: int = 0
    rbx: int = 0
    rcx: int = 0
    rdx: int = 0
    rsi: int = 0
    rdi: int = 0
    rsp: int = 0
    rbp: int = 0
    r8: int = 0
    r9: int = 0
    r10: int = 0
    r11: int = 0
    r12: int = 0
    r13: int = 0
    r14: int = 0
    r15: int = 0
    rip: int = 0
    rflags: int = 0x2

    @classmethod
    def from_c(cls, c: object) -> Regs:
        return cls(*(getattr(c, n) for n in REG_NAMES))

    def to_c(self, c: object) -> None:
        for n in REG_NAMES:
            setattr(c, n, getattr(self, n))


SEG_FIELDS = ("base", "limit", "selector", "type", "present", "dpl", "db", "s", "l", "g", "avl", "unusable")
SEG_NAMES = ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")


@dataclass
class Segment:
    """A segment register's hidden state (struct kvm_segment)."""

    base: int = 0
    limit: int = 0xFFFF
    selector: int = 0
    type: int = 0
    present: int = 1
    dpl: int = 0
    db: int = 0
    s: int = 1
    l: int = 0  # noqa: E741 - the kernel's field name
    g: int = 0
    avl: int = 0
    unusable: int = 0

    @classmethod
    def from_c(cls, c: object) -> Segment:
        return cls(*(getattr(c, n) for n in SEG_FIELDS))

    def to_c(self, c: object) -> None:
        for n in SEG_FIELDS:
            setattr(c, n, getattr(self, n))


@dataclass
class DTable:
    """GDTR/IDTR (struct kvm_dtable)."""

    base: int = 0
    limit: int = 0xFFFF


@dataclass
class Sregs:
    """Special registers (struct kvm_sregs): segments, descriptor tables, control registers, EFER."""

    cs: Segment = field(default_factory=Segment)
    ds: Segment = field(default_factory=Segment)
    es: Segment = field(default_factory=Segment)
    fs: Segment = field(default_factory=Segment)
    gs: Segment = field(default_factory=Segment)
    ss: Segment = field(default_factory=Segment)
    tr: Segment = field(default_factory=Segment)
    ldt: Segment = field(default_factory=Segment)
    gdt: DTable = field(default_factory=DTable)
    idt: DTable = field(default_factory=DTable)
    cr0: int = 0
    cr2: int = 0
    cr3: int = 0
    cr4: int = 0
    cr8: int = 0
    efer: int = 0
    apic_base: int = 0
    #: pending external interrupt bitmap (4 x u64); KVM_SET_SREGS injects from it, so keep it when copying.
    interrupt_bitmap: tuple[int, int, int, int] = (0, 0, 0, 0)

    @classmethod
    def from_c(cls, c: object) -> Sregs:
        return cls(
            *(Segment.from_c(getattr(c, n)) for n in SEG_NAMES),
            DTable(c.gdt.base, c.gdt.limit),
            DTable(c.idt.base, c.idt.limit),
            c.cr0, c.cr2, c.cr3, c.cr4, c.cr8, c.efer, c.apic_base,
            tuple(c.interrupt_bitmap),
        )  # fmt: skip

    def to_c(self, c: object) -> None:
        for n in SEG_NAMES:
            getattr(self, n).to_c(getattr(c, n))
        c.gdt.base, c.gdt.limit = self.gdt.base, self.gdt.limit
        c.idt.base, c.idt.limit = self.idt.base, self.idt.limit
        c.cr0, c.cr2, c.cr3, c.cr4, c.cr8 = self.cr0, self.cr2, self.cr3, self.cr4, self.cr8
        c.efer, c.apic_base = self.efer, self.apic_base
        for i, v in enumerate(self.interrupt_bitmap):
            c.interrupt_bitmap[i] = v


CPUID_FIELDS = ("function", "index", "flags", "eax", "ebx", "ecx", "edx")


@dataclass
class CpuidEntry:
    """One CPUID leaf/subleaf (struct kvm_cpuid_entry2)."""

    function: int
    index: int = 0
    flags: int = 0
    eax: int = 0
    ebx: int = 0
    ecx: int = 0
    edx: int = 0

    @classmethod
    def from_c(cls, c: object) -> CpuidEntry:
        return cls(*(getattr(c, n) for n in CPUID_FIELDS))

    def to_c(self, c: object) -> None:
        for n in CPUID_FIELDS:
            setattr(c, n, getattr(self, n))


def cpuid2_buffer(entries: list[CpuidEntry]) -> object:
    """Build a ``struct kvm_cpuid2 *`` holding ``entries``."""
    buf = ffi.new("struct kvm_cpuid2 *", {"nent": len(entries), "entries": len(entries)})
    for i, e in enumerate(entries):
        e.to_c(buf.entries[i])
    return buf


def cpuid2_entries(buf: object) -> list[CpuidEntry]:
    return [CpuidEntry.from_c(buf.entries[i]) for i in range(buf.nent)]


__all__ = ["Regs", "Segment", "DTable", "Sregs", "CpuidEntry", "cpuid2_buffer", "cpuid2_entries"]


def read_cpuid2(fd: int, request: int) -> list[CpuidEntry]:
    """KVM_GET_SUPPORTED_CPUID / KVM_GET_CPUID2: the kernel answers E2BIG until the buffer is big enough."""
    n = 64
    while True:
        buf = ffi.new("struct kvm_cpuid2 *", {"nent": n, "entries": n})
        try:
            ioctl_ptr(fd, request, buf)
        except KvmError as e:
            if e.errno == errno.E2BIG and n < 4096:
                n *= 2
                continue
            raise
        return cpuid2_entries(buf)
