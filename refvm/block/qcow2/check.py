"""Consistency check of a qcow2 image, reporting like ``qemu-img check``: leaks and corruptions.

Walks every structure that references host clusters (header, L1/L2 tables, snapshots' tables, refcount
table and blocks, data and compressed clusters), counts references per host cluster and compares them with
the stored refcounts. More references than the refcount is a corruption (a write could free data still in
use); fewer is a leak (wasted space only). Read-only: never writes to the image.
"""

from __future__ import annotations

import os
import struct
from collections import Counter
from dataclasses import dataclass, field

from refvm.block.driver import BlockError
from refvm.block.qcow2.header import OFFSET_MASK, Header, parse_header
from refvm.block.qcow2.hostfile import HostFile
from refvm.block.qcow2.l2 import COMPRESSED_KIND, COPIED, NORMAL, ZERO_ALLOC, check_l1_entry, decode_l2
from refvm.block.qcow2.refcount import Refcounts

__all__ = ["CheckResult", "check_image"]


@dataclass
class CheckResult:
    """What a check found; ``corruptions`` and ``leaks`` count problems, ``messages`` describe each."""

    filename: str
    corruptions: int = 0
    leaks: int = 0
    messages: list[str] = field(default_factory=list)
    total_clusters: int = 0
    allocated_clusters: int = 0
    fragmented_clusters: int = 0
    compressed_clusters: int = 0
    image_end_offset: int = 0

    def corrupt(self, msg: str) -> None:
        self.corruptions += 1
        self.messages.append("ERROR " + msg)

    def leak(self, msg: str) -> None:
        self.leaks += 1
        self.messages.append("Leaked " + msg)


