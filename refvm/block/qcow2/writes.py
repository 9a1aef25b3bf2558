"""The qcow2 write path: a request checked in full, then written in cluster runs.

A request is split into runs of clusters, never handled one cluster at a time: a run this image owns back to
back on the host is one ``pwrite`` in place; the runs that need new clusters get them from one allocation at the
end of the file (one refcount update per request and L2 table), each run's data in one ``pwritev`` (a partial
first or last cluster completed with what it held: zeroes, the backing file, a compressed or shared cluster),
and the changed L2 entries recorded in the L2 cache; only then are old clusters released. Sequential guest
writes take a leaner path still (:meth:`Qcow2Writes._write_simple`).

Ordering (lazy refcounts off), as the disk sees it even after a host power loss: refcounts and data are
written at once, but L2 and L1 entries only by the image's ordered write-back (``writeback``: a sync, then
the L2 and L1 entries), run at a guest flush, at close, on evicting a dirty L2 table, and before any
refcount drops (a freed cluster's old entry is durable-gone first). So no entry on disk ever points to a
cluster whose refcount or contents are not: a crash of refvm or of the host can leak clusters, never corrupt
the image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from refvm.block.driver import BlockDriver, BlockError
from refvm.block.qcow2.header import OFFSET_MASK, Header
from refvm.block.qcow2.hostfile import HostFile
from refvm.block.qcow2.l2 import COMPRESSED_KIND, COPIED, NORMAL, UNALLOCATED, ZERO_ALLOC, L2Cache, Mapping
from refvm.block.qcow2.refcount import Refcounts

__all__ = ["Qcow2Writes"]

_UNALLOCATED = Mapping(UNALLOCATED)


class Qcow2Writes:
    """Writes of :class:`refvm.block.qcow2.Qcow2Image` (a mixin: the image's state and mapping helpers)."""

    path: str
    readonly: bool
    h: Header
    cb: int
    cs: int
    l2_entries: int
    l1_shift: int
    l1: list[int]
    rc: Refcounts
    l2: L2Cache
    f: HostFile
    backing: BlockDriver | None
    _zcache: tuple[int, bytes] | None
    _l1_dirty: set[int]

    if TYPE_CHECKING:

        def _check_writable(self) -> None: ...
        def _check_range(self, offset: int, length: int) -> None: ...
        def _l2_offset(self, l1i: int) -> int: ...
        def _map(self, table: list[int], guest: int) -> Mapping: ...
        def _host_run(self, table: list[int], guest: int, n: int) -> int: ...
        def _inflate(self, m: Mapping, guest: int) -> bytes: ...
        def _read_backing(self, out: bytearray, base: int, pos: int, end: int) -> None: ...
        def _before_free(self) -> None: ...

    def _validate(self, offset: int, length: int) -> None:
        """Decode every entry a request touches, and check the clusters it may allocate are free."""
        pos, end, clusters = offset, offset + length, 0
        while pos < end:
            l1i = pos >> self.l1_shift
            chunk_end = min(end, (l1i + 1) << self.l1_shift)
            l2off = self._l2_offset(l1i)
            if l2off:
                if not self.l1[l1i] & COPIED and self.rc.get(l2off >> self.cb) != 1:
                    raise BlockError(self.path, f"L2 table at 0x{l2off:x} is shared (refcount != 1); refusing to write")
                table = self.l2.get(l2off)
                p = pos & ~(self.cs - 1)
                i0 = (p >> self.cb) & (self.l2_entries - 1)
                n = (chunk_end - p + self.cs - 1) >> self.cb
                if not any(table[i0 : i0 + n]) or (table[i0] & COPIED and self._host_run(table, p, n) >= 0):
                    p = chunk_end  # all unallocated, or one owned run: nothing shared to look up
                while p < chunk_end:
                    m = self._map(table, p)
                    if m.kind == NORMAL and not m.copied:
                        self.rc.get(m.offset >> self.cb)
                    p += self.cs
            clusters += ((chunk_end - 1) >> self.cb) - (pos >> self.cb) + 2
            pos = chunk_end
        start = self.rc.end
        for idx in () if self.rc.all_free(start, clusters + 2) else range(start, start + clusters + 2):
            rc = self.rc.get(idx)
            if rc == self.rc.max:
                self.rc.check_increment(idx, rc)
            if rc:
                raise BlockError(
                    self.path, f"cluster {idx} past the end of the file has refcount {rc}: refcounts are corrupt"
                )

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        self._check_writable()
        view = memoryview(data).cast("B")
        self._check_range(offset, view.nbytes)
        if not view.nbytes or self._write_simple(offset, (view,), view.nbytes):
            return
        self._validate(offset, view.nbytes)
        pos, end = offset, offset + view.nbytes
        while pos < end:
            l1i = pos >> self.l1_shift
            chunk_end = min(end, (l1i + 1) << self.l1_shift)
            self._write_chunk(view, offset, pos, chunk_end, l1i)
            pos = chunk_end

    pwrite = write

    def pwritev_from(self, offset: int, bufs: Sequence[memoryview]) -> None:
        """Write ``bufs`` (guest RAM views): the sequential shapes straight from them (one ``pwritev``), any
        other request from the buffers joined once (the general path wants one buffer)."""
        if len(bufs) == 1:
            self.write(offset, bufs[0])
            return
        self._check_writable()
        length = sum(map(len, bufs))
        self._check_range(offset, length)
        if length and not self._write_simple(offset, bufs, length):
            self.write(offset, b"".join(bufs))

    def _write_simple(self, offset: int, bufs: Sequence[memoryview], length: int) -> bool:
        """The two shapes sequential guest writes take, each with one data write and no per-cluster work:
        whole unallocated clusters in an L2 table this image owns (one allocation at the end of the file, one
        ``pwritev`` of data, one ``pwrite`` of L2 entries), or clusters this image owns back to back on the host
        (one ``pwritev`` in place). False, having changed nothing, for anything else (the general path)."""
        end = offset + length
        l1i = offset >> self.l1_shift
        if (end - 1) >> self.l1_shift != l1i or l1i >= len(self.l1) or not self.l1[l1i] & COPIED:
            return False  # spans L2 tables, or the table is missing or not known to be this image's alone
        l2off = self._l2_offset(l1i)
        table = self.l2.get(l2off)
        i0 = (offset >> self.cb) & (self.l2_entries - 1)
        n = ((end - 1) >> self.cb) - (offset >> self.cb) + 1
        if any(table[i0 : i0 + n]):
            if not table[i0] & COPIED or self._host_run(table, offset, n) < 0:
                return False
            self.f.pwritev((table[i0] & OFFSET_MASK) + (offset & (self.cs - 1)), bufs)
            return True
        if (offset | end) & (self.cs - 1):
            return False  # a partial cluster needs copy-on-write
        host = self.rc.alloc_in_block(n)
        if host < 0:
            return False
        self.f.pwritev(host, bufs)
        table[i0 : i0 + n] = range(host | COPIED, (host + n * self.cs) | COPIED, self.cs)
        self.l2.store(l2off, table, i0, i0 + n)
        return True

    def _l2_for_write(self, l1i: int) -> tuple[int, list[int]]:
        """The L2 table of ``l1i``, allocated (zeroed, then linked) if missing, flagged COPIED."""
        l2off = self._l2_offset(l1i)
        if l2off == 0:
            l2off = self.rc.alloc(1)
            table = [0] * self.l2_entries
            self.l2.put_new(l2off, table)
            self._set_l1(l1i, l2off | COPIED)
            return l2off, table
        if not self.l1[l1i] & COPIED:
            self._set_l1(l1i, l2off | COPIED)  # refcount 1 checked by _validate
        return l2off, self.l2.get(l2off)

    def _set_l1(self, l1i: int, entry: int) -> None:
        """Change an L1 entry in memory (reads use it at once); :meth:`writeback` writes it out after a sync,
        so the L2 table it names is durable before it is."""
        self.l1[l1i] = entry
        self._l1_dirty.add(l1i)

    def _write_chunk(self, view: memoryview, base: int, pos: int, end: int, l1i: int) -> None:
        """Write guest ``[pos, end)`` (inside L2 table ``l1i``) from ``view`` (guest offset ``base``).

        Clusters are handled in runs, never one by one: a run of clusters written in place (already owned by
        this image) is one ``pwrite``; the runs that need new clusters get them from one allocation (one
        refcount write) and one ``pwritev`` each (the partial first and last clusters with their old data).
        Then the changed L2 entries are written with one ``pwrite``, and only then are the old clusters freed.
        """
        l2off, table = self._l2_for_write(l1i)
        cb, mask = self.cb, self.cs - 1
        i0 = (pos >> cb) & (self.l2_entries - 1)
        n = ((end - 1) >> cb) - (pos >> cb) + 1
        to_free: list[Mapping] = []
        entries = table[i0 : i0 + n]
        if not any(entries):  # all unallocated (a fresh region): one new run
            maps = [_UNALLOCATED] * n if pos & mask or end & mask else []
            self._alloc_run(view, base, table, i0, pos, end, maps, self.rc.alloc(n))
            self.l2.store(l2off, table, i0, i0 + n)
            return
        if entries[0] & COPIED and self._host_run(table, pos, n) >= 0:  # owned and contiguous: overwrite in place
            host = (entries[0] & OFFSET_MASK) + (pos & mask)
            self.f.pwrite(host, view[pos - base : end - base])
            return
        changed_lo, changed_hi = n, -1
        runs = self._runs(table, pos, end)
        new = sum(k1 - k0 for inplace, k0, k1, _ in runs if not inplace)
        host = self.rc.alloc(new) if new else 0  # the request's new clusters: one allocation, one refcount write
        for kind, k0, k1, maps in runs:
            gs = max(pos, (pos & ~mask) + (k0 << cb))
            ge = min(end, (pos & ~mask) + (k1 << cb))
            if kind:  # in place: host-contiguous clusters this image owns
                self.f.pwrite(maps[0].offset + (gs & mask), view[gs - base : ge - base])
                flagged = [k for k in range(k0, k1) if not maps[k - k0].copied]
                for k in flagged:
                    table[i0 + k] |= COPIED
                if flagged:
                    changed_lo, changed_hi = min(changed_lo, flagged[0]), max(changed_hi, flagged[-1])
            else:
                self._alloc_run(view, base, table, i0 + k0, gs, ge, maps, host)
                host += (k1 - k0) * self.cs
                to_free += [m for m in maps if m.kind in (NORMAL, ZERO_ALLOC, COMPRESSED_KIND)]
                changed_lo, changed_hi = min(changed_lo, k0), max(changed_hi, k1 - 1)
        if changed_hi >= 0:  # data is on disk: now the entries, then the old clusters' references go
            self.l2.store(l2off, table, i0 + changed_lo, i0 + changed_hi + 1)
        if to_free:
            self._before_free()
        for m in to_free:
            self._release(m)

    def _runs(self, table: list[int], pos: int, end: int) -> list[tuple[bool, int, int, list[Mapping]]]:
        """Split guest ``[pos, end)`` into runs: (in place?, first and end cluster index relative to ``pos``'s
        cluster, the clusters' mappings). In-place runs are host-contiguous."""
        cb, mask = self.cb, self.cs - 1
        i0 = (pos >> cb) & (self.l2_entries - 1)
        runs: list[tuple[bool, int, int, list[Mapping]]] = []
        guest = pos & ~mask
        for k in range((((end - 1) >> cb) - (pos >> cb)) + 1):
            m = _UNALLOCATED if not table[i0 + k] else self._map(table, guest + (k << cb))
            inplace = m.kind == NORMAL and (m.copied or self.rc.get(m.offset >> cb) == 1)
            if runs and runs[-1][0] == inplace:
                prev = runs[-1][3]
                if not inplace or prev[-1].offset + self.cs == m.offset:
                    prev.append(m)
                    runs[-1] = (inplace, runs[-1][1], k + 1, prev)
                    continue
            runs.append((inplace, k, k + 1, [m]))
        return runs

    def _alloc_run(
        self,
        view: memoryview,
        base: int,
        table: list[int],
        idx: int,
        pos: int,
        end: int,
        maps: list[Mapping],
        host: int,
    ) -> None:
        """Guest ``[pos, end)`` (consecutive clusters from L2 index ``idx``) into the new clusters at ``host``
        (allocated, refcounts written): the data in one ``pwritev`` (a partial first or last cluster is completed
        with what it held, from ``maps``, the clusters' old mappings); the entries are updated in ``table``,
        written by the caller."""
        cs, mask = self.cs, self.cs - 1
        count = ((end - 1) >> self.cb) - (pos >> self.cb) + 1
        pieces: list[bytes | bytearray | memoryview] = []
        first = pos & ~mask
        mid = pos
        if pos & mask or end - first < cs:  # the first cluster is partial: it keeps its old bytes around the data
            stop = min(end, first + cs)
            buf = bytearray(self._cow_source(maps[0], first))
            buf[pos - first : stop - first] = view[pos - base : stop - base]
            pieces.append(buf)
            mid = first + cs
        if mid < end:
            last = (end - 1) & ~mask
            tail = end & mask != 0
            if (last if tail else end) > mid:
                pieces.append(view[mid - base : (last if tail else end) - base])
            if tail:
                buf = bytearray(self._cow_source(maps[-1], last))
                buf[: end - last] = view[last - base : end - base]
                pieces.append(buf)
        self.f.pwritev(host, pieces)
        table[idx : idx + count] = range(host | COPIED, (host + count * cs) | COPIED, cs)

    def _cow_source(self, m: Mapping, cstart: int) -> bytes:
        """What a partially written cluster holds before the write."""
        if m.kind == NORMAL:
            return self.f.pread(m.offset, self.cs)
        if m.kind == COMPRESSED_KIND:
            return self._inflate(m, cstart)
        if m.kind == UNALLOCATED and self.backing is not None:
            out = bytearray(self.cs)
            self._read_backing(out, cstart, cstart, min(cstart + self.cs, self.h.size))
            return bytes(out)
        return bytes(self.cs)

    def _release(self, m: Mapping) -> None:
        """Drop the reference an L2 entry held (after the entry itself was rewritten)."""
        if m.kind == COMPRESSED_KIND:
            first = m.offset & ~511
            last = (m.offset + m.size - 1) // self.cs
            self.rc.free(first & ~(self.cs - 1), last - first // self.cs + 1)
            if self._zcache and self._zcache[0] == m.offset:
                self._zcache = None
            return
        for idx in self.rc.free(m.offset, 1):
            self.f.punch_hole(idx * self.cs, self.cs)
