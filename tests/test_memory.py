"""GuestMemory: layout rules, bounds checks on every entry point, little-endian scalars."""

from __future__ import annotations

import ctypes

import pytest

from refvm.memory import PAGE_SIZE, GuestMemory, GuestMemoryError


@pytest.fixture
def mem() -> GuestMemory:
    m = GuestMemory()
    m.add_ram(0, 0x10000)
    m.add_ram(0x10000, 0x4000)  # adjacent: reads may cross, views may not
    m.add_ram(0x100000, 0x2000)  # after a hole
    yield m
    m.close()


def test_layout_and_size(mem: GuestMemory) -> None:
    assert [(r.gpa, r.size) for r in mem.regions] == [(0, 0x10000), (0x10000, 0x4000), (0x100000, 0x2000)]
    assert mem.size == 0x16000


def test_fresh_ram_is_zero(mem: GuestMemory) -> None:
    assert mem.read(0, 64) == bytes(64)


def test_add_ram_rejects_overlap_and_misalignment() -> None:
    m = GuestMemory()
    m.add_ram(0x2000, 0x2000)
    with pytest.raises(GuestMemoryError, match="overlaps"):
        m.add_ram(0x3000, 0x2000)
    with pytest.raises(GuestMemoryError, match="overlaps"):
        m.add_ram(0, 0x10000)
    with pytest.raises(GuestMemoryError, match="aligned"):
        m.add_ram(0x10001, PAGE_SIZE)
    with pytest.raises(GuestMemoryError, match="aligned"):
        m.add_ram(0x10000, 100)
    with pytest.raises(GuestMemoryError):
        m.add_ram(-PAGE_SIZE, PAGE_SIZE)
    with pytest.raises(GuestMemoryError):
        m.add_ram(0x20000, 0)
    with pytest.raises(GuestMemoryError):
        m.add_ram((1 << 64) - PAGE_SIZE, 2 * PAGE_SIZE)
    m.close()


def test_host_address_points_at_the_mapping(mem: GuestMemory) -> None:
    r = mem.regions[0]
    mem.write(0x123, b"hello")
    assert r.host_address != 0
    assert ctypes.string_at(r.host_address + 0x123, 5) == b"hello"
    ctypes.memmove(r.host_address + 0x200, b"KVM", 3)
    assert mem.read(0x200, 3) == b"KVM"


def test_read_write_roundtrip_and_types(mem: GuestMemory) -> None:
    mem.write(0x1000, b"abc")
    mem.write(0x1003, bytearray(b"def"))
    mem.write(0x1006, memoryview(b"ghi"))
    assert mem.read(0x1000, 9) == b"abcdefghi"


def test_access_crossing_adjacent_regions(mem: GuestMemory) -> None:
    mem.write(0xFFFE, b"\x01\x02\x03\x04")
    assert mem.read(0xFFFE, 4) == b"\x01\x02\x03\x04"
    assert mem.read_u32(0xFFFE) == 0x04030201
    with pytest.raises(GuestMemoryError):
        mem.view(0xFFFE, 4)


@pytest.mark.parametrize(
    "gpa,length",
    [
        (-1, 1),  # negative address
        (0, -1),  # negative length
        (0x13FFF, 2),  # crosses the end of RAM into a hole
        (0x14000, 1),  # in the hole
        (0x101FFF, 2),  # crosses the end of the last region
        ((1 << 64) - 1, 2),  # overflows 64 bits
        (1 << 64, 0),  # beyond the address space
        (0, 1 << 64),  # absurd length
        (0x100000, 1 << 70),
    ],
)
def test_out_of_range_raises_guest_memory_error(mem: GuestMemory, gpa: int, length: int) -> None:
    for call in (
        lambda: mem.read(gpa, length),
        lambda: mem.view(gpa, length),
        lambda: mem.fill(gpa, length, 0xAA),
    ):
        with pytest.raises(GuestMemoryError) as ei:
            call()
        assert "gpa=" in str(ei.value) and "length=" in str(ei.value)


