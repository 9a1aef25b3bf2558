"""Linux boot protocol loader, checked field by field on a real Debian bzImage.

The kernel comes from tests/kernel_cache.py (downloaded once with apt). Without it these tests
skip locally and fail under CI=true, where a missing kernel means a broken setup.
"""

from __future__ import annotations

import os
import struct
import sys
from pathlib import Path

import pytest

from refvm.boot.e820 import default_e820
from refvm.boot.errors import BootError
from refvm.boot.linux import BOOT_PARAMS_ADDR, CMDLINE_ADDR, GDT_ADDR, KERNEL_ADDR, PML4_ADDR, load_linux
from refvm.memory import GuestMemory

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernel_cache import KernelUnavailable, debian_kernel  # noqa: E402

MiB = 1 << 20
RAM = 256 * MiB
CMDLINE = "console=ttyS0 earlyprintk=serial panic=-1 quiet"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="module")
def bzimage() -> bytes:
    try:
        return debian_kernel().read_bytes()
    except KernelUnavailable as exc:
        if IN_CI:
            pytest.fail(f"CI must be able to fetch the Debian kernel: {exc}")
        pytest.skip(f"Debian kernel unavailable: {exc}")


def new_mem(size: int = RAM) -> GuestMemory:
    mem = GuestMemory()
    mem.add_ram(0, size)
    return mem


def u8(b: bytes, o: int) -> int:
    return b[o]


def u16(b: bytes, o: int) -> int:
    return struct.unpack_from("<H", b, o)[0]


def u32(b: bytes, o: int) -> int:
    return struct.unpack_from("<I", b, o)[0]


def decode_descriptor(d: int) -> dict[str, int]:
    """Decode an 8-byte segment descriptor (independently of the loader's encoder)."""
    limit = (d & 0xFFFF) | ((d >> 48) & 0xF) << 16
    g = (d >> 55) & 1
    return {
        "base": ((d >> 16) & 0xFFFFFF) | ((d >> 56) & 0xFF) << 24,
        "limit": (limit << 12 | 0xFFF) if g else limit,
        "type": (d >> 40) & 0xF,
        "s": (d >> 44) & 1,
        "dpl": (d >> 45) & 3,
        "present": (d >> 47) & 1,
        "l": (d >> 53) & 1,
        "db": (d >> 54) & 1,
        "g": g,
    }


def translate(mem: GuestMemory, cr3: int, va: int) -> int | None:
    """Walk 4-level page tables like the MMU (2 MiB and 1 GiB leaves honoured)."""
    table = cr3 & ~0xFFF
    for level, shift in enumerate((39, 30, 21, 12)):
        entry = mem.read_u64(table + ((va >> shift) & 0x1FF) * 8)
        if not entry & 1:
            return None
        if level in (1, 2) and entry & 0x80:
            mask = (1 << shift) - 1
            return (entry & 0x000FFFFFFFFFF000 & ~mask) | (va & mask)
        table = entry & 0x000FFFFFFFFFF000
    return table | (va & 0xFFF)


@pytest.fixture(scope="module")
def booted(bzimage: bytes):
    mem = new_mem()
    initrd = os.urandom(3 * MiB + 123)
    state = load_linux(mem, bzimage, cmdline=CMDLINE, initrd=initrd, name="vmlinuz")
    return mem, state, initrd


def test_setup_header_copied_and_overridden(bzimage: bytes, booted) -> None:
    mem, _state, initrd = booted
    bp = mem.read(BOOT_PARAMS_ADDR, 4096)
    hdr_end = 0x202 + bzimage[0x201]
    overridden = {0x1FA, 0x1FB, 0x210, 0x211, 0x218, 0x219, 0x21A, 0x21B, 0x21C, 0x21D, 0x21E, 0x21F}
    overridden |= {0x224, 0x225, 0x228, 0x229, 0x22A, 0x22B}
    for off in range(0x1F1, hdr_end):
        if off not in overridden:
            assert bp[off] == bzimage[off], f"setup header byte {off:#x} not copied"
    assert bp[0x202:0x206] == b"HdrS" and u16(bp, 0x1FE) == 0xAA55
    assert u16(bp, 0x1FA) == 0xFFFF  # vid_mode normal
    assert u8(bp, 0x210) == 0xFF  # type_of_loader
    assert u8(bp, 0x211) == (bzimage[0x211] | 0x81) & ~0x40  # LOADED_HIGH | CAN_USE_HEAP, no KEEP_SEGMENTS
    assert u16(bp, 0x224) == 0xFE00  # heap_end_ptr
    assert u32(bp, 0x228) == CMDLINE_ADDR
    assert mem.read(CMDLINE_ADDR, len(CMDLINE) + 1) == CMDLINE.encode() + b"\0"
    # Nothing outside the header region was written except the fields we own.
    assert bp[:0x1E8] == bytes(0x1E8) and bp[0x1E9:0x1F1] == bytes(8)
    assert bp[hdr_end:0x2D0] == bytes(0x2D0 - hdr_end)
    assert bp[0x2D0 + 20 * 3 :] == bytes(4096 - 0x2D0 - 60)


