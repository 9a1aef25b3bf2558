"""Guest-physical memory: mmap-backed RAM regions with bounds-checked access.

Every guest-physical access in refvm goes through :class:`GuestMemory`. Guest-controlled
values (descriptor addresses, lengths) arrive here unchecked, so every entry point validates
its arguments and turns any out-of-range request -- negative, overflowing 64 bits, crossing
the end of a region or falling into a hole -- into :class:`GuestMemoryError`. A device must
never see an ``IndexError`` or, worse, silently read the wrong bytes.

Regions are anonymous private mappings so the same buffer can be handed to KVM
(``KVM_SET_USER_MEMORY_REGION`` wants a host virtual address: :attr:`RamRegion.host_address`)
and be read by Python devices without copies.
"""

from __future__ import annotations

import bisect
import ctypes
import mmap
import struct
import threading
from dataclasses import dataclass, field

__all__ = ["GuestMemoryError", "RamRegion", "GuestMemory", "PAGE_SIZE"]

PAGE_SIZE = mmap.PAGESIZE
_GPA_LIMIT = 1 << 64

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class GuestMemoryError(Exception):
    """A guest-physical access outside RAM (or with nonsensical arguments)."""

    def __init__(self, message: str, gpa: int | None = None, length: int | None = None) -> None:
        super().__init__(message)
        self.gpa = gpa
        self.length = length


def _describe(gpa: object, length: object) -> str:
    if isinstance(gpa, int) and gpa >= 0:
        g = f"{gpa:#x}"
    else:
        g = repr(gpa)
    return f"gpa={g} length={length!r}"


@dataclass(eq=False)
class RamRegion:
    """One contiguous block of guest RAM backed by an anonymous mapping."""

    gpa: int
    size: int
    mmap: mmap.mmap = field(repr=False)
    host_address: int = 0
    #: A writable view of the whole mapping; device buffers are slices of it (no copy, no new export).
    view: memoryview = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.view = memoryview(self.mmap)

    @property
    def end(self) -> int:
        """First guest-physical address past this region."""
        return self.gpa + self.size

    def contains(self, gpa: int, length: int = 1) -> bool:
        return self.gpa <= gpa and gpa + length <= self.end


def _host_address(mm: mmap.mmap) -> int:
    """Address of the mapping in our own address space.

    ``from_buffer`` exports the buffer only while the ctypes object lives; we drop it at once
    so the mapping can still be closed later. The address itself stays valid until then.
    """
    c = ctypes.c_char.from_buffer(mm)
    try:
        return ctypes.addressof(c)
    finally:
        del c


