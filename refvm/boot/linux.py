"""Linux x86 boot protocol loader (bzImage and ELF vmlinux), entering the kernel's 64-bit entry.

refvm enters 64-bit kernels directly in long mode (kvm-pvm cannot run a guest's own switch to long
mode, see DESIGN.md), so the loader does what the real-mode setup code and the 32-bit entry would:
it fills the zero page ("boot_params"), copies the protected-mode kernel, places command line and
initrd, writes a GDT and identity-mapped page tables, and asks for RIP = load address + 0x200,
RSI = boot_params, as Documentation/arch/x86/boot.rst specifies for the 64-bit boot protocol.

Guest-physical layout (all below 640 KiB except the kernel and initrd):
    0x00500  GDT: null, 32-bit code 0x08, 64-bit code 0x10 (__BOOT_CS), data 0x18 (__BOOT_DS)
    0x07000  boot_params (4 KiB zero page)
    0x09000  PML4, 0x0A000 PDPT, 0x0B000-0x0EFFF four PDs: identity map of 0..4 GiB, 2 MiB pages
    0x20000  command line (NUL terminated)
    0x100000 protected-mode kernel (bzImage payload); vmlinux goes to its PT_LOAD p_paddr
    initrd   page aligned, as high as possible below min(initrd_addr_max + 1, end of RAM)
"""

from __future__ import annotations

import struct

from refvm.boot.cpu_state import (
    CR0_ET,
    CR0_NE,
    CR0_PE,
    CR0_PG,
    CR4_PAE,
    EFER_LMA,
    EFER_LME,
    BootCpuState,
    Memory,
    build_gdt,
    flat_code32,
    flat_code64,
    flat_data,
)
from refvm.boot.e820 import E820Entry, default_e820, usable_end
from refvm.boot.elf import ELFCLASS64, EM_X86_64, is_elf, parse_elf
from refvm.boot.errors import BootError
from refvm.boot.paging import write_identity_map
from refvm.boot.placement import PAGE, align_down, align_up, require_ram, write_checked

GDT_ADDR = 0x500
BOOT_PARAMS_ADDR = 0x7000
PML4_ADDR = 0x9000
CMDLINE_ADDR = 0x20000
CMDLINE_AREA = 0x10000
KERNEL_ADDR = 0x100000
ENTRY64_OFFSET = 0x200

BOOT_CS = 0x10
BOOT_DS = 0x18

MIN_PROTOCOL = 0x0206
XLOADFLAGS_PROTOCOL = 0x020C
HDR_MAGIC = b"HdrS"
BOOT_FLAG = 0xAA55

# Offsets in the zero page (boot_params); the setup header lives at 0x1F1 in both the bzImage and
# the zero page, so the same offsets address the header in either.
BP_EXT_RAMDISK_IMAGE = 0x0C0
BP_EXT_RAMDISK_SIZE = 0x0C4
BP_EXT_CMD_LINE_PTR = 0x0C8
BP_E820_ENTRIES = 0x1E8
BP_HDR = 0x1F1
BP_HDR_LIMIT = 0x290  # edd_mbr_sig_buffer starts here: the header may not extend further
BP_E820_TABLE = 0x2D0
E820_MAX_ENTRIES = 128

HDR_SETUP_SECTS = 0x1F1
HDR_VID_MODE = 0x1FA
HDR_BOOT_FLAG = 0x1FE
HDR_JUMP = 0x200
HDR_MAGIC_OFF = 0x202
HDR_VERSION = 0x206
HDR_TYPE_OF_LOADER = 0x210
HDR_LOADFLAGS = 0x211
HDR_CODE32_START = 0x214
HDR_RAMDISK_IMAGE = 0x218
HDR_RAMDISK_SIZE = 0x21C
HDR_HEAP_END_PTR = 0x224
HDR_CMD_LINE_PTR = 0x228
HDR_INITRD_ADDR_MAX = 0x22C
HDR_KERNEL_ALIGNMENT = 0x230
HDR_XLOADFLAGS = 0x236
HDR_CMDLINE_SIZE = 0x238
HDR_PREF_ADDRESS = 0x258
HDR_INIT_SIZE = 0x260

LOADED_HIGH = 1 << 0
KEEP_SEGMENTS = 1 << 6
CAN_USE_HEAP = 1 << 7
XLF_KERNEL_64 = 1 << 0

LOADER_TYPE_UNDEFINED = 0xFF  # "no assigned id": boot.rst's value for loaders without one
VID_MODE_NORMAL = 0xFFFF
HEAP_END = 0xFE00  # end of setup heap minus 0x200, the customary value with a 64 KiB setup segment
DEFAULT_INITRD_ADDR_MAX = 0x37FFFFFF  # boot.rst: what to assume when the kernel does not say
VMLINUX_CMDLINE_SIZE = 2047  # x86 COMMAND_LINE_SIZE (2048) minus the NUL


def _u16(buf: bytes | bytearray, off: int) -> int:
    return struct.unpack_from("<H", buf, off)[0]


