"""L1/L2 entries (qcow2.txt "Cluster mapping"): decoding with every check the spec allows, and an L2 cache.

An L2 entry is decoded to a :class:`Mapping` once, so the read and write paths only branch on its kind.
"""

from __future__ import annotations

import struct
import zlib
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple

from refvm.block.driver import BlockError
from refvm.block.qcow2.header import OFFSET_MASK
from refvm.block.qcow2.hostfile import HostFile

__all__ = [
    "COPIED",
    "COMPRESSED",
    "ZERO",
    "UNALLOCATED",
    "NORMAL",
    "ZERO_PLAIN",
    "ZERO_ALLOC",
    "COMPRESSED_KIND",
    "Mapping",
    "L2Cache",
    "check_l1_entry",
    "decode_l2",
    "standard_entry_ok",
    "compressed_range",
    "read_compressed",
]

COPIED = 1 << 63
COMPRESSED = 1 << 62
ZERO = 1
_L2_RESERVED = 0x3F00_0000_0000_01FE  # bits 1-8 and 56-61 of a standard entry
_L1_RESERVED = 0x7F00_0000_0000_01FF  # bits 0-8 and 56-62

UNALLOCATED, NORMAL, ZERO_PLAIN, ZERO_ALLOC, COMPRESSED_KIND = range(5)


class Mapping(NamedTuple):
    """What one guest cluster maps to: kind, host offset (data start), and for compressed clusters the size."""

    kind: int
    offset: int = 0
    size: int = 0
    copied: bool = False


def check_l1_entry(path: str, entry: int, index: int, cluster_size: int, file_size: int) -> int:
    """Offset of the L2 table named by L1 entry ``index`` (0: none), after checking it."""
    off = entry & OFFSET_MASK
    if entry & _L1_RESERVED:
        raise BlockError(path, f"L1 entry {index} (0x{entry:016x}) has a misaligned offset or reserved bits set")
    if off % cluster_size:
        raise BlockError(path, f"L1 entry {index}: L2 table offset 0x{off:x} is not aligned to a cluster")
    if off and off + cluster_size > file_size:
        raise BlockError(path, f"L1 entry {index}: L2 table at 0x{off:x} lies past the end of the file")
    if off == 0 and entry:
        raise BlockError(path, f"L1 entry {index} (0x{entry:016x}) is flagged but has no offset")
    return off


def decode_l2(path: str, entry: int, guest: int, cluster_bits: int, version: int, file_size: int) -> Mapping:
    """Decode and check the L2 entry of guest offset ``guest`` (for messages)."""
    cs = 1 << cluster_bits
    if entry & COMPRESSED:
        if entry & COPIED:
            raise BlockError(path, f"L2 entry for guest offset 0x{guest:x}: compressed cluster flagged COPIED")
        off, size = compressed_range(entry, cluster_bits)
        if off >= file_size:
            raise BlockError(
                path, f"L2 entry for guest offset 0x{guest:x}: compressed data at 0x{off:x} past the end of the file"
            )
        return Mapping(COMPRESSED_KIND, off, size)
    off = entry & OFFSET_MASK
    copied = bool(entry & COPIED)
    if entry & _L2_RESERVED or off % cs:
        raise BlockError(
            path, f"L2 entry for guest offset 0x{guest:x} (0x{entry:016x}) has a misaligned offset or reserved bits"
        )
    if off and off + cs > file_size:
        raise BlockError(
            path, f"L2 entry for guest offset 0x{guest:x}: cluster at 0x{off:x} lies past the end of the file"
        )
    if entry & ZERO:
        if version < 3:
            raise BlockError(path, f"L2 entry for guest offset 0x{guest:x}: zero flag in a version 2 image")
        return Mapping(ZERO_ALLOC, off, 0, copied) if off else Mapping(ZERO_PLAIN)
    if off == 0:
        if copied:
            raise BlockError(path, f"L2 entry for guest offset 0x{guest:x}: COPIED flag on an unallocated cluster")
        return Mapping(UNALLOCATED)
    return Mapping(NORMAL, off, 0, copied)


def standard_entry_ok(entry: int, cluster_size: int, file_size: int) -> bool:
    """True if ``entry``, a standard entry with an offset and no zero flag, passes every check of
    :func:`decode_l2` (a cheaper test for the hot path; :func:`decode_l2` then names what is wrong)."""
    off = entry & OFFSET_MASK
    return not (entry & _L2_RESERVED or off % cluster_size or off + cluster_size > file_size)


