"""Multiboot (version 1) loader: what ``qemu -kernel probe.elf`` does for a Multiboot image.

The image is loaded either by its ELF32 program headers or, when header flag bit 16 is set, by the
"a.out kludge" addresses in the Multiboot header itself. The loader then writes the Multiboot
information structure (memory sizes, command line, modules, memory map, loader name) and a GDT into
low guest memory and returns the 32-bit protected-mode state the spec's "Machine state" section
requires: EAX = 0x2BADB002, EBX = info address, flat CS/DS, paging off, interrupts off.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from refvm.boot.cpu_state import CR0_ET, CR0_PE, BootCpuState, Memory, build_gdt, flat_code32, flat_data
from refvm.boot.e820 import E820_RAM, HIGH_RAM_START, E820Entry, default_e820
from refvm.boot.elf import ELFCLASS32, ELFCLASS64, EM_386, is_elf, parse_elf
from refvm.boot.errors import BootError
from refvm.boot.placement import PAGE, align_up, find_free, overlaps, require_ram, write_checked

HEADER_MAGIC = 0x1BADB002
BOOTLOADER_MAGIC = 0x2BADB002
SEARCH_LIMIT = 8192

# Header flags. Bits 0-15 are requirements: an unknown one set there means "do not boot me".
HF_PAGE_ALIGN = 1 << 0
HF_MEMORY_INFO = 1 << 1
HF_VIDEO_MODE = 1 << 2
HF_AOUT_KLUDGE = 1 << 16
HF_SUPPORTED_REQUIRED = HF_PAGE_ALIGN | HF_MEMORY_INFO

# Info structure flags.
MBI_MEMORY = 1 << 0
MBI_CMDLINE = 1 << 2
MBI_MODS = 1 << 3
MBI_MMAP = 1 << 6
MBI_LOADER_NAME = 1 << 9

INFO_SIZE = 88  # through the VBE fields; the framebuffer extension is not offered
LOADER_NAME = "refvm"
CODE_SELECTOR = 0x08
DATA_SELECTOR = 0x10
INFO_FLOOR = 0x1000  # keep page 0 (real-mode IVT/BDA) untouched, as a BIOS-booted guest expects


@dataclass(frozen=True)
class MultibootHeader:
    offset: int
    flags: int
    header_addr: int = 0
    load_addr: int = 0
    load_end_addr: int = 0
    bss_end_addr: int = 0
    entry_addr: int = 0


def find_header(image: bytes, name: str) -> MultibootHeader:
    """Locate the header: 32-bit aligned, wholly inside the first 8 KiB, checksum summing to zero."""
    limit = min(len(image), SEARCH_LIMIT)
    bad_checksum_at: int | None = None
    for off in range(0, limit - 11, 4):
        magic, flags, checksum = struct.unpack_from("<III", image, off)
        if magic != HEADER_MAGIC:
            continue
        if (magic + flags + checksum) & 0xFFFFFFFF:
            bad_checksum_at = off if bad_checksum_at is None else bad_checksum_at
            continue
        if flags & HF_AOUT_KLUDGE:
            if off + 32 > len(image):
                raise BootError(f"{name}: Multiboot header at {off:#x} is truncated (address fields missing)")
            return MultibootHeader(off, flags, *struct.unpack_from("<IIIII", image, off + 12))
        return MultibootHeader(off, flags)
    if bad_checksum_at is not None:
        raise BootError(f"{name}: Multiboot header at {bad_checksum_at:#x} has a bad checksum")
    raise BootError(f"{name}: no Multiboot header in the first {SEARCH_LIMIT} bytes")


def _load_aout(mem: Memory, e820: list[E820Entry], image: bytes, hdr: MultibootHeader, name: str):
    """Load by the header's address fields; returns (entry, [(start, end)] occupied)."""
    if hdr.load_addr > hdr.header_addr:
        raise BootError(f"{name}: load_addr {hdr.load_addr:#x} is above header_addr {hdr.header_addr:#x}")
    file_start = hdr.offset - (hdr.header_addr - hdr.load_addr)
    if file_start < 0:
        raise BootError(f"{name}: header_addr/load_addr place the image before the start of the file")
    if hdr.load_end_addr:
        if hdr.load_end_addr < hdr.load_addr:
            raise BootError(f"{name}: load_end_addr {hdr.load_end_addr:#x} is below load_addr")
        length = hdr.load_end_addr - hdr.load_addr
        if file_start + length > len(image):
            raise BootError(f"{name}: load_end_addr {hdr.load_end_addr:#x} is past the end of the file")
    else:
        length = len(image) - file_start
    load_end = hdr.load_addr + length
    bss_end = max(hdr.bss_end_addr, load_end)
    require_ram(e820, hdr.load_addr, bss_end - hdr.load_addr, name, "a.out kludge image")
    write_checked(mem, e820, hdr.load_addr, image[file_start : file_start + length], name, "image")
    if bss_end > load_end:
        write_checked(mem, e820, load_end, bytes(bss_end - load_end), name, "bss")
    if not hdr.load_addr <= hdr.entry_addr < bss_end:
        raise BootError(f"{name}: entry_addr {hdr.entry_addr:#x} is outside the loaded image")
    return hdr.entry_addr, [(hdr.load_addr, bss_end)]