def _u32(buf: bytes | bytearray, off: int) -> int:
    return struct.unpack_from("<I", buf, off)[0]


def load_linux(
    mem: Memory,
    image: bytes,
    cmdline: str = "",
    initrd: bytes | None = None,
    e820: list[E820Entry] | None = None,
    name: str = "",
) -> BootCpuState:
    """Load a bzImage (or a 64-bit ELF vmlinux) with its command line and initrd; return the
    long-mode CPU state for the kernel's 64-bit entry point."""
    name = name or "kernel"
    e820 = e820 if e820 is not None else default_e820(mem.size)
    if is_elf(image):
        return _load_vmlinux(mem, image, cmdline, initrd, e820, name)
    return _load_bzimage(mem, image, cmdline, initrd, e820, name)


def _load_bzimage(
    mem: Memory, image: bytes, cmdline: str, initrd: bytes | None, e820: list[E820Entry], name: str
) -> BootCpuState:
    if len(image) < 0x400 or image[HDR_MAGIC_OFF : HDR_MAGIC_OFF + 4] != HDR_MAGIC:
        raise BootError(f"{name}: not a bzImage: no 'HdrS' boot protocol magic at 0x202")
    version = _u16(image, HDR_VERSION)
    proto = f"{version >> 8}.{version & 0xFF:02d}"
    if version < MIN_PROTOCOL:
        raise BootError(f"{name}: boot protocol {proto} is too old; refvm needs 2.06 or later")
    if version < XLOADFLAGS_PROTOCOL or not _u16(image, HDR_XLOADFLAGS) & XLF_KERNEL_64:
        raise BootError(f"{name}: boot protocol {proto} kernel has no 64-bit entry point (XLF_KERNEL_64)")
    if not image[HDR_LOADFLAGS] & LOADED_HIGH:
        raise BootError(f"{name}: zImage (not LOADED_HIGH) kernels are not supported")
    setup_sects = image[HDR_SETUP_SECTS] or 4
    setup_size = (setup_sects + 1) * 512
    payload = image[setup_size:]
    if not payload:
        raise BootError(f"{name}: truncated: no protected-mode kernel after {setup_size} bytes of setup")

    # Where the kernel will run and how much room it needs there: it decompresses itself to
    # max(load address aligned up to kernel_alignment, pref_address) and needs init_size bytes.
    align = _u32(image, HDR_KERNEL_ALIGNMENT) or PAGE
    runtime = max(align_up(KERNEL_ADDR, align), struct.unpack_from("<Q", image, HDR_PREF_ADDRESS)[0])
    kernel_end = max(KERNEL_ADDR + len(payload), runtime + _u32(image, HDR_INIT_SIZE))
    ram_top = min(usable_end(e820, KERNEL_ADDR), 1 << 32)
    if kernel_end > ram_top:
        raise BootError(
            f"{name}: the kernel needs guest RAM up to {kernel_end:#x} (payload + init_size), "
            f"but usable RAM from 1 MiB ends at {ram_top:#x}"
        )
    write_checked(mem, e820, KERNEL_ADDR, payload, name, "protected-mode kernel")

    bp = bytearray(PAGE)
    hdr_end = min(HDR_MAGIC_OFF + image[HDR_JUMP + 1], BP_HDR_LIMIT)
    bp[BP_HDR:hdr_end] = image[BP_HDR:hdr_end]
    bp[HDR_LOADFLAGS] = (image[HDR_LOADFLAGS] | LOADED_HIGH | CAN_USE_HEAP) & ~KEEP_SEGMENTS & 0xFF
    return _finish(
        mem,
        e820,
        bp,
        cmdline,
        initrd,
        cmdline_size=_u32(image, HDR_CMDLINE_SIZE),
        initrd_addr_max=_u32(image, HDR_INITRD_ADDR_MAX),
        kernel_end=kernel_end,
        entry=KERNEL_ADDR + ENTRY64_OFFSET,
        name=name,
    )


