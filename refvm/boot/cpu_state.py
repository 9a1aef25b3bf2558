"""The initial vCPU state a loader asks for, and the GDT that backs its segments.

Loaders never touch KVM: they describe registers here and the Machine applies them
(KVM_SET_REGS / KVM_SET_SREGS). The segment registers' hidden parts are set directly, but a guest
that reloads a selector reads the descriptor from the GDT, so every loader also writes a GDT
whose entries match these Segments exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

CR0_PE = 1 << 0
CR0_ET = 1 << 4
CR0_NE = 1 << 5
CR0_PG = 1 << 31
CR4_PAE = 1 << 5
EFER_LME = 1 << 8
EFER_LMA = 1 << 10

SEG_TYPE_CODE_XR = 0xB  # execute/read, accessed (accessed set so the CPU never writes the GDT)
SEG_TYPE_DATA_RW = 0x3  # read/write, accessed
SEG_TYPE_TSS_BUSY = 0xB  # system segment (s=0): busy 32/64-bit TSS, what a CPU has after reset


class Memory(Protocol):
    """The part of refvm.memory.GuestMemory the loaders use."""

    @property
    def size(self) -> int: ...
    def write(self, gpa: int, data: bytes) -> None: ...
    def read(self, gpa: int, length: int) -> bytes: ...


@dataclass
class Segment:
    """A segment register as KVM's ``struct kvm_segment`` sees it.

    ``limit`` is the byte-granular limit (0xFFFFFFFF for a flat 4 GiB segment), as KVM wants it;
    the GDT encoding scales it by 4 KiB when ``g`` is set.
    """

    selector: int
    base: int = 0
    limit: int = 0xFFFFFFFF
    type: int = SEG_TYPE_DATA_RW
    present: int = 1
    dpl: int = 0
    db: int = 1
    s: int = 1
    l: int = 0  # noqa: E741 - the architectural name of the long-mode bit
    g: int = 1

    def descriptor(self) -> int:
        """The 8-byte GDT descriptor for this segment."""
        limit = self.limit >> 12 if self.g else self.limit
        if limit > 0xFFFFF:
            raise ValueError(f"segment limit {self.limit:#x} does not fit 20 bits with g={self.g}")
        access = (self.type & 0xF) | (self.s & 1) << 4 | (self.dpl & 3) << 5 | (self.present & 1) << 7
        flags = (self.l & 1) << 1 | (self.db & 1) << 2 | (self.g & 1) << 3
        return (
            (limit & 0xFFFF)
            | (self.base & 0xFFFFFF) << 16
            | access << 40
            | (limit >> 16) << 48
            | flags << 52
            | (self.base >> 24 & 0xFF) << 56
        )


def flat_code32(selector: int) -> Segment:
    return Segment(selector, type=SEG_TYPE_CODE_XR, db=1, l=0)


def flat_code64(selector: int) -> Segment:
    # In long mode D must be 0 when L is 1 (D=1,L=1 is reserved).
    return Segment(selector, type=SEG_TYPE_CODE_XR, db=0, l=1)


def flat_data(selector: int) -> Segment:
    return Segment(selector, type=SEG_TYPE_DATA_RW, db=1)


def reset_tr() -> Segment:
    """TR as after CPU reset: no GDT entry needed; a guest loads its own TSS with LTR."""
    return Segment(0, limit=0xFFFF, type=SEG_TYPE_TSS_BUSY, db=0, s=0, g=0)


def build_gdt(segments: list[Segment]) -> bytes:
    """A GDT with a null entry at 0 and each segment at the index its selector names."""
    count = max(s.selector >> 3 for s in segments) + 1
    table = [0] * count
    for seg in segments:
        if seg.selector & 7:
            raise ValueError(f"selector {seg.selector:#x}: GDT selectors with RPL 0 and TI 0 expected")
        table[seg.selector >> 3] = seg.descriptor()
    return b"".join(d.to_bytes(8, "little") for d in table)


@dataclass
class BootCpuState:
    """Everything the Machine must load into vCPU 0 before the first KVM_RUN.

    ``ds`` is used for DS, ES, FS, GS and SS alike: both protocols want flat data segments there.
    Registers absent from ``regs`` are zero.
    """

    mode: Literal["protected32", "long64"]
    rip: int
    regs: dict[str, int]
    cs: Segment
    ds: Segment
    gdt_base: int
    gdt_limit: int
    cr0: int
    cr3: int
    cr4: int
    efer: int
    rflags: int = 0x2
    tr: Segment = field(default_factory=reset_tr)
    idt_base: int = 0
    idt_limit: int = 0
