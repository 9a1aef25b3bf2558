"""Just enough ELF to load an executable by its program headers.

Both loaders place PT_LOAD segments at their *physical* addresses (p_paddr): a kernel linked to
run high (Linux' 0xffffffff81000000) is loaded where its paddr says and maps itself later.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from refvm.boot.errors import BootError

ELF_MAGIC = b"\x7fELF"
ELFCLASS32 = 1
ELFCLASS64 = 2
ELFDATA2LSB = 1
ET_EXEC = 2
PT_LOAD = 1
EM_386 = 3
EM_X86_64 = 62


@dataclass(frozen=True)
class LoadSegment:
    """One PT_LOAD program header."""

    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int


@dataclass(frozen=True)
class ElfImage:
    elf_class: int
    machine: int
    entry: int
    segments: list[LoadSegment]

    def entry_physical(self) -> int:
        """The entry point as a physical address. e_entry is taken as physical when it lies in a
        segment's physical range (Linux' vmlinux and identity-linked kernels); otherwise it is
        translated through the segment whose virtual range holds it."""
        if any(s.paddr <= self.entry < s.paddr + s.memsz for s in self.segments):
            return self.entry
        for seg in self.segments:
            if seg.vaddr <= self.entry < seg.vaddr + seg.memsz:
                return self.entry - seg.vaddr + seg.paddr
        return self.entry


def is_elf(image: bytes) -> bool:
    return image[:4] == ELF_MAGIC


def elf_class(image: bytes) -> int:
    return image[4] if len(image) > 4 else 0


def parse_elf(image: bytes, name: str) -> ElfImage:
    """Parse the ELF header and PT_LOAD headers, checking every offset against the file size."""
    if not is_elf(image) or len(image) < 0x34:
        raise BootError(f"{name}: not an ELF file")
    cls = image[4]
    if image[5] != ELFDATA2LSB:
        raise BootError(f"{name}: ELF is not little-endian")
    if cls == ELFCLASS32:
        e_type, machine, _ver, entry, phoff = struct.unpack_from("<HHIII", image, 16)
        phentsize, phnum = struct.unpack_from("<HH", image, 42)
        ph_fmt, min_ph = "<IIIIIIII", 32
    elif cls == ELFCLASS64:
        if len(image) < 0x40:
            raise BootError(f"{name}: truncated ELF64 header")
        e_type, machine, _ver, entry, phoff = struct.unpack_from("<HHIQQ", image, 16)
        phentsize, phnum = struct.unpack_from("<HH", image, 54)
        ph_fmt, min_ph = "<IIQQQQQQ", 56
    else:
        raise BootError(f"{name}: unknown ELF class {cls}")
    if e_type != ET_EXEC:
        raise BootError(f"{name}: ELF type {e_type} is not an executable (ET_EXEC)")
    if phnum == 0 or phentsize < min_ph:
        raise BootError(f"{name}: ELF has no usable program headers")
    if phoff + phnum * phentsize > len(image):
        raise BootError(f"{name}: program headers run past the end of the file")
    segments: list[LoadSegment] = []
    for i in range(phnum):
        fields = struct.unpack_from(ph_fmt, image, phoff + i * phentsize)
        if cls == ELFCLASS32:
            p_type, off, vaddr, paddr, filesz, memsz, _flags, _align = fields
        else:
            p_type, _flags, off, vaddr, paddr, filesz, memsz, _align = fields
        if p_type != PT_LOAD:
            continue
        if filesz > memsz:
            raise BootError(f"{name}: segment {i} has p_filesz {filesz:#x} > p_memsz {memsz:#x}")
        if off + filesz > len(image):
            raise BootError(f"{name}: segment {i} data (offset {off:#x} + {filesz:#x}) is past end of file")
        segments.append(LoadSegment(off, vaddr, paddr, filesz, memsz))
    if not segments:
        raise BootError(f"{name}: ELF has no PT_LOAD segments")
    return ElfImage(cls, machine, entry, segments)
