"""Fuzz: qcow2 images with generated corruptions of the header, L1, L2 and refcount structures.

A small valid image (4 KiB clusters, data in a few clusters, refcounts of a random width) is corrupted
by byte and 64-bit-entry overwrites aimed at the header, the L1 table, an L2 table, the refcount table
and a refcount block. Opening it, reading it whole, writing to it and checking it must either work or
fail with :class:`BlockError` (a one-line message naming the problem); any other exception or a hang is
a finding. An image refvm did write to must stay consistent for refvm's own check when it was consistent
before.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from fuzzing import FUZZ, example
from hypothesis import given
from hypothesis import strategies as st

from refvm.block.driver import BlockError, open_image
from refvm.block.qcow2 import create_qcow2
from refvm.block.qcow2.check import check_image

SIZE = 256 << 10
CLUSTER = 4096
REGIONS = ("header", "l1", "l2", "reftable", "refblock")


def _template(tmp: Path, refbits: int) -> bytes:
    path = tmp / f"t{refbits}.qcow2"
    create_qcow2(str(path), SIZE, cluster_size=CLUSTER, refcount_bits=refbits)
    img = open_image(str(path), "qcow2")
    for off in (0, 5 * CLUSTER, SIZE - CLUSTER):
        img.write(off, bytes([off & 0xFF | 1]) * CLUSTER)
    img.close()
    return path.read_bytes()


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> dict[int, bytes]:
    tmp = tmp_path_factory.mktemp("qcow2")
    return {bits: _template(tmp, bits) for bits in (1, 16, 64)}


def _region_start(data: bytes, region: str) -> int:
    l1 = struct.unpack_from(">Q", data, 40)[0]
    reftable = struct.unpack_from(">Q", data, 48)[0]
    if region == "header":
        return 0
    if region == "l1":
        return l1
    if region == "reftable":
        return reftable
    table = l1 if region == "l2" else reftable
    if table + 8 > len(data):  # an earlier corruption moved the table out of the file: nothing to aim at
        return 0
    entry = struct.unpack_from(">Q", data, table)[0] & 0x00FF_FFFF_FFFF_FE00
    return entry if entry + CLUSTER <= len(data) else 0


corruption = st.one_of(
    st.tuples(st.sampled_from(REGIONS), st.integers(0, 511), st.just(1), st.integers(0, 0xFF)),
    st.tuples(st.sampled_from(REGIONS), st.integers(0, 63).map(lambda i: 8 * i), st.just(8),
              st.one_of(st.integers(0, (1 << 64) - 1), st.sampled_from([0, 1, 1 << 63, 1 << 62, 0x1000, 0x200000,
                                                                          (1 << 63) | 0x1000, 0x1001, 1 << 56]))),
)


def test_fuzz_qcow2_corruptions(templates: dict[int, bytes], tmp_path: Path) -> None:
    path = tmp_path / "fuzz.qcow2"

    @FUZZ
    @given(bits=st.sampled_from(sorted(templates)), corruptions=st.lists(corruption, min_size=1, max_size=4),
           write_at=st.integers(0, SIZE - 1), write_len=st.integers(1, 3 * CLUSTER), aligned=st.booleans(),
           split=st.integers(0, 3 * CLUSTER))
    def target(
        bits: int, corruptions: list[tuple[str, int, int, int]], write_at: int, write_len: int, aligned: bool,
        split: int,
    ) -> None:
        if aligned:  # whole clusters: the sequential write path (allocation at EOF, or in place)
            write_at, write_len = write_at & ~(CLUSTER - 1), -(-write_len // CLUSTER) * CLUSTER
        with example():
            data = bytearray(templates[bits])
            for region, off, width, value in corruptions:
                at = _region_start(data, region) + off
                if at + width <= len(data):
                    data[at : at + width] = value.to_bytes(width, "big")
            path.write_bytes(data)
            try:
                before = check_image(str(path))
            except BlockError:
                before = None
            try:
                img = open_image(str(path), "qcow2")
            except BlockError:
                return
            try:
                img.read(0, SIZE)
                chunk = memoryview(os.urandom(min(write_len, SIZE - write_at)))
                if 0 < split < len(chunk):  # two guest buffers, as virtio-blk passes them
                    img.pwritev_from(write_at, [chunk[:split], chunk[split:]])
                else:
                    img.write(write_at, chunk)
                img.read(0, SIZE)
            except BlockError:
                pass
            finally:
                img.close()
            try:
                after = check_image(str(path))
            except BlockError:
                return
            if before is not None and _clean(before):
                assert _clean(after), f"refvm's write left a consistent image inconsistent: {after}"

    target()


def _clean(result: object) -> bool:
    return not (result.corruptions or result.leaks)  # type: ignore[attr-defined]
