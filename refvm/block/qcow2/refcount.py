"""Reference counts (qcow2.txt "Host cluster management") and cluster allocation at the end of the file.

Ordering rule that keeps the image consistent at every instant (lazy refcounts off): a cluster's refcount is
raised *before* anything points to it, and lowered only *after* the last pointer to it is gone. A crash in
between can leak a cluster, never corrupt one. Against a host power loss, which may keep any subset of the writes
since the last sync, a new refcount block is synced before the table names it and a new table before the header
does (``HostFile.barrier``); L2/L1 entries wait for the image's write-back. Every update is checked (overflow,
underflow, a "free" cluster that is not free) before the first byte of it is written, so a refused update changes
nothing.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Callable

from refvm.block.driver import BlockError
from refvm.block.qcow2.header import MAX_REFTABLE_BYTES, OFFSET_MASK
from refvm.block.qcow2.hostfile import HostFile

__all__ = ["Refcounts"]

_BLOCK_CACHE = 16


class Refcounts:
    """The refcount table and blocks of one image, with an allocator that hands out clusters at EOF."""

    def __init__(
        self,
        f: HostFile,
        cluster_bits: int,
        refcount_order: int,
        table_offset: int,
        table_clusters: int,
        on_table_moved: Callable[[int, int], None],
    ) -> None:
        self.f = f
        self.cluster_bits = cluster_bits
        self.cs = 1 << cluster_bits
        self.order = refcount_order
        self.bits = 1 << refcount_order
        self.max = (1 << self.bits) - 1
        self.per_block = (self.cs * 8) >> refcount_order
        self.table_offset = table_offset
        self.table_clusters = table_clusters
        raw = f.pread(table_offset, table_clusters * self.cs)
        self.table = list(struct.unpack(f">{len(raw) // 8}Q", raw))
        self._on_table_moved = on_table_moved
        self._blocks: OrderedDict[int, bytearray] = OrderedDict()
        #: Next cluster index the allocator hands out: the first cluster at or after the end of the file.
        self.end = -(-f.size // self.cs)

    # -- entries inside a block -------------------------------------------------------------------------

    def _get(self, block: bytearray, i: int) -> int:
        if self.order >= 3:
            n = self.bits >> 3
            return int.from_bytes(block[i * n : i * n + n], "big")
        bit = i * self.bits
        return (block[bit >> 3] >> (bit & 7)) & self.max

    def _set(self, block: bytearray, i: int, value: int) -> None:
        if self.order >= 3:
            n = self.bits >> 3
            block[i * n : i * n + n] = value.to_bytes(n, "big")
            return
        bit = i * self.bits
        shift = bit & 7
        byte = block[bit >> 3] & ~(self.max << shift) & 0xFF
        block[bit >> 3] = byte | (value << shift)

    def _entry_bytes(self, i: int, count: int) -> tuple[int, int]:
        """(byte offset, byte length) in a block covering entries [i, i+count)."""
        first = (i * self.bits) >> 3
        last = ((i + count) * self.bits + 7) >> 3
        return first, last - first

    # -- blocks -------------------------------------------------------------------------------------------

    def _block_offset(self, ti: int) -> int:
        """Offset of refcount block ``ti`` (0 if not allocated), checked against the file."""
        if ti >= len(self.table):
            return 0
        entry = self.table[ti]
        off = entry & OFFSET_MASK
        if entry & ~OFFSET_MASK or off % self.cs:
            raise BlockError(self.f.path, f"Refcount table entry {ti} (0x{entry:x}) is misaligned or has reserved bits")
        if off and off + self.cs > self.f.size:
            raise BlockError(self.f.path, f"Refcount block {ti} at 0x{off:x} lies past the end of the file")
        if off == 0 and entry:
            raise BlockError(self.f.path, f"Refcount table entry {ti} points to offset 0 (the header)")
        return off

    def _load(self, ti: int) -> bytearray | None:
        off = self._block_offset(ti)
        if not off:
            return None
        block = self._blocks.get(off)
        if block is None:
            block = bytearray(self.f.pread(off, self.cs))
            self._blocks[off] = block
            if len(self._blocks) > _BLOCK_CACHE:
                self._blocks.popitem(last=False)
        else:
            self._blocks.move_to_end(off)
        return block

    def get(self, index: int) -> int:
        """Refcount of host cluster ``index``."""
        ti, i = divmod(index, self.per_block)
        block = self._load(ti)
        return 0 if block is None else self._get(block, i)

    # -- updates ------------------------------------------------------------------------------------------

    def _spans(self, index: int, count: int) -> list[tuple[int, int, int]]:
        """(table index, first entry, entries) of each refcount block the clusters [index, +count) touch."""
        out = []
        pos, end = index, index + count
        while pos < end:
            ti, i = divmod(pos, self.per_block)
            n = min(end - pos, self.per_block - i)
            out.append((ti, i, n))
            pos += n
        return out

    def all_free(self, index: int, count: int) -> bool:
        """True if clusters [index, index+count) all have refcount 0 (one byte compare per block, no
        per-cluster loop; entries sharing a byte with a neighbour are looked at one by one)."""
        for ti, i, n in self._spans(index, count):
            block = self._load(ti)
            if block is None:
                continue
            first, length = self._entry_bytes(i, n)
            if block[first : first + length].count(0) != length and any(
                self._get(block, k) for k in range(i, i + n)
            ):
                return False
        return True

    def _bulk_increment(self, index: int, count: int) -> bool:
        """+1 on clusters [index, +count) known to be free, one slice store and one pwrite per block
        (byte-sized entries only); False when the fast path does not apply."""
        if self.order < 3 or not self.all_free(index, count):
            return False
        one = (1).to_bytes(self.bits >> 3, "big")
        for ti, i, n in self._spans(index, count):
            block = self._load(ti)
            first, length = self._entry_bytes(i, n)
            if block is None:
                block = self._new_block(ti)  # lands past these clusters (the allocator's end moved first)
            if block[first : first + length].count(0) == length:
                block[first : first + length] = one * n
            else:  # a block made just now may already count clusters of its own: add one by one, checked
                for k in range(i, i + n):
                    old = self._get(block, k)
                    self._check_value(ti * self.per_block + k, old, old + 1)
                    self._set(block, k, old + 1)
            self.f.pwrite(self.table[ti] + first, block[first : first + length])
        return True

    def update(self, index: int, count: int, delta: int) -> None:
        """Add ``delta`` to the refcounts of clusters [index, index+count); all checked before any write."""
        if count <= 0:
            return
        if delta == 1 and count > 1 and self._bulk_increment(index, count):
            return
        # pass 1: check every entry whose block exists
        pos = index
        while pos < index + count:
            ti, i = divmod(pos, self.per_block)
            n = min(index + count - pos, self.per_block - i)
            block = self._load(ti)
            for k in range(i, i + n):
                old = 0 if block is None else self._get(block, k)
                self._check_value(pos + k - i, old, old + delta)
            pos += n
        # pass 2: apply, creating missing blocks (their entries are 0, so a positive delta cannot overflow)
        pos = index
        while pos < index + count:
            ti, i = divmod(pos, self.per_block)
            n = min(index + count - pos, self.per_block - i)
            block = self._load(ti)
            if block is None:
                block = self._new_block(ti)
            for k in range(i, i + n):
                self._set(block, k, self._get(block, k) + delta)
            first, length = self._entry_bytes(i, n)
            self.f.pwrite(self.table[ti] + first, block[first : first + length])
            pos += n

    def check_increment(self, index: int, old: int) -> None:
        """Raise the overflow error if cluster ``index`` with refcount ``old`` cannot take one more reference."""
        self._check_value(index, old, old + 1)

    def _check_value(self, index: int, old: int, new: int) -> None:
        if new > self.max:
            raise BlockError(
                self.f.path,
                f"refcount overflow: cluster {index} (offset 0x{index * self.cs:x}) already has refcount {old},"
                f" the maximum for {self.bits}-bit refcounts is {self.max}",
            )
        if new < 0:
            raise BlockError(
                self.f.path, f"refcount underflow: cluster {index} (offset 0x{index * self.cs:x}) has refcount {old}"
            )

    def _new_block(self, ti: int) -> bytearray:
        """Allocate refcount block ``ti`` at the end of the file (growing the table if needed)."""
        if ti >= len(self.table):
            self._grow_table(ti + 1)
            block = self._load(ti)
            if block is not None:  # the table growth created it
                return block
        idx = self.end
        self.end += 1
        block = bytearray(self.cs)
        self_described = idx // self.per_block == ti
        if self_described:
            self._set(block, idx % self.per_block, 1)
        self.f.pwrite(idx * self.cs, block)
        if not self_described:
            self.update(idx, 1, +1)  # refcount before use
        off = idx * self.cs
        self.f.barrier()  # the block durable before the table names it (else it could read as all zeroes)
        self.f.pwrite(self.table_offset + ti * 8, struct.pack(">Q", off))
        self.table[ti] = off
        self._blocks[off] = block
        return block

    def _grow_table(self, min_entries: int) -> None:
        """Move the refcount table to a bigger one at EOF, with new blocks that cover the table itself."""
        per_cluster = self.cs // 8
        entries = max(min_entries, 2 * len(self.table))
        start = self.end
        new_blocks: list[int] = []
        while True:
            entries = -(-entries // per_cluster) * per_cluster
            clusters = entries // per_cluster
            region_end = start + clusters + len(new_blocks)
            needed = [
                ti
                for ti in range(start // self.per_block, (region_end - 1) // self.per_block + 1)
                if ti >= len(self.table) or not self.table[ti]
            ]
            if len(needed) == len(new_blocks) and (not needed or max(needed) < entries):
                break
            new_blocks = needed
            entries = max(entries, (max(needed) + 1) if needed else 0)
        if clusters * self.cs > MAX_REFTABLE_BYTES:
            raise BlockError(self.f.path, "refcount table would exceed its maximum size")
        table = self.table + [0] * (entries - len(self.table))
        for k, ti in enumerate(new_blocks):
            table[ti] = (start + clusters + k) * self.cs
        region = range(start, start + clusters + len(new_blocks))
        self.end = region.stop
        # new blocks, each carrying the refcounts of the region clusters it covers
        for ti in new_blocks:
            block = bytearray(self.cs)
            for idx in region:
                if idx // self.per_block == ti:
                    self._set(block, idx % self.per_block, 1)
            self.f.pwrite(table[ti], block)
            self._blocks[table[ti]] = block
        # region clusters covered by blocks that already exist
        for idx in region:
            if idx // self.per_block not in new_blocks:
                self.update(idx, 1, +1)
        self.f.pwrite(start * self.cs, struct.pack(f">{entries}Q", *table))
        old_off, old_clusters = self.table_offset, self.table_clusters
        self.f.barrier()  # the new table and blocks durable before the header points to them
        self._on_table_moved(start * self.cs, clusters)  # the header now points to the new table
        self.table, self.table_offset, self.table_clusters = table, start * self.cs, clusters
        self.f.barrier()  # the header durable before the old table's refcount drops
        self.update(old_off // self.cs, old_clusters, -1)

    # -- allocation ---------------------------------------------------------------------------------------

    def alloc_in_block(self, count: int) -> int:
        """The common case of :meth:`alloc`, with no per-cluster work: ``count`` free clusters at the end of the
        file whose refcounts sit in one existing block of byte-sized entries get refcount 1 (one slice store,
        one ``pwrite``). Returns their host offset, or -1 having changed nothing when the case does not apply
        (the caller then takes :meth:`alloc`, which checks and reports every problem)."""
        start = self.end
        ti, i = divmod(start, self.per_block)
        if self.order < 3 or i + count > self.per_block or (start + count) * self.cs > 1 << 56:
            return -1
        block = self._load(ti)
        width = self.bits >> 3
        first, stop = i * width, (i + count) * width
        if block is None or block.count(0, first, stop) != stop - first:
            return -1
        self.end = start + count
        block[first:stop] = (1).to_bytes(width, "big") * count
        self.f.pwrite(self.table[ti] + first, memoryview(block)[first:stop])
        return start * self.cs

    def alloc(self, count: int) -> int:
        """Allocate ``count`` contiguous clusters at the end of the file; returns the host offset.

        The clusters' refcounts are 1 when this returns (written to the file), before the caller uses them.
        """
        start = self.end
        for idx in () if self.all_free(start, count) else range(start, start + count):
            rc = self.get(idx)
            if rc == self.max:
                self.check_increment(idx, rc)
            if rc:
                raise BlockError(
                    self.f.path,
                    f"cluster {idx} at 0x{idx * self.cs:x} (past the end of the file) has refcount {rc};"
                    " the refcount structure is corrupt",
                )
        if (start + count) * self.cs > 1 << 56:
            raise BlockError(self.f.path, "image file would exceed the 64 PB limit of qcow2 offsets")
        self.end = start + count
        self.update(start, count, +1)
        return start * self.cs

    def free(self, offset: int, count: int = 1) -> list[int]:
        """Drop one reference of clusters [offset, +count clusters); returns indexes that became free."""
        index = offset // self.cs
        self.update(index, count, -1)
        return [i for i in range(index, index + count) if self.get(i) == 0]