def _load_vmlinux(
    mem: Memory, image: bytes, cmdline: str, initrd: bytes | None, e820: list[E820Entry], name: str
) -> BootCpuState:
    """ELF vmlinux: segments at p_paddr, entry at (physical) e_entry = startup_64. There is no setup
    header in the file, so the zero page gets a minimal one saying who we are and what we pass."""
    elf = parse_elf(image, name)
    if elf.elf_class != ELFCLASS64 or elf.machine != EM_X86_64:
        raise BootError(f"{name}: only 64-bit x86-64 ELF kernels are supported (class {elf.elf_class})")
    kernel_end = 0
    for i, seg in enumerate(elf.segments):
        what = f"segment {i} (p_paddr {seg.paddr:#x}, p_memsz {seg.memsz:#x})"
        require_ram(e820, seg.paddr, seg.memsz, name, what)
        write_checked(mem, e820, seg.paddr, image[seg.offset : seg.offset + seg.filesz], name, what)
        if seg.memsz > seg.filesz:
            write_checked(mem, e820, seg.paddr + seg.filesz, bytes(seg.memsz - seg.filesz), name, what)
        kernel_end = max(kernel_end, seg.paddr + seg.memsz)
    bp = bytearray(PAGE)
    struct.pack_into("<H", bp, HDR_BOOT_FLAG, BOOT_FLAG)
    bp[HDR_MAGIC_OFF : HDR_MAGIC_OFF + 4] = HDR_MAGIC
    struct.pack_into("<H", bp, HDR_VERSION, XLOADFLAGS_PROTOCOL)
    bp[HDR_LOADFLAGS] = LOADED_HIGH | CAN_USE_HEAP
    struct.pack_into("<I", bp, HDR_INITRD_ADDR_MAX, DEFAULT_INITRD_ADDR_MAX)
    struct.pack_into("<I", bp, HDR_CMDLINE_SIZE, VMLINUX_CMDLINE_SIZE)
    return _finish(
        mem,
        e820,
        bp,
        cmdline,
        initrd,
        cmdline_size=VMLINUX_CMDLINE_SIZE,
        initrd_addr_max=DEFAULT_INITRD_ADDR_MAX,
        kernel_end=kernel_end,
        entry=elf.entry_physical(),
        name=name,
    )


def _finish(
    mem: Memory,
    e820: list[E820Entry],
    bp: bytearray,
    cmdline: str,
    initrd: bytes | None,
    *,
    cmdline_size: int,
    initrd_addr_max: int,
    kernel_end: int,
    entry: int,
    name: str,
) -> BootCpuState:
    """Common tail: command line, initrd, E820 table, the zero page, GDT and page tables."""
    raw = cmdline.encode()
    if b"\0" in raw:
        raise BootError(f"{name}: the command line contains a NUL byte")
    if len(raw) > min(cmdline_size, CMDLINE_AREA - 1):
        raise BootError(
            f"{name}: command line is {len(raw)} bytes; the kernel accepts at most {cmdline_size}"
        )
    write_checked(mem, e820, CMDLINE_ADDR, raw + b"\0", name, "command line")

    bp[HDR_TYPE_OF_LOADER] = LOADER_TYPE_UNDEFINED
    struct.pack_into("<H", bp, HDR_VID_MODE, VID_MODE_NORMAL)
    struct.pack_into("<H", bp, HDR_HEAP_END_PTR, HEAP_END)
    struct.pack_into("<I", bp, HDR_CMD_LINE_PTR, CMDLINE_ADDR)
    struct.pack_into("<I", bp, BP_EXT_CMD_LINE_PTR, 0)  # everything we place is below 4 GiB

    image_addr = size = 0
    if initrd:
        limit = min(initrd_addr_max + 1, usable_end(e820, KERNEL_ADDR), 1 << 32)
        image_addr = align_down(limit - len(initrd), PAGE)
        if image_addr < align_up(kernel_end, PAGE):
            raise BootError(
                f"{name}: initrd of {len(initrd)} bytes does not fit in guest RAM between the kernel "
                f"(ends at {kernel_end:#x}) and {limit:#x}"
            )
        write_checked(mem, e820, image_addr, initrd, name, "initrd")
        size = len(initrd)
    struct.pack_into("<II", bp, HDR_RAMDISK_IMAGE, image_addr, size)
    struct.pack_into("<II", bp, BP_EXT_RAMDISK_IMAGE, 0, 0)

    if len(e820) > E820_MAX_ENTRIES:
        raise BootError(f"{name}: {len(e820)} E820 entries; boot_params holds at most {E820_MAX_ENTRIES}")
    bp[BP_E820_ENTRIES] = len(e820)
    for i, e in enumerate(e820):
        struct.pack_into("<QQI", bp, BP_E820_TABLE + 20 * i, e.addr, e.size, e.type)
    write_checked(mem, e820, BOOT_PARAMS_ADDR, bytes(bp), name, "boot_params")

    cs, ds = flat_code64(BOOT_CS), flat_data(BOOT_DS)
    gdt = build_gdt([flat_code32(0x08), cs, ds])
    write_checked(mem, e820, GDT_ADDR, gdt, name, "GDT")
    require_ram(e820, PML4_ADDR, 6 * PAGE, name, "page tables")
    write_identity_map(mem, PML4_ADDR, gib=4)

    return BootCpuState(
        mode="long64",
        rip=entry,
        regs={"rsi": BOOT_PARAMS_ADDR},
        cs=cs,
        ds=ds,
        gdt_base=GDT_ADDR,
        gdt_limit=len(gdt) - 1,
        cr0=CR0_PE | CR0_ET | CR0_NE | CR0_PG,
        cr3=PML4_ADDR,
        cr4=CR4_PAE,
        efer=EFER_LME | EFER_LMA,
    )


__all__ = ["load_linux", "BOOT_PARAMS_ADDR", "CMDLINE_ADDR", "GDT_ADDR", "KERNEL_ADDR", "PML4_ADDR"]