def test_initrd_placed_high_and_page_aligned(bzimage: bytes, booted) -> None:
    mem, _state, initrd = booted
    bp = mem.read(BOOT_PARAMS_ADDR, 4096)
    addr, size = u32(bp, 0x218), u32(bp, 0x21C)
    assert size == len(initrd) and addr % 4096 == 0
    assert addr + size <= min(u32(bzimage, 0x22C) + 1, RAM)
    assert addr + size > RAM - 4096  # as high as it goes
    assert mem.read(addr, size) == initrd
    assert u32(bp, 0xC0) == u32(bp, 0xC4) == u32(bp, 0xC8) == 0  # ext_* high halves


def test_e820(booted) -> None:
    mem, _state, _ = booted
    bp = mem.read(BOOT_PARAMS_ADDR, 4096)
    assert bp[0x1E8] == 3
    table = [struct.unpack_from("<QQI", bp, 0x2D0 + 20 * i) for i in range(3)]
    assert table == [(0, 0x9FC00, 1), (0x9FC00, 0x100000 - 0x9FC00, 2), (MiB, RAM - MiB, 1)]
    assert [(e.addr, e.size, e.type) for e in default_e820(RAM)] == table


def test_kernel_payload_byte_exact(bzimage: bytes, booted) -> None:
    mem, _state, _ = booted
    setup = ((bzimage[0x1F1] or 4) + 1) * 512
    payload = bzimage[setup:]
    assert mem.read(KERNEL_ADDR, len(payload)) == payload


def test_page_tables_identity_map(booted) -> None:
    mem, state, _ = booted
    assert state.cr3 == PML4_ADDR
    for va in (0, 0x7000, KERNEL_ADDR + 0x200, 0x1234567, RAM - 1, (1 << 30) + 0x5000, (4 << 30) - 1):
        assert translate(mem, state.cr3, va) == va, hex(va)
    assert translate(mem, state.cr3, 4 << 30) is None


def test_gdt_and_cpu_state(booted) -> None:
    mem, state, _ = booted
    assert state.mode == "long64"
    assert state.rip == KERNEL_ADDR + 0x200
    assert state.regs == {"rsi": BOOT_PARAMS_ADDR}
    assert state.cr0 & 1 and state.cr0 & (1 << 31)  # PE, PG
    assert state.cr4 & (1 << 5)  # PAE
    assert state.efer & (1 << 8) and state.efer & (1 << 10)  # LME, LMA
    assert state.rflags == 0x2
    assert state.gdt_base == GDT_ADDR and state.gdt_limit == 31
    gdt = struct.unpack("<4Q", mem.read(state.gdt_base, 32))
    assert gdt[0] == 0
    flat = {"base": 0, "limit": 0xFFFFFFFF, "s": 1, "dpl": 0, "present": 1, "g": 1}
    assert decode_descriptor(gdt[1]) == {**flat, "type": 0xB, "l": 0, "db": 1}  # 32-bit code
    assert decode_descriptor(gdt[2]) == {**flat, "type": 0xB, "l": 1, "db": 0}  # __BOOT_CS
    assert decode_descriptor(gdt[3]) == {**flat, "type": 0x3, "l": 0, "db": 1}  # __BOOT_DS
    for seg, idx in ((state.cs, 2), (state.ds, 3)):
        want = decode_descriptor(gdt[idx])
        got = {k: getattr(seg, k) for k in want}
        assert got == want and seg.selector == idx * 8


def test_no_initrd_and_empty_cmdline(bzimage: bytes) -> None:
    mem = new_mem()
    load_linux(mem, bzimage)
    bp = mem.read(BOOT_PARAMS_ADDR, 4096)
    assert u32(bp, 0x218) == u32(bp, 0x21C) == 0
    assert mem.read_u8(CMDLINE_ADDR) == 0