class _Walker:
    def __init__(self, path: str, f: HostFile, h: Header, res: CheckResult) -> None:
        self.path, self.f, self.h, self.res = path, f, h, res
        self.cs = h.cluster_size
        self.refs: Counter[int] = Counter()
        self.copied_checks: list[tuple[str, int, int]] = []  # (what, host cluster index, entry)
        self.last_host = -1

    def ref(self, offset: int, length: int, what: str) -> None:
        if offset + length > self.f.size:
            self.res.corrupt(f"{what} at 0x{offset:x} (+{length}) lies past the end of the file")
            return
        for idx in range(offset // self.cs, (offset + max(length, 1) - 1) // self.cs + 1):
            self.refs[idx] += 1

    def walk_l1(self, l1_offset: int, l1_size: int, active: bool) -> None:
        what = "active L1 table" if active else "snapshot L1 table"
        if l1_size == 0:
            return
        if l1_offset % self.cs or l1_offset + l1_size * 8 > self.f.size:
            self.res.corrupt(f"{what} at 0x{l1_offset:x} is misaligned or lies past the end of the file")
            return
        self.ref(l1_offset, l1_size * 8, what)
        raw = self.f.pread(l1_offset, l1_size * 8)
        for i, entry in enumerate(struct.unpack(f">{l1_size}Q", raw)):
            try:
                l2off = check_l1_entry(self.path, entry, i, self.cs, self.f.size)
            except BlockError as exc:
                self.res.corrupt(exc.problem)
                continue
            if not l2off:
                continue
            self.ref(l2off, self.cs, f"L2 table of L1 entry {i}")
            if active:
                self.copied_checks.append((f"L1 entry {i} (L2 table)", l2off // self.cs, entry))
            self.walk_l2(l2off, i, active)

    def walk_l2(self, l2off: int, l1i: int, active: bool) -> None:
        n = self.cs // 8
        entries = struct.unpack(f">{n}Q", self.f.pread(l2off, self.cs))
        cb = self.h.cluster_bits
        for j, entry in enumerate(entries):
            guest = ((l1i * n) + j) << cb
            try:
                m = decode_l2(self.path, entry, guest, cb, self.h.version, self.f.size)
            except BlockError as exc:
                self.res.corrupt(exc.problem)
                continue
            if m.kind == COMPRESSED_KIND:
                first = m.offset & ~511
                end = m.offset + m.size
                self.ref(first, min(end, self.f.size) - first, f"compressed cluster for guest 0x{guest:x}")
                if active:
                    self.res.compressed_clusters += 1
                    self.res.allocated_clusters += 1
            elif m.kind in (NORMAL, ZERO_ALLOC):
                self.ref(m.offset, self.cs, f"data cluster for guest 0x{guest:x}")
                if active:
                    self.copied_checks.append((f"data cluster for guest 0x{guest:x}", m.offset // self.cs, entry))
                    self.res.allocated_clusters += 1
                    if self.last_host >= 0 and m.offset != self.last_host + self.cs:
                        self.res.fragmented_clusters += 1
                    self.last_host = m.offset

    def walk_snapshots(self) -> None:
        pos = self.h.snapshots_offset
        start = pos
        for k in range(self.h.nb_snapshots):
            head = self.f.pread(pos, 40)
            if pos + 40 > self.f.size:
                self.res.corrupt(f"snapshot table entry {k} lies past the end of the file")
                return
            l1_off, l1_n, id_len, name_len = struct.unpack_from(">QIHH", head)
            extra = struct.unpack_from(">I", head, 36)[0]
            self.walk_l1(l1_off, l1_n, active=False)
            size = 40 + extra + id_len + name_len
            pos += size + (-size % 8)
        if self.h.nb_snapshots:
            self.ref(start, pos - start, "snapshot table")


def check_image(path: str) -> CheckResult:
    """Check ``path`` (qcow2); raises BlockError only if the header itself cannot be used."""
    try:
        f = HostFile(path, readonly=True)
    except OSError as exc:
        raise BlockError(path, f"Could not open: {exc.strerror or exc}") from None
    try:
        h = parse_header(path, os.pread(f.fd, min(f.size, 1 << 21), 0), f.size)
        res = CheckResult(path)
        cs = h.cluster_size
        res.total_clusters = -(-h.size // cs)
        w = _Walker(path, f, h, res)
        w.ref(0, cs, "header")
        w.walk_l1(h.l1_table_offset, h.l1_size, active=True)
        w.walk_snapshots()
        w.ref(h.refcount_table_offset, h.refcount_table_clusters * cs, "refcount table")
        rc = Refcounts(
            f, h.cluster_bits, h.refcount_order, h.refcount_table_offset, h.refcount_table_clusters, lambda off, n: None
        )
        for ti, entry in enumerate(rc.table):
            off = entry & OFFSET_MASK
            if entry & ~OFFSET_MASK or off % cs:
                res.corrupt(f"refcount table entry {ti} (0x{entry:x}) is misaligned")
            elif off:
                w.ref(off, cs, f"refcount block {ti}")
        _compare(rc, w, res, f.size)
        if w.refs:
            res.image_end_offset = (max(w.refs) + 1) * cs
        return res
    finally:
        f.close()


def _compare(rc: Refcounts, w: _Walker, res: CheckResult, file_size: int) -> None:
    cs = rc.cs
    stored: dict[int, int] = {}
    for ti in range(len(rc.table)):
        try:
            if not rc._block_offset(ti):
                continue
        except BlockError:
            continue  # reported above
        for i in range(rc.per_block):
            idx = ti * rc.per_block + i
            value = rc.get(idx)
            if value:
                stored[idx] = value
    for idx in sorted(set(stored) | set(w.refs)):
        have, want = stored.get(idx, 0), w.refs.get(idx, 0)
        if have < want:
            res.corrupt(f"cluster {idx} refcount={have} reference={want}")
        elif have > want:
            res.leak(f"cluster {idx} refcount={have} reference={want}")
    for what, idx, entry in w.copied_checks:
        if bool(entry & COPIED) != (stored.get(idx, 0) == 1):
            res.corrupt(f"OFLAG_COPIED {what}: entry=0x{entry:x} refcount={stored.get(idx, 0)}")
    del cs, file_size
