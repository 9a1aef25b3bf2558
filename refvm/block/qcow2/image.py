"""The qcow2 driver: guest reads and writes through L1/L2 tables, allocation, COW, zero clusters, backing files.

Each request is checked in full before its first write: every L1/L2 entry it touches is decoded and checked
against the file, and the clusters the allocator will hand out are checked to be free. A problem found then
raises :class:`BlockError` and leaves the image byte-for-byte unchanged (refvm never sets the corrupt bit
itself; it refuses instead).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from typing import Any

from refvm.block.driver import BlockDriver, BlockError, actual_size, open_image
from refvm.block.qcow2.header import (
    COMPAT_LAZY_REFCOUNTS,
    INCOMPAT_CORRUPT,
    INCOMPAT_DIRTY,
    OFFSET_MASK,
    Header,
    min_l1_entries,
    parse_header,
)
from refvm.block.qcow2.hostfile import HostFile
from refvm.block.qcow2.l2 import (
    COMPRESSED,
    COMPRESSED_KIND,
    COPIED,
    NORMAL,
    UNALLOCATED,
    ZERO,
    ZERO_ALLOC,
    ZERO_PLAIN,
    L2Cache,
    Mapping,
    check_l1_entry,
    decode_l2,
    read_compressed,
    standard_entry_ok,
)
from refvm.block.qcow2.refcount import Refcounts
from refvm.block.qcow2.writes import Qcow2Writes
from refvm.block.vectored import IOV_MAX, preadv_full, read_into

__all__ = ["Qcow2Image", "MAX_CHAIN"]

MAX_CHAIN = 64  # deepest backing chain refvm follows


class Qcow2Image(Qcow2Writes):
    """A qcow2 image (version 2 or 3, refcount widths 1-64 bits) implementing :class:`BlockDriver`."""

    format_name = "qcow2"

    def __init__(self, path: str, readonly: bool = False, direct: bool = False, _chain: tuple[str, ...] = ()) -> None:
        self.path = path
        self.readonly = readonly
        self.backing: BlockDriver | None = None
        self.backing_path: str | None = None
        real = os.path.realpath(path)
        if real in _chain:
            names = " -> ".join([*_chain[_chain.index(real) :], real])
            raise BlockError(path, f"backing file loop: {names}")
        if len(_chain) >= MAX_CHAIN:
            raise BlockError(path, f"backing chain deeper than {MAX_CHAIN} images")
        try:
            self.f = HostFile(path, readonly)
        except OSError as exc:
            raise BlockError(path, f"Could not open: {exc.strerror or exc}") from None
        self._real, self._chain = real, _chain
        try:
            self._open(real, _chain)
        except BaseException:
            self.close()
            raise

    def _open(self, real: str, chain: tuple[str, ...]) -> None:
        f = self.f
        buf = os.pread(f.fd, min(f.size, 1 << 21), 0)
        h = parse_header(self.path, buf, f.size)
        self.h: Header = h
        self.cb = h.cluster_bits
        self.cs = h.cluster_size
        self.l2_bits = self.cb - 3
        self.l2_entries = 1 << self.l2_bits
        self.l1_shift = self.cb + self.l2_bits
        if not self.readonly:
            if h.incompatible_features & INCOMPAT_CORRUPT:
                raise BlockError(self.path, "image is marked corrupt (corrupt bit set): open it read-only")
            if h.incompatible_features & INCOMPAT_DIRTY:
                raise BlockError(
                    self.path, "image is dirty (lazy refcounts not flushed): repair with 'qemu-img check -r all'"
                )
            if h.nb_snapshots:
                raise BlockError(self.path, "writing to an image with internal snapshots is not supported")
        raw = f.pread(h.l1_table_offset, h.l1_size * 8) if h.l1_size else b""
        self.l1 = list(struct.unpack(f">{h.l1_size}Q", raw))
        self.rc = Refcounts(
            f, self.cb, h.refcount_order, h.refcount_table_offset, h.refcount_table_clusters, self._refcount_table_moved
        )
        self.l2 = L2Cache(f, self.cs, on_dirty_evict=self.writeback)
        self._l1_dirty: set[int] = set()  # L1 entries changed in memory, written by writeback()
        self._zcache: tuple[int, bytes] | None = None
        if h.backing_file:
            self._open_backing(h, real, chain)
        if not self.readonly and h.autoclear_features:
            # spec: a writer must clear auto-clear bits it does not maintain (refvm maintains none)
            f.pwrite(88, bytes(8))
            h.autoclear_features = 0

    def _open_backing(self, h: Header, real: str, chain: tuple[str, ...]) -> None:
        name = h.backing_file or ""
        if ":" in name.split("/", 1)[0] and not os.path.exists(name):
            raise BlockError(self.path, f"backing file '{name}' uses a protocol refvm does not support")
        full = name if os.path.isabs(name) else os.path.join(os.path.dirname(self.path), name)
        self.backing_path = full
        try:
            self.backing = open_image(full, h.backing_format, readonly=True, _chain=(*chain, real))
        except BlockError as exc:
            if "backing file loop" in exc.problem:
                raise BlockError(self.path, exc.problem) from None
            raise BlockError(self.path, f"Could not open backing file {full}: {exc}") from None

    # -- header updates ---------------------------------------------------------------------------------

    def _refcount_table_moved(self, offset: int, clusters: int) -> None:
        """The header points to a new refcount table (which :class:`Refcounts` made durable first)."""
        self.f.pwrite(48, struct.pack(">QI", offset, clusters))
        self.h.refcount_table_offset, self.h.refcount_table_clusters = offset, clusters

    # -- metadata write-back (crash ordering) -------------------------------------------------------------

    def set_cache_unsafe(self, unsafe: bool) -> None:
        """cache=unsafe: write-back still writes the metadata out, but with no syncs (nothing is ordered)."""
        self.f.no_flush = unsafe

    def writeback(self) -> None:
        """Write the changed L1/L2 entries out, ordered so that a host power loss at any moment leaves at
        most leaked clusters, never an entry pointing to a cluster whose refcount (or contents) is not on disk.

        sync (data, refcounts and new L2 tables durable) -> changed L2 entries and changed L1 entries. No sync
        is needed between the two: an L1 entry only ever names a table that was written whole when it was
        allocated (``put_new``, before the sync above), so if the L1 entry lands without the L2 entries, it
        points to a valid (older) table: data written since is lost, nothing is corrupt. The caller syncs
        after if it needs durability (a guest flush does)."""
        if self.readonly or not (self.l2.dirty or self._l1_dirty):
            return
        self.f.barrier()
        self.l2.write_dirty()
        if self._l1_dirty:
            self._write_l1_dirty()

    def invalidate_cache(self) -> None:
        """Read every piece of metadata again (QEMU's bdrv_invalidate_cache at the end of an incoming
        migration): another process -- the migration source, on shared storage -- may have written the file
        since this image was opened, and wrote its metadata back before the switchover."""
        self.writeback()
        if self.backing is not None:
            self.backing.close()
            self.backing = None
        self.f.size = os.fstat(self.f.fd).st_size
        self._open(self._real, self._chain)

    def _write_l1_dirty(self) -> None:
        """One ``pwrite`` of the L1 entries from the first to the last changed one (the ones between are
        what the file already holds)."""
        lo, hi = min(self._l1_dirty), max(self._l1_dirty) + 1
        self._l1_dirty.clear()
        self.f.pwrite(self.h.l1_table_offset + lo * 8, struct.pack(f">{hi - lo}Q", *self.l1[lo:hi]))

    def _before_free(self) -> None:
        """A cluster's refcount may drop only once no entry on disk points to it: write back, then sync."""
        self.writeback()
        self.f.barrier()

    # -- the BlockDriver interface ------------------------------------------------------------------------

    def length(self) -> int:
        return self.h.size

    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.h.size:
            raise BlockError(self.path, f"request {offset}+{length} is beyond the {self.h.size}-byte virtual disk")

    def _check_writable(self) -> None:
        if self.readonly:
            raise BlockError(self.path, "image is opened read-only")

    def _l2_offset(self, l1i: int) -> int:
        if l1i >= len(self.l1):
            raise BlockError(self.path, f"guest offset beyond the L1 table ({len(self.l1)} entries)")
        return check_l1_entry(self.path, self.l1[l1i], l1i, self.cs, self.f.size)

    def _map(self, table: list[int], guest: int) -> Mapping:
        entry = table[(guest >> self.cb) & (self.l2_entries - 1)]
        return decode_l2(self.path, entry, guest, self.cb, self.h.version, self.f.size)

    def _host_run(self, table: list[int], guest: int, n: int) -> int:
        """Host offset of the cluster of ``guest`` if it and the ``n - 1`` clusters after it (one L2 table) are
        standard clusters back to back on the host with the same flags, else -1.

        The entries are compared at once with ``first + k * cluster_size`` (one list compare in C), and only
        the last is checked as :func:`decode_l2` would: the run shares the flag and reserved bits of its last
        entry (adding whole clusters to an offset that stays inside the file changes no other bit), and every
        offset in it lies below the last one's.
        """
        i0 = (guest >> self.cb) & (self.l2_entries - 1)
        e0 = table[i0]
        if not e0 & OFFSET_MASK or e0 & (COMPRESSED | ZERO):
            return -1  # unallocated, zero or compressed: not a run of data (decoded where it is used)
        cs = self.cs
        if n > 1 and table[i0 : i0 + n] != list(range(e0, e0 + n * cs, cs)):
            return -1
        if not standard_entry_ok(e0 + (n - 1) * cs, cs, self.f.size):
            self._map(table, guest)  # raises: a flaw the whole run shares is reported for its first cluster
            self._map(table, guest + (n - 1) * cs)  # raises: the last lies past the end of the file
            return -1  # (not reached) the general path decodes entry by entry
        return e0 & OFFSET_MASK

    def _contiguous_host(self, offset: int, length: int) -> int | None:
        """Host offset of ``[offset, +length)`` if it is one run of standard clusters in one L2 table, else None."""
        if not length or (offset >> self.l1_shift) != ((offset + length - 1) >> self.l1_shift):
            return None
        l2off = self._l2_offset(offset >> self.l1_shift)
        if not l2off:
            return None
        n = ((offset + length - 1) >> self.cb) - (offset >> self.cb) + 1
        host = self._host_run(self.l2.get(l2off), offset, n)
        return None if host < 0 else host + (offset & (self.cs - 1))

    def preadv_into(self, offset: int, bufs: Sequence[memoryview]) -> None:
        """Read into ``bufs`` (guest RAM views): one ``preadv`` when the range is host-contiguous, else one copy."""
        length = len(bufs[0]) if len(bufs) == 1 else sum(map(len, bufs))
        self._check_range(offset, length)
        host = self._contiguous_host(offset, length)
        if host is None:
            read_into(self, offset, bufs)
        elif len(bufs) > IOV_MAX or os.preadv(self.f.fd, bufs, host) != length:
            preadv_full(self.f.fd, bufs, host)  # split at IOV_MAX, a short read resumed (past EOF: zeroes)

    def read(self, offset: int, length: int) -> bytes:
        self._check_range(offset, length)
        host = self._contiguous_host(offset, length)
        if host is not None:  # fast path: host-contiguous standard clusters -> a single pread, no copies
            return self.f.pread(host, length)
        out = bytearray(length)
        pos, end = offset, offset + length
        while pos < end:
            l1i = pos >> self.l1_shift
            chunk_end = min(end, (l1i + 1) << self.l1_shift)
            l2off = self._l2_offset(l1i)
            if l2off == 0:
                self._read_backing(out, offset, pos, chunk_end)
            else:
                self._read_chunk(out, offset, pos, chunk_end, self.l2.get(l2off))
            pos = chunk_end
        return bytes(out)

    pread = read

    def _read_chunk(self, out: bytearray, base: int, pos: int, end: int, table: list[int]) -> None:
        run_guest = run_host = run_len = 0
        mask = self.cs - 1
        while pos < end:
            m = self._map(table, pos)
            nxt = min(end, (pos | mask) + 1)
            if m.kind == NORMAL:
                host = m.offset + (pos & mask)
                if run_len and run_host + run_len == host:
                    run_len += nxt - pos
                else:
                    if run_len:
                        self._fill(out, run_guest - base, run_host, run_len)
                    run_guest, run_host, run_len = pos, host, nxt - pos
            elif run_len:  # a hole in the guest range ends the run even if the next host cluster is adjacent
                self._fill(out, run_guest - base, run_host, run_len)
                run_len = 0
            if m.kind == UNALLOCATED:
                self._read_backing(out, base, pos, nxt)
            elif m.kind == COMPRESSED_KIND:
                data = self._inflate(m, pos)
                out[pos - base : nxt - base] = data[pos & mask : (pos & mask) + nxt - pos]
            pos = nxt  # zero clusters: out is already zero
        if run_len:
            self._fill(out, run_guest - base, run_host, run_len)

    def _fill(self, out: bytearray, at: int, host: int, length: int) -> None:
        """Read host bytes straight into ``out`` (no intermediate copy); past EOF stays zero."""
        view = memoryview(out)[at : at + length]
        done = 0
        while done < length:
            n = os.preadv(self.f.fd, [view[done:]], host + done)
            if n <= 0:
                break
            done += n

    def _inflate(self, m: Mapping, guest: int) -> bytes:
        if self._zcache and self._zcache[0] == m.offset:
            return self._zcache[1]
        data = read_compressed(self.f, m, self.cs, guest)
        self._zcache = (m.offset, data)
        return data

    def _read_backing(self, out: bytearray, base: int, pos: int, end: int) -> None:
        if self.backing is None:
            out[pos - base : end - base] = bytes(end - pos)
            return
        blen = self.backing.length()
        stop = min(end, blen)
        if pos < stop:
            out[pos - base : stop - base] = self.backing.read(pos, stop - pos)
        if stop < end:
            out[max(pos, stop) - base : end - base] = bytes(end - max(pos, stop))

    def readv(self, offset: int, lengths: Sequence[int]) -> list[bytes]:
        data = self.read(offset, sum(lengths))
        out, pos = [], 0
        for n in lengths:
            out.append(data[pos : pos + n])
            pos += n
        return out

    def writev(self, offset: int, buffers: Sequence[bytes | bytearray | memoryview]) -> None:
        self.write(offset, b"".join(bytes(b) for b in buffers))

    # -- discard / write_zeroes / truncate ----------------------------------------------------------------

    def discard(self, offset: int, length: int) -> None:
        self._check_writable()
        self._check_range(offset, length)
        lo = -(-offset // self.cs) * self.cs
        end = offset + length
        hi = end if end == self.h.size else end & ~(self.cs - 1)
        if hi > lo:
            self._deallocate(lo, hi, zero=self.h.version >= 3 and self.backing is not None, keep=False)

    def write_zeroes(self, offset: int, length: int, unmap: bool = False, *, may_unmap: bool | None = None) -> None:
        self._check_writable()
        self._check_range(offset, length)
        unmap = unmap if may_unmap is None else may_unmap
        end = offset + length
        if self.h.version < 3 and self.backing is not None:
            for pos in range(offset, end, 1 << 20):
                self.write(pos, bytes(min(1 << 20, end - pos)))
            return
        lo = -(-offset // self.cs) * self.cs
        hi = end if end == self.h.size else end & ~(self.cs - 1)
        if hi <= lo:
            self.write(offset, bytes(length))
            return
        self._validate(lo, hi - lo)
        if offset < lo:
            self.write(offset, bytes(lo - offset))
        if hi < end:
            self.write(hi, bytes(end - hi))
        self._deallocate(lo, hi, zero=self.h.version >= 3, keep=not unmap)

    def _deallocate(self, lo: int, hi: int, zero: bool, keep: bool) -> None:
        """Clusters [lo, hi) become zero clusters (``zero``) or unallocated; ``keep`` keeps host clusters."""
        self._validate(lo, hi - lo)
        pos = lo
        while pos < hi:
            l1i = pos >> self.l1_shift
            chunk_end = min(hi, (l1i + 1) << self.l1_shift)
            if self._l2_offset(l1i) == 0 and not zero:
                pos = chunk_end
                continue
            l2off, table = self._l2_for_write(l1i)
            first = (pos >> self.cb) & (self.l2_entries - 1)
            count = ((chunk_end - 1) >> self.cb) - (pos >> self.cb) + 1
            freed: list[Mapping] = []
            for k in range(count):
                m = self._map(table, pos + k * self.cs)
                if keep and zero and m.kind in (NORMAL, ZERO_ALLOC) and (m.copied or m.kind == ZERO_ALLOC):
                    table[first + k] = m.offset | COPIED | ZERO
                    continue
                table[first + k] = ZERO if zero else 0
                if m.kind in (NORMAL, ZERO_ALLOC, COMPRESSED_KIND):
                    freed.append(m)
            self.l2.store(l2off, table, first, first + count)
            if freed:
                self._before_free()
            for m in freed:
                self._release(m)
            pos = chunk_end

    def truncate(self, length: int) -> None:
        self._check_writable()
        if length < 0:
            raise BlockError(self.path, "negative size")
        old = self.h.size
        self.writeback()
        if length < old:
            lo = -(-length // self.cs) * self.cs
            if lo < old:
                self._deallocate(lo, old, zero=False, keep=False)
        need = min_l1_entries(length, self.cb)
        if need > len(self.l1):
            self._grow_l1(need)
        self.f.pwrite(24, struct.pack(">Q", length))
        self.h.size = length
        self.writeback()

    def _grow_l1(self, entries: int) -> None:
        clusters = -(-entries * 8 // self.cs)
        entries = clusters * self.cs // 8
        if entries * 8 > 32 << 20:
            raise BlockError(self.path, "L1 table would exceed its maximum size")
        self.writeback()  # the copy below must hold only entries whose L2 tables are durable
        new = self.rc.alloc(clusters)
        table = self.l1 + [0] * (entries - len(self.l1))
        self.f.pwrite(new, struct.pack(f">{entries}Q", *table))
        old_off, old_n = self.h.l1_table_offset, len(self.l1)
        self.f.barrier()  # the new table (and its refcounts) durable before the header points to it
        self.f.pwrite(36, struct.pack(">IQ", entries, new))
        self.h.l1_size, self.h.l1_table_offset, self.l1 = entries, new, table
        self.f.barrier()  # the header durable before the old table's refcount drops (or the new size lands)
        if old_n:
            self.rc.free(old_off, -(-old_n * 8 // self.cs))

    # -- the rest -----------------------------------------------------------------------------------------

    def flush(self) -> None:
        """Guest FLUSH: the ordered metadata write-back, then everything durable."""
        if not self.readonly:
            self.writeback()
            self.f.sync()

    def info(self) -> dict[str, Any]:
        h = self.h
        if h.version >= 3:
            data: dict[str, Any] = {
                "compat": "1.1",
                "compression-type": "zlib",
                "lazy-refcounts": bool(h.compatible_features & COMPAT_LAZY_REFCOUNTS),
                "refcount-bits": h.refcount_bits,
                "corrupt": bool(h.incompatible_features & INCOMPAT_CORRUPT),
                "extended-l2": False,
            }
        else:
            data = {"compat": "0.10", "compression-type": "zlib", "refcount-bits": h.refcount_bits}
        out: dict[str, Any] = {
            "virtual-size": h.size,
            "filename": self.path,
            "cluster-size": self.cs,
            "format": "qcow2",
            "actual-size": actual_size(self.path),
            "format-specific": {"type": "qcow2", "data": data},
        }
        if h.backing_file:
            out["full-backing-filename"] = self.backing_path
            out["backing-filename"] = h.backing_file
            if h.backing_format:
                out["backing-filename-format"] = h.backing_format
        out["dirty-flag"] = bool(h.incompatible_features & INCOMPAT_DIRTY)
        return out

    def close(self) -> None:
        if self.backing is not None:
            self.backing.close()
            self.backing = None
        if getattr(self, "f", None) is not None and self.f.fd >= 0:
            try:
                if getattr(self, "l2", None) is not None:
                    self.writeback()  # as QEMU, metadata reaches the file at close (a sync only where ordered)
            finally:
                self.f.close()

    def __enter__(self) -> Qcow2Image:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_ = ZERO_PLAIN  # the remaining kind: reads as zeroes, nothing to free
