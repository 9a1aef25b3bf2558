"""Creating a new, empty qcow2 image (the layout ``qemu-img create -f qcow2`` also produces).

Layout: header (cluster 0), refcount table, refcount blocks covering every metadata cluster, then the L1
table. All clusters are refcounted 1 and nothing else is allocated, so ``qemu-img check`` finds no leaks.
"""

from __future__ import annotations

import os
import struct

from refvm.block.driver import BlockError
from refvm.block.qcow2.header import (
    EXT_BACKING_FORMAT,
    EXT_FEATURE_TABLE,
    FEATURE_NAMES,
    Extension,
    Header,
    min_l1_entries,
)

__all__ = ["create_qcow2", "feature_table"]


def feature_table() -> bytes:
    """The feature name table extension data: 48-byte entries (type, bit, name padded with zeroes)."""
    return b"".join(
        bytes([kind, bit]) + name.encode().ljust(46, b"\0") for (kind, bit), name in sorted(FEATURE_NAMES.items())
    )


def create_qcow2(
    path: str,
    size: int,
    *,
    cluster_size: int = 65536,
    compat: str = "1.1",
    refcount_bits: int = 16,
    backing_file: str | None = None,
    backing_format: str | None = None,
    lazy_refcounts: bool = False,
) -> None:
    """Write a new qcow2 image at ``path`` (replacing any file there)."""
    if cluster_size < 512 or cluster_size > 1 << 21 or cluster_size & (cluster_size - 1):
        raise BlockError(path, f"Cluster size must be a power of two between 512 and 2M (got {cluster_size})")
    if compat not in ("0.10", "1.1", "v2", "v3"):
        raise BlockError(path, f"Invalid compatibility level: '{compat}' (use 0.10 or 1.1)")
    version = 2 if compat in ("0.10", "v2") else 3
    if refcount_bits not in (1, 2, 4, 8, 16, 32, 64):
        raise BlockError(path, "Refcount width must be a power of two and may not exceed 64 bits")
    if version == 2 and refcount_bits != 16:
        raise BlockError(path, "Different refcount widths than 16 bits require compatibility level 1.1 or above")
    if version == 2 and lazy_refcounts:
        raise BlockError(path, "Lazy refcounts only supported with compatibility level 1.1 and above")
    if size < 0:
        raise BlockError(path, "Image size must be non-negative")
    cb = cluster_size.bit_length() - 1
    order = refcount_bits.bit_length() - 1
    l1_size = min_l1_entries(size, cb)
    if l1_size * 8 > 32 << 20:
        raise BlockError(path, f"Image size {size} is too large for a cluster size of {cluster_size}")
    h = Header(version=version, cluster_bits=cb, size=size, l1_size=l1_size, refcount_order=order)
    if version == 2:
        h.header_length, h.extra_fields = 72, b""
    if lazy_refcounts:
        h.compatible_features = 1
    if backing_format:
        h.extensions.append(Extension(EXT_BACKING_FORMAT, backing_format.encode()))
    h.extensions.append(Extension(EXT_FEATURE_TABLE, feature_table()))
    h.backing_file = backing_file
    if backing_file and len(backing_file.encode()) > 1023:
        raise BlockError(path, "Backing file name too long (at most 1023 bytes)")

    per_block = (cluster_size * 8) >> order
    l1_clusters = -(-l1_size * 8 // cluster_size)
    rt_clusters, blocks = 1, 1
    while True:
        total = 1 + rt_clusters + blocks + l1_clusters
        need_blocks = -(-total // per_block)
        need_rt = -(-need_blocks * 8 // cluster_size)
        if (need_blocks, need_rt) == (blocks, rt_clusters):
            break
        blocks, rt_clusters = max(blocks, need_blocks), max(rt_clusters, need_rt)
    h.refcount_table_offset = cluster_size
    h.refcount_table_clusters = rt_clusters
    blocks_at = (1 + rt_clusters) * cluster_size
    h.l1_table_offset = blocks_at + blocks * cluster_size

    head = h.serialize()
    if len(head) > cluster_size:
        raise BlockError(path, "header, extensions and backing file name do not fit in the first cluster")
    table = [blocks_at + i * cluster_size for i in range(blocks)]
    table += [0] * (rt_clusters * cluster_size // 8 - len(table))
    refblocks = bytearray(blocks * cluster_size)
    for idx in range(total):
        bit = idx * refcount_bits
        if refcount_bits >= 8:
            n = refcount_bits // 8
            refblocks[(idx + 1) * n - 1] = 1  # big-endian value 1
        else:
            refblocks[bit >> 3] |= 1 << (bit & 7)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise BlockError(path, f"Could not create: {exc.strerror or exc}") from None
    try:
        os.pwrite(fd, head.ljust(cluster_size, b"\0"), 0)
        os.pwrite(fd, struct.pack(f">{len(table)}Q", *table), cluster_size)
        os.pwrite(fd, bytes(refblocks), blocks_at)
        os.ftruncate(fd, h.l1_table_offset + l1_clusters * cluster_size)
        os.fsync(fd)
    finally:
        os.close(fd)