class GuestMemory:
    """The guest-physical address space: a sorted list of non-overlapping RAM regions."""

    def __init__(self) -> None:
        self.regions: list[RamRegion] = []
        self._starts: list[int] = []
        #: Pages (gpa >> 12) written by device models while a migration logs (None: not logging): through
        #: write/fill/write_u*, and through views as their holders report with mark_dirty().
        self._dirty: set[int] | None = None
        self._dirty_lock = threading.Lock()
        #: True while a migration logs: the one attribute a view holder tests before calling mark_dirty().
        self.dirty_logging = False
        #: The machine's x-deviation=migration-drop-dirty (refvm/deviations.py): view holders mark nothing.
        self.drop_view_marks = False

    # ---------------------------------------------------------------- layout
    def add_ram(self, gpa: int, size: int) -> RamRegion:
        """Map ``size`` bytes of zeroed RAM at ``gpa`` (both page aligned, no overlap)."""
        if not isinstance(gpa, int) or not isinstance(size, int):
            raise GuestMemoryError(f"add_ram: integers required ({_describe(gpa, size)})", None, None)
        if gpa < 0 or size <= 0 or gpa + size > _GPA_LIMIT:
            raise GuestMemoryError(f"add_ram: bad range {_describe(gpa, size)}", gpa, size)
        if gpa % PAGE_SIZE or size % PAGE_SIZE:
            raise GuestMemoryError(
                f"add_ram: {_describe(gpa, size)} not aligned to page size {PAGE_SIZE:#x}", gpa, size
            )
        for r in self.regions:
            if gpa < r.end and r.gpa < gpa + size:
                raise GuestMemoryError(
                    f"add_ram: {_describe(gpa, size)} overlaps region gpa={r.gpa:#x} size={r.size:#x}",
                    gpa,
                    size,
                )
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_NORESERVE", 0)
        mm = mmap.mmap(-1, size, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        region = RamRegion(gpa=gpa, size=size, mmap=mm, host_address=_host_address(mm))
        idx = bisect.bisect_left(self._starts, gpa)
        self._starts.insert(idx, gpa)
        self.regions.insert(idx, region)
        return region

    @property
    def size(self) -> int:
        """Total bytes of RAM over all regions."""
        return sum(r.size for r in self.regions)

    def close(self) -> None:
        """Unmap all regions. Views still held elsewhere keep their mapping alive."""
        for r in self.regions:
            r.view.release()  # slices handed out keep the mapping alive on their own
            try:
                r.mmap.close()
            except BufferError:
                pass  # an exported memoryview still exists; the GC will unmap it later
        self.regions.clear()
        self._starts.clear()

    # ---------------------------------------------------------------- lookup
    @staticmethod
    def _check(gpa: object, length: object) -> None:
        """Reject non-integers, negatives and ranges that overflow the 64-bit address space."""
        for v in (gpa, length):
            if not isinstance(v, int) or isinstance(v, bool):
                raise GuestMemoryError(f"non-integer access {_describe(gpa, length)}", None, None)
        assert isinstance(gpa, int) and isinstance(length, int)
        if gpa < 0 or length < 0 or gpa >= _GPA_LIMIT or gpa + length > _GPA_LIMIT:
            raise GuestMemoryError(f"access out of range {_describe(gpa, length)}", gpa, length)

    def find_region(self, gpa: int) -> RamRegion | None:
        """The region holding ``gpa``, or None for a hole."""
        idx = bisect.bisect_right(self._starts, gpa) - 1
        if idx < 0:
            return None
        r = self.regions[idx]
        return r if gpa < r.gpa + r.size else None

    def _locate(self, gpa: int, length: int) -> tuple[mmap.mmap, int]:
        """(mapping, offset) for an access that lies inside one region, else raise."""
        self._check(gpa, length)
        r = self.find_region(gpa)
        if r is None or gpa + length > r.gpa + r.size:
            raise GuestMemoryError(f"access outside RAM {_describe(gpa, length)}", gpa, length)
        return r.mmap, gpa - r.gpa

    def _pieces(self, gpa: int, length: int) -> list[tuple[mmap.mmap, int, int]]:
        """Split an access over adjacent regions; raise if any byte falls outside RAM."""
        self._check(gpa, length)
        out: list[tuple[mmap.mmap, int, int]] = []
        cur, left = gpa, length
        while left > 0:
            r = self.find_region(cur)
            if r is None:
                raise GuestMemoryError(f"access outside RAM {_describe(gpa, length)}", gpa, length)
            n = min(left, r.end - cur)
            out.append((r.mmap, cur - r.gpa, n))
            cur += n
            left -= n
        return out

    def is_ram(self, gpa: int, length: int = 1) -> bool:
        """True if every byte of [gpa, gpa+length) is RAM."""
        try:
            self._pieces(gpa, length)
        except GuestMemoryError:
            return False
        return True

    # ---------------------------------------------------------------- bytes
    def read(self, gpa: int, length: int) -> bytes:
        """Copy ``length`` bytes out of guest RAM (may cross adjacent regions)."""
        pieces = self._pieces(gpa, length)
        if len(pieces) == 1:
            mm, off, n = pieces[0]
            return mm[off : off + n]
        return b"".join(mm[off : off + n] for mm, off, n in pieces)

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` into guest RAM; nothing is written if any byte is out of range."""
        src = memoryview(data).cast("B")
        pieces = self._pieces(gpa, src.nbytes)
        pos = 0
        for mm, off, n in pieces:
            mm[off : off + n] = src[pos : pos + n]
            pos += n
        if self._dirty is not None:  # after the bytes land: a page copied before this mark is sent again
            self.mark_dirty(gpa, src.nbytes)

    def fill(self, gpa: int, length: int, byte: int = 0) -> None:
        """Set ``length`` bytes to ``byte`` (memset)."""
        if not isinstance(byte, int) or not 0 <= byte <= 0xFF:
            msg = f"fill byte {byte!r} not in 0..255 ({_describe(gpa, length)})"
            raise GuestMemoryError(msg, gpa, length)
        pieces = self._pieces(gpa, length)
        chunk = bytes([byte]) * min(length, 1 << 20)
        for mm, off, n in pieces:
            done = 0
            while done < n:
                k = min(n - done, len(chunk))
                mm[off + done : off + done + k] = chunk[:k]
                done += k
        if self._dirty is not None:
            self.mark_dirty(gpa, length)

    def views(self, gpa: int, length: int) -> list[memoryview]:
        """Zero-copy writable views of ``[gpa, gpa+length)``, one per region it crosses; raises outside RAM.

        This and :meth:`view` are how devices get at guest buffers without copies. Writes through them
        pass no log here: their holder reports them with :meth:`mark_dirty` while :attr:`dirty_logging`
        (virtio at completion, :meth:`refvm.virtio.queue.Virtqueue.add_used`, and at its ring writes).
        """
        return [memoryview(mm)[off : off + n] for mm, off, n in self._pieces(gpa, length)]

    def view(self, gpa: int, length: int) -> memoryview:
        """A zero-copy writable view of one region's bytes; raises if it would span regions.

        The view pins the mapping: hold it only for the duration of an operation.
        """
        mm, off = self._locate(gpa, length)
        return memoryview(mm)[off : off + length]

    # ---------------------------------------------------------------- dirty log (migration)
    def start_dirty_log(self) -> None:
        """Record the pages written through write/fill/write_u* from now on, and those view holders mark."""
        with self._dirty_lock:
            self._dirty = set()
        self.dirty_logging = True

    def stop_dirty_log(self) -> None:
        self.dirty_logging = False
        with self._dirty_lock:
            self._dirty = None

    def take_dirty(self) -> set[int]:
        """Guest-physical addresses of the pages written since the last call (or start), and forget them."""
        with self._dirty_lock:
            dirty, self._dirty = self._dirty, set() if self._dirty is not None else None
        return {page << 12 for page in dirty or ()}

    def mark_dirty(self, gpa: int, length: int) -> None:
        """Log ``[gpa, gpa+length)`` as written (a write through a view, reported after its bytes landed, so a
        page copied before the mark is sent again).  A no-op while not logging; ranges are not checked: the
        holder's view was, and a page outside RAM is never sent."""
        with self._dirty_lock:
            if length > 0 and self._dirty is not None:
                self._dirty.update(range(gpa >> 12, ((gpa + length - 1) >> 12) + 1))

    # ---------------------------------------------------------------- scalars (little endian)
    def read_u8(self, gpa: int) -> int:
        mm, off = self._locate(gpa, 1)
        return mm[off]

    def read_u16(self, gpa: int) -> int:
        if type(gpa) is int:
            r = self.find_region(gpa)
            if r is not None and gpa + 2 <= r.gpa + r.size:
                return _U16.unpack_from(r.mmap, gpa - r.gpa)[0]
        return int.from_bytes(self.read(gpa, 2), "little")

    def read_u32(self, gpa: int) -> int:
        if type(gpa) is int:
            r = self.find_region(gpa)
            if r is not None and gpa + 4 <= r.gpa + r.size:
                return _U32.unpack_from(r.mmap, gpa - r.gpa)[0]
        return int.from_bytes(self.read(gpa, 4), "little")

    def read_u64(self, gpa: int) -> int:
        if type(gpa) is int:
            r = self.find_region(gpa)
            if r is not None and gpa + 8 <= r.gpa + r.size:
                return _U64.unpack_from(r.mmap, gpa - r.gpa)[0]
        return int.from_bytes(self.read(gpa, 8), "little")

    def _write_uint(self, gpa: int, value: int, size: int) -> None:
        if not isinstance(value, int) or not 0 <= value < (1 << (8 * size)):
            raise GuestMemoryError(
                f"value {value!r} does not fit in {size} bytes ({_describe(gpa, size)})", gpa, size
            )
        self.write(gpa, value.to_bytes(size, "little"))

    def write_u8(self, gpa: int, value: int) -> None:
        self._write_uint(gpa, value, 1)

    def write_u16(self, gpa: int, value: int) -> None:
        self._write_uint(gpa, value, 2)

    def write_u32(self, gpa: int, value: int) -> None:
        self._write_uint(gpa, value, 4)

    def write_u64(self, gpa: int, value: int) -> None:
        self._write_uint(gpa, value, 8)