def _load_elf(mem: Memory, e820: list[E820Entry], image: bytes, name: str):
    """Load PT_LOAD segments at p_paddr, zeroing the bss tail; returns (entry, occupied ranges)."""
    if image[4:5] == bytes([ELFCLASS64]):
        raise BootError(f"{name}: is a 64-bit ELF; Multiboot needs a 32-bit ELF (QEMU refuses these too)")
    elf = parse_elf(image, name)
    if elf.elf_class != ELFCLASS32:
        raise BootError(f"{name}: ELF class {elf.elf_class} is not ELF32")
    if elf.machine != EM_386:
        raise BootError(f"{name}: ELF machine {elf.machine} is not i386 (3)")
    used: list[tuple[int, int]] = []
    for i, seg in enumerate(elf.segments):
        if seg.memsz == 0:
            continue
        what = f"segment {i} (p_paddr {seg.paddr:#x}, p_memsz {seg.memsz:#x})"
        require_ram(e820, seg.paddr, seg.memsz, name, what)
        write_checked(mem, e820, seg.paddr, image[seg.offset : seg.offset + seg.filesz], name, what)
        if seg.memsz > seg.filesz:
            write_checked(mem, e820, seg.paddr + seg.filesz, bytes(seg.memsz - seg.filesz), name, what)
        used.append((seg.paddr, seg.paddr + seg.memsz))
    return elf.entry_physical(), used


class _Blob:
    """Builds the low-memory area holding the GDT, info struct, mmap, module list and strings,
    tracking offsets so pointers can be patched once the base address is known."""

    def __init__(self) -> None:
        self.data = bytearray()

    def add(self, payload: bytes, align: int = 4) -> int:
        self.data += bytes(align_up(len(self.data), align) - len(self.data))
        off = len(self.data)
        self.data += payload
        return off

    def add_str(self, text: str) -> int:
        return self.add(text.encode() + b"\0", align=1)