def test_error_missing_hdrs(bzimage: bytes) -> None:
    bad = bytearray(bzimage[:0x1000])
    bad[0x202:0x206] = b"XXXX"
    with pytest.raises(BootError, match=r"^vmlinuz: not a bzImage: no 'HdrS'"):
        load_linux(new_mem(), bytes(bad), name="vmlinuz")


def test_error_old_protocol(bzimage: bytes) -> None:
    bad = bytearray(bzimage)
    struct.pack_into("<H", bad, 0x206, 0x0205)
    with pytest.raises(BootError, match=r"^vmlinuz: boot protocol 2.05 is too old; refvm needs 2.06"):
        load_linux(new_mem(), bytes(bad), name="vmlinuz")
    struct.pack_into("<H", bad, 0x206, 0x0209)
    with pytest.raises(BootError, match=r"2.09 kernel has no 64-bit entry point"):
        load_linux(new_mem(), bytes(bad), name="vmlinuz")


def test_error_cmdline_too_long(bzimage: bytes) -> None:
    limit = u32(bzimage, 0x238)
    load_linux(new_mem(), bzimage, cmdline="x" * limit)  # exactly the limit is fine
    with pytest.raises(
        BootError, match=rf"command line is {limit + 1} bytes; the kernel accepts at most {limit}"
    ):
        load_linux(new_mem(), bzimage, cmdline="x" * (limit + 1), name="vmlinuz")


def test_error_initrd_too_big(bzimage: bytes) -> None:
    with pytest.raises(BootError, match=r"^vmlinuz: initrd of 209715200 bytes does not fit in guest RAM"):
        load_linux(new_mem(), bzimage, initrd=bytes(200 * MiB), name="vmlinuz")


def test_error_ram_too_small_for_kernel(bzimage: bytes) -> None:
    with pytest.raises(BootError, match=r"the kernel needs guest RAM up to 0x[0-9a-f]+ .*ends at 0x2000000"):
        load_linux(new_mem(32 * MiB), bzimage, name="vmlinuz")


def elf64_vmlinux(paddr: int, text: bytes, memsz: int, vaddr_base: int = 0xFFFFFFFF80000000) -> bytes:
    """A minimal ELF64 x86-64 executable shaped like vmlinux: high vaddr, low paddr, entry physical."""
    ehdr = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    ehdr += struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, paddr, 64, 0, 0, 64, 56, 1, 64, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 1, 7, 0x1000, vaddr_base + paddr, paddr, len(text), memsz, 0x200000)
    return (ehdr + phdr).ljust(0x1000, b"\0") + text


def test_vmlinux_elf() -> None:
    mem = new_mem(64 * MiB)
    text = os.urandom(8192)
    mem.write(0x1000000 + len(text), b"\xff" * 100)
    st = load_linux(
        mem, elf64_vmlinux(0x1000000, text, len(text) + 4096), cmdline="console=ttyS0", initrd=b"I" * 5000
    )
    assert st.rip == 0x1000000 and st.regs == {"rsi": BOOT_PARAMS_ADDR} and st.mode == "long64"
    assert mem.read(0x1000000, len(text)) == text
    assert mem.read(0x1000000 + len(text), 4096) == bytes(4096)
    bp = mem.read(BOOT_PARAMS_ADDR, 4096)
    assert bp[0x202:0x206] == b"HdrS" and u16(bp, 0x1FE) == 0xAA55 and bp[0x210] == 0xFF
    assert u32(bp, 0x228) == CMDLINE_ADDR and mem.read(CMDLINE_ADDR, 14) == b"console=ttyS0\0"
    addr, size = u32(bp, 0x218), u32(bp, 0x21C)
    assert size == 5000 and mem.read(addr, size) == b"I" * 5000 and addr + size <= 64 * MiB
    assert bp[0x1E8] == 3


def test_vmlinux_rejects_elf32() -> None:
    ehdr = b"\x7fELF" + bytes([1, 1, 1]) + bytes(9)
    ehdr += struct.pack("<HHIIIIIHHHHHH", 2, 3, 1, MiB, 52, 0, 0, 52, 32, 1, 40, 0, 0)
    phdr = struct.pack("<IIIIIIII", 1, 0x100, MiB, MiB, 1, 1, 7, 4)
    image = (ehdr + phdr).ljust(0x100, b"\0") + b"x"
    with pytest.raises(
        BootError, match=r"^vmlinux: only 64-bit x86-64 ELF kernels are supported \(class 1\)"
    ):
        load_linux(new_mem(64 * MiB), image, name="vmlinux")