def compressed_range(entry: int, cluster_bits: int) -> tuple[int, int]:
    """(host offset, bytes to read) of a compressed cluster descriptor."""
    x = 62 - (cluster_bits - 8)
    off = entry & ((1 << x) - 1)
    extra_sectors = (entry >> x) & ((1 << (62 - x)) - 1)
    return off, (extra_sectors + 1) * 512 - (off & 511)


def read_compressed(f: HostFile, m: Mapping, cluster_size: int, guest: int) -> bytes:
    """Inflate one compressed cluster (raw deflate, as qemu-img convert -c writes it)."""
    size = min(m.size, f.size - m.offset)
    raw = f.pread(m.offset, size)
    try:
        d = zlib.decompressobj(-15)
        out = d.decompress(raw, cluster_size)
    except zlib.error as exc:
        raise BlockError(f.path, f"compressed cluster for guest offset 0x{guest:x} does not inflate: {exc}") from None
    if len(out) != cluster_size:
        raise BlockError(
            f.path, f"compressed cluster for guest offset 0x{guest:x} inflates to {len(out)} bytes, not {cluster_size}"
        )
    return out


class L2Cache:
    """A small LRU of L2 tables, decoded to lists of entries, with write-back of changed entries.

    :meth:`store` only records which entries of a table changed: the owner writes them out later, in order
    (:meth:`write_dirty`, called from the image's write-back after a sync that made the data and refcounts
    the entries point to durable). So after a host power loss no L2 entry on disk can point to a cluster
    whose refcount never reached the disk. A dirty table is never dropped silently: evicting one first asks
    the owner (``on_dirty_evict``) for a full ordered write-back.
    """

    def __init__(
        self, f: HostFile, cluster_size: int, capacity: int = 32, on_dirty_evict: Callable[[], None] | None = None
    ) -> None:
        self.f = f
        self.cs = cluster_size
        self.capacity = capacity
        self._tables: OrderedDict[int, list[int]] = OrderedDict()
        #: table offset -> [first, last) range of entries changed in memory and not yet written
        self._dirty: dict[int, tuple[int, int]] = {}
        self._on_dirty_evict = on_dirty_evict

    @property
    def dirty(self) -> bool:
        return bool(self._dirty)

    def get(self, offset: int) -> list[int]:
        table = self._tables.get(offset)
        if table is None:
            raw = self.f.pread(offset, self.cs)
            table = list(struct.unpack(f">{self.cs // 8}Q", raw))
            self._insert(offset, table)
        else:
            self._tables.move_to_end(offset)
        return table

    def _insert(self, offset: int, table: list[int]) -> None:
        self._tables[offset] = table
        self._tables.move_to_end(offset)
        while len(self._tables) > self.capacity:
            victim = next(iter(self._tables))
            if victim in self._dirty:
                self._write_back_all()
            self._tables.pop(victim)

    def _write_back_all(self) -> None:
        if self._on_dirty_evict is not None:
            self._on_dirty_evict()  # the owner's ordered write-back (sync first), which calls write_dirty
        self.write_dirty()  # no owner: at least never lose the entries

    def put_new(self, offset: int, table: list[int]) -> None:
        """Write a whole new table at once and cache it.

        No ordering needed: nothing references the table until its L1 entry is written, and the image defers
        that write until after a sync (its write-back), which makes this table durable first."""
        self.f.pwrite(offset, struct.pack(f">{len(table)}Q", *table))
        self._insert(offset, table)

    def store(self, offset: int, table: list[int], first: int, last: int) -> None:
        """Entries [first, last) of ``table`` changed: remember them for the next write-back."""
        lo, hi = self._dirty.get(offset, (first, last))
        self._dirty[offset] = (min(lo, first), max(hi, last))
        if self._tables.get(offset) is not table:
            self._insert(offset, table)  # evicted meanwhile (clean then): cache the caller's copy again

    def write_dirty(self) -> bool:
        """Write every changed range (one ``pwrite`` per table); True if there was any. No sync here."""
        dirty, self._dirty = self._dirty, {}
        for offset, (first, last) in dirty.items():
            table = self._tables[offset]
            self.f.pwrite(offset + first * 8, struct.pack(f">{last - first}Q", *table[first:last]))
        return bool(dirty)

    def drop(self, offset: int) -> None:
        if offset in self._dirty:
            self._write_back_all()
        self._tables.pop(offset, None)