def load_multiboot(
    mem: Memory,
    image: bytes,
    cmdline: str = "",
    modules: Sequence[tuple[bytes, str]] = (),
    name: str = "",
    e820: list[E820Entry] | None = None,
) -> BootCpuState:
    """Load a Multiboot v1 kernel and its modules; return the CPU state to enter it.

    ``modules`` are (contents, module command line) pairs; each is placed page aligned after the
    image. ``e820`` defaults to :func:`default_e820` of the guest RAM size.
    """
    name = name or "multiboot image"
    e820 = e820 if e820 is not None else default_e820(mem.size)
    hdr = find_header(image, name)
    unknown = hdr.flags & 0xFFFF & ~HF_SUPPORTED_REQUIRED
    if unknown & HF_VIDEO_MODE:
        raise BootError(f"{name}: Multiboot header requests a video mode (flag bit 2); refvm sets none")
    if unknown:
        raise BootError(f"{name}: Multiboot header requires unsupported features (flags {unknown:#x})")

    if hdr.flags & HF_AOUT_KLUDGE:
        entry, used = _load_aout(mem, e820, image, hdr, name)
    elif is_elf(image):
        entry, used = _load_elf(mem, e820, image, name)
    else:
        raise BootError(f"{name}: neither ELF nor a Multiboot header with address fields (flag bit 16)")

    # Modules: page aligned above the image (and at least at 1 MiB), each checked to be in RAM.
    mod_entries: list[tuple[int, int, str]] = []
    next_addr = align_up(max([HIGH_RAM_START] + [end for _, end in used]), PAGE)
    for idx, (data, mod_cmdline) in enumerate(modules):
        addr = find_free(e820, max(len(data), 1), used, next_addr, align=PAGE)
        if addr is None:
            raise BootError(f"{name}: module {idx} ({mod_cmdline!r}, {len(data)} bytes) does not fit in RAM")
        write_checked(mem, e820, addr, data, name, f"module {idx}")
        used.append((addr, addr + len(data)))
        mod_entries.append((addr, addr + len(data), mod_cmdline))
        next_addr = align_up(addr + len(data), PAGE)

    blob = _Blob()
    cs, ds = flat_code32(CODE_SELECTOR), flat_data(DATA_SELECTOR)
    gdt = build_gdt([cs, ds])
    gdt_off = blob.add(gdt, align=8)
    info_off = blob.add(bytes(INFO_SIZE), align=8)
    mmap_bytes = b"".join(struct.pack("<IQQI", 20, e.addr, e.size, e.type) for e in e820)
    mmap_off = blob.add(mmap_bytes)
    mods_off = blob.add(bytes(16 * len(mod_entries)))
    cmdline_off = blob.add_str(cmdline)
    name_off = blob.add_str(LOADER_NAME)
    mod_str_offs = [blob.add_str(c) for _, _, c in mod_entries]

    base = find_free(e820, len(blob.data), used, INFO_FLOOR, align=PAGE)
    if base is None:
        raise BootError(f"{name}: no room in RAM for the Multiboot information ({len(blob.data)} bytes)")
    assert not overlaps(base, base + len(blob.data), used)

    for i, (start, end, _) in enumerate(mod_entries):
        struct.pack_into("<IIII", blob.data, mods_off + 16 * i, start, end, base + mod_str_offs[i], 0)
    mem_lower, mem_upper = _memory_sizes(e820)
    flags = MBI_MEMORY | MBI_CMDLINE | MBI_MODS | MBI_MMAP | MBI_LOADER_NAME
    struct.pack_into("<III", blob.data, info_off, flags, mem_lower, mem_upper)
    struct.pack_into("<III", blob.data, info_off + 16, base + cmdline_off, len(mod_entries), base + mods_off)
    struct.pack_into("<II", blob.data, info_off + 44, len(mmap_bytes), base + mmap_off)
    struct.pack_into("<I", blob.data, info_off + 64, base + name_off)
    write_checked(mem, e820, base, bytes(blob.data), name, "Multiboot information")

    return BootCpuState(
        mode="protected32",
        rip=entry,
        regs={"rax": BOOTLOADER_MAGIC, "rbx": base + info_off},
        cs=cs,
        ds=ds,
        gdt_base=base + gdt_off,
        gdt_limit=len(gdt) - 1,
        cr0=CR0_PE | CR0_ET,
        cr3=0,
        cr4=0,
        efer=0,
    )


def _memory_sizes(e820: list[E820Entry]) -> tuple[int, int]:
    """mem_lower: KiB of RAM from 0; mem_upper: KiB of contiguous RAM from 1 MiB (below 4 GiB)."""
    lower = upper = 0
    for e in e820:
        if e.type != E820_RAM:
            continue
        if e.addr == 0:
            lower = min(e.size, 640 * 1024) // 1024
        if e.addr <= HIGH_RAM_START < e.end:
            upper = (min(e.end, 1 << 32) - HIGH_RAM_START) // 1024
    return lower, upper