def test_error_names_gpa_and_length(mem: GuestMemory) -> None:
    with pytest.raises(GuestMemoryError) as ei:
        mem.read(0x14000, 16)
    assert "0x14000" in str(ei.value) and "16" in str(ei.value)
    assert ei.value.gpa == 0x14000 and ei.value.length == 16


def test_failed_write_writes_nothing(mem: GuestMemory) -> None:
    with pytest.raises(GuestMemoryError):
        mem.write(0x13FFE, b"\xff" * 4)
    assert mem.read(0x13FFE, 2) == b"\0\0"


@pytest.mark.parametrize("bad", [-1, 0x14000, (1 << 64) - 4, 0x101FFF, 1 << 80])
def test_scalar_accessors_bounds(mem: GuestMemory, bad: int) -> None:
    for fn in (mem.read_u16, mem.read_u32, mem.read_u64):
        with pytest.raises(GuestMemoryError):
            fn(bad)
    for wfn in (mem.write_u16, mem.write_u32, mem.write_u64):
        with pytest.raises(GuestMemoryError):
            wfn(bad, 0)
    if bad < 0 or bad >= 0x102000 or 0x14000 <= bad < 0x100000:
        with pytest.raises(GuestMemoryError):
            mem.read_u8(bad)


def test_non_integer_arguments_raise(mem: GuestMemory) -> None:
    with pytest.raises(GuestMemoryError):
        mem.read(1.5, 2)  # type: ignore[arg-type]
    with pytest.raises(GuestMemoryError):
        mem.read(0, None)  # type: ignore[arg-type]


def test_scalars_are_little_endian(mem: GuestMemory) -> None:
    mem.write_u8(0x10, 0xAB)
    mem.write_u16(0x20, 0x1234)
    mem.write_u32(0x30, 0xDEADBEEF)
    mem.write_u64(0x40, 0x0123456789ABCDEF)
    assert mem.read(0x20, 2) == b"\x34\x12"
    assert mem.read(0x30, 4) == b"\xef\xbe\xad\xde"
    assert mem.read(0x40, 8) == bytes.fromhex("efcdab8967452301")
    assert mem.read_u8(0x10) == 0xAB
    assert mem.read_u16(0x20) == 0x1234
    assert mem.read_u32(0x30) == 0xDEADBEEF
    assert mem.read_u64(0x40) == 0x0123456789ABCDEF
    mem.write_u64(0x101FF8, (1 << 64) - 1)  # last 8 bytes of RAM
    assert mem.read_u64(0x101FF8) == (1 << 64) - 1


def test_scalar_value_must_fit(mem: GuestMemory) -> None:
    with pytest.raises(GuestMemoryError):
        mem.write_u8(0, 0x100)
    with pytest.raises(GuestMemoryError):
        mem.write_u16(0, -1)
    with pytest.raises(GuestMemoryError):
        mem.write_u64(0, 1 << 64)


def test_view_is_zero_copy_and_writable(mem: GuestMemory) -> None:
    v = mem.view(0x100000, 16)
    v[0:4] = b"ABCD"
    assert mem.read(0x100000, 4) == b"ABCD"
    mem.write(0x100004, b"EF")
    assert bytes(v[4:6]) == b"EF"
    v.release()


def test_fill(mem: GuestMemory) -> None:
    mem.fill(0xFFF0, 0x20, 0x5A)
    assert mem.read(0xFFEF, 0x22) == b"\0" + b"\x5a" * 0x20 + b"\0"
    with pytest.raises(GuestMemoryError):
        mem.fill(0, 1, 256)


def test_zero_length_access_is_fine_in_range(mem: GuestMemory) -> None:
    assert mem.read(0x100, 0) == b""
    mem.write(0x100, b"")


def test_is_ram(mem: GuestMemory) -> None:
    assert mem.is_ram(0, 0x14000)
    assert not mem.is_ram(0x13000, 0x2000)
    assert not mem.is_ram(-1)
