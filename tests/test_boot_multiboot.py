"""Multiboot v1 loader, checked on ELF32 images built byte by byte here and on the probe guest."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from refvm.boot.e820 import default_e820
from refvm.boot.errors import BootError
from refvm.boot.multiboot import BOOTLOADER_MAGIC, HEADER_MAGIC, load_multiboot
from refvm.memory import GuestMemory

MiB = 1 << 20
PROBE = Path(__file__).resolve().parent.parent / "guests" / "probe" / "build" / "probe.elf"


def mb_header(flags: int = 0x3, checksum: int | None = None, addrs: tuple[int, ...] = ()) -> bytes:
    if checksum is None:
        checksum = -(HEADER_MAGIC + flags) & 0xFFFFFFFF
    return struct.pack("<III", HEADER_MAGIC, flags, checksum) + struct.pack(f"<{len(addrs)}I", *addrs)


def elf32(segments: list[tuple[int, bytes, int]], entry: int, header: bytes, elf_class: int = 1) -> bytes:
    """An ELF32 i386 executable: ``segments`` are (paddr, file bytes, memsz); vaddr = paddr.
    The Multiboot header sits right after the program headers, then the segment data."""
    phoff, phentsize = 52, 32
    data_off = phoff + phentsize * len(segments) + len(header)
    data_off = (data_off + 15) & ~15
    ehdr = b"\x7fELF" + bytes([elf_class, 1, 1]) + bytes(9)
    ehdr += struct.pack("<HHIIIIIHHHHHH", 2, 3, 1, entry, phoff, 0, 0, 52, phentsize, len(segments), 40, 0, 0)
    phdrs, blobs, off = b"", b"", data_off
    for paddr, data, memsz in segments:
        phdrs += struct.pack("<IIIIIIII", 1, off, paddr, paddr, len(data), memsz, 7, 4)
        blobs += data
        off += len(data)
    out = ehdr + phdrs + header
    return out + bytes(data_off - len(out)) + blobs


@pytest.fixture
def mem() -> GuestMemory:
    m = GuestMemory()
    m.add_ram(0, 64 * MiB)
    return m


def cstring(mem: GuestMemory, addr: int) -> bytes:
    data = mem.read(addr, 256)
    return data[: data.index(b"\0")]


def test_elf_segments_bss_and_state(mem: GuestMemory) -> None:
    text = bytes(range(256)) * 4
    data = b"DATA" * 8
    mem.write(0x200000 + len(data), b"\xff" * 64)  # garbage where the bss goes: must be zeroed
    image = elf32([(0x100000, text, len(text)), (0x200000, data, len(data) + 64)], 0x100010, mb_header())
    st = load_multiboot(mem, image, cmdline="probe console=ttyS0", name="t.elf")
    assert mem.read(0x100000, len(text)) == text
    assert mem.read(0x200000, len(data)) == data
    assert mem.read(0x200000 + len(data), 64) == bytes(64)
    assert st.mode == "protected32" and st.rip == 0x100010
    assert st.regs == {"rax": BOOTLOADER_MAGIC, "rbx": st.regs["rbx"]}
    assert st.cr0 & 1 and not st.cr0 & (1 << 31) and st.cr4 == 0 and st.efer == 0 and st.cr3 == 0
    assert st.rflags == 0x2  # IF clear
    cs = st.cs
    assert (cs.selector, cs.type, cs.db, cs.l, cs.base, cs.limit) == (8, 0xB, 1, 0, 0, 0xFFFFFFFF)
    assert (st.ds.selector, st.ds.type, st.ds.db, st.ds.base, st.ds.limit) == (0x10, 3, 1, 0, 0xFFFFFFFF)
    # GDT in guest memory: null, then descriptors matching cs/ds.
    assert st.gdt_limit == 23
    null, code, data_d = struct.unpack("<QQQ", mem.read(st.gdt_base, 24))
    assert null == 0 and code == 0x00CF9B000000FFFF and data_d == 0x00CF93000000FFFF

    info = st.regs["rbx"]
    flags, mem_lower, mem_upper = struct.unpack("<III", mem.read(info, 12))
    assert flags == (1 << 0) | (1 << 2) | (1 << 3) | (1 << 6) | (1 << 9)
    assert mem_lower == 639 and mem_upper == (64 * MiB - MiB) // 1024
    assert cstring(mem, mem.read_u32(info + 16)) == b"probe console=ttyS0"
    assert mem.read_u32(info + 20) == 0  # mods_count
    assert cstring(mem, mem.read_u32(info + 64)) == b"refvm"
    mmap_len, mmap_addr = struct.unpack("<II", mem.read(info + 44, 8))
    entries = [struct.unpack("<IQQI", mem.read(mmap_addr + i, 24)) for i in range(0, mmap_len, 24)]
    assert mmap_len == 24 * 3
    assert entries == [(20, 0, 0x9FC00, 1), (20, 0x9FC00, 0x60400, 2), (20, MiB, 63 * MiB, 1)]
    # Everything the loader wrote lies outside the image and below 640 KiB.
    assert 0x1000 <= st.gdt_base < info < mmap_addr < 0x9FC00


def test_modules_page_aligned_after_image(mem: GuestMemory) -> None:
    image = elf32([(0x100000, b"\x90" * 100, 0x3000)], 0x100000, mb_header(flags=0x3))
    mods = [(b"first module", "mod1 arg"), (os.urandom(5000), "mod2")]
    st = load_multiboot(mem, image, modules=mods, name="t.elf")
    info = st.regs["rbx"]
    count, addr = struct.unpack("<II", mem.read(info + 20, 8))
    assert count == 2
    prev_end = 0x103000
    for i, (data, cmd) in enumerate(mods):
        start, end, string, reserved = struct.unpack("<IIII", mem.read(addr + 16 * i, 16))
        assert start % 4096 == 0 and start >= prev_end and end == start + len(data)
        assert mem.read(start, len(data)) == data
        assert cstring(mem, string) == cmd.encode() and reserved == 0
        prev_end = end


def test_aout_kludge(mem: GuestMemory) -> None:
    # Flat binary: header at file offset 0x40, loaded so that file offset 0 is at 0x100000.
    body = bytearray(0x200)
    hdr = mb_header(flags=(1 << 16) | 0x3, addrs=(0x100040, 0x100000, 0x100180, 0x102000, 0x100100))
    body[0x40 : 0x40 + len(hdr)] = hdr
    body[0x100:0x104] = b"\xeb\xfe\x90\x90"
    mem.write(0x100180, b"\xaa" * 16)
    st = load_multiboot(mem, bytes(body), name="flat.bin")
    assert st.rip == 0x100100
    assert mem.read(0x100000, 0x180) == bytes(body[:0x180])
    assert mem.read(0x100180, 16) == bytes(16)  # bss zeroed, file tail past load_end not loaded


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (b"\0" * 10000, "t.elf: no Multiboot header in the first 8192 bytes"),
        (bytes(8192) + mb_header(), "t.elf: no Multiboot header in the first 8192 bytes"),
        (
            elf32([(MiB, b"x", 1)], MiB, mb_header(checksum=0)),
            "t.elf: Multiboot header at 0x54 has a bad checksum",
        ),
        (elf32([(MiB, b"x", 1)], MiB, mb_header(), elf_class=2), "t.elf: is a 64-bit ELF"),
        (elf32([(63 * MiB, b"x", 2 * MiB)], 63 * MiB, mb_header()), "t.elf: segment 0 (p_paddr 0x3f00000"),
        (elf32([(MiB, b"x", 1)], MiB, mb_header(flags=0x4)), "requests a video mode"),
        (elf32([(MiB, b"x", 1)], MiB, mb_header(flags=0x8)), "unsupported features (flags 0x8)"),
        (b"MZ" + bytes(62) + mb_header(), "neither ELF nor a Multiboot header with address fields"),
    ],
    ids=[
        "no-header",
        "late-header",
        "bad-checksum",
        "elf64",
        "beyond-ram",
        "video",
        "unknown-flag",
        "not-elf",
    ],
)
def test_errors(mem: GuestMemory, image: bytes, message: str) -> None:
    with pytest.raises(BootError) as exc:
        load_multiboot(mem, image, name="t.elf")
    assert message in str(exc.value)


def test_beyond_ram_message_names_ram(mem: GuestMemory) -> None:
    image = elf32([(63 * MiB, b"x", 2 * MiB)], 63 * MiB, mb_header())
    with pytest.raises(BootError, match=r"not in usable guest RAM \(0x0-0x9fc00, 0x100000-0x4000000\)"):
        load_multiboot(mem, image, name="t.elf")


def test_explicit_e820_is_reported(mem: GuestMemory) -> None:
    e820 = default_e820(32 * MiB)
    image = elf32([(MiB, b"x", 1)], MiB, mb_header())
    st = load_multiboot(mem, image, name="t.elf", e820=e820)
    assert mem.read_u32(st.regs["rbx"] + 8) == 31 * 1024


def test_probe_guest_entry(mem: GuestMemory) -> None:
    if not PROBE.exists():
        pytest.skip(f"{PROBE} not built (make -C guests/probe)")
    image = PROBE.read_bytes()
    st = load_multiboot(mem, image, cmdline="probe", name="probe.elf")
    assert st.rip == struct.unpack_from("<I", image, 24)[0]
