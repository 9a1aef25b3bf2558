"""qcow2 writes in cluster runs: every shape a run can take, judged by QEMU's own tools.

A write is split into runs (clusters written in place, clusters allocated together) and sequential writes
take a lean path; each test here writes through refvm, then has real ``qemu-img check`` find the image clean
and ``qemu-img convert`` read back exactly the bytes of a model of the disk.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from refvm.block.driver import BlockError
from refvm.block.qcow2 import Qcow2Image, create_qcow2
from refvm.block.qcow2.l2 import COMPRESSED_KIND, NORMAL
from tests.conftest import require

MIB = 1 << 20


def _qemu_img(*args: str) -> subprocess.CompletedProcess[str]:
    require(shutil.which("qemu-img") is not None, "qemu-img not found (apt-get install qemu-utils)")
    return subprocess.run(["qemu-img", *args], capture_output=True, text=True)


def assert_qemu_agrees(img: Path, model: bytes | bytearray) -> None:
    """qemu-img check is clean (no corruption, no leak) and QEMU reads the model's bytes."""
    proc = _qemu_img("check", str(img))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "No errors were found" in proc.stdout, proc.stdout
    raw = img.with_suffix(".raw")
    proc = _qemu_img("convert", "-f", "qcow2", "-O", "raw", str(img), str(raw))
    assert proc.returncode == 0, proc.stderr
    got = raw.read_bytes()
    assert len(got) == len(model)
    if got != bytes(model):
        first = next(i for i in range(len(got)) if got[i] != model[i])
        pytest.fail(f"QEMU reads different data from guest offset 0x{first:x} on")


def _write(q: Qcow2Image, model: bytearray, offset: int, data: bytes) -> None:
    q.write(offset, data)
    model[offset : offset + len(data)] = data


def test_one_write_over_many_unallocated_clusters_with_partial_ends(tmp_path: Path) -> None:
    img = tmp_path / "a.qcow2"
    size = 8 * MIB
    create_qcow2(str(img), size)
    model = bytearray(size)
    rnd = random.Random(1)
    with Qcow2Image(str(img)) as q:
        _write(q, model, 1000, rnd.randbytes(3 * MIB + 12345))  # partial first and last cluster, 49 in between
        _write(q, model, 5 * MIB, rnd.randbytes(MIB))  # whole clusters: the sequential path
        _write(q, model, 7 * MIB + 70000, rnd.randbytes(100))  # inside one cluster
        assert q.read(0, size) == model
    assert_qemu_agrees(img, model)


def test_a_write_over_partly_allocated_clusters(tmp_path: Path) -> None:
    """Allocated, unallocated, zero (with and without a host cluster) and compressed clusters in one request."""
    cs = 65536
    size = 64 * cs
    src = tmp_path / "src.raw"
    rnd = random.Random(2)
    base = bytearray(rnd.randbytes(size))
    for k in [*range(0, 64, 2), 5, 45]:  # compressible: convert -c stores these compressed (random ones it cannot)
        base[k * cs : (k + 1) * cs] = rnd.randbytes(256) * (cs // 256)
    base[10 * cs : 20 * cs] = bytes(10 * cs)  # left unallocated by convert
    src.write_bytes(base)
    img = tmp_path / "p.qcow2"
    proc = _qemu_img("convert", "-c", "-f", "raw", "-O", "qcow2", str(src), str(img))  # compressed clusters
    assert proc.returncode == 0, proc.stderr
    model = bytearray(base)
    with Qcow2Image(str(img)) as q:
        kinds = [q._map(q.l2.get(q.l1[0] & ~(1 << 63)), k * cs).kind for k in range(64)]
        assert kinds[4] == kinds[5] == kinds[44] == kinds[45] == COMPRESSED_KIND and kinds[43] == NORMAL
        for k in (22, 23, 30, 31, 32, 40):  # decompressed into new clusters: these get allocated in place
            _write(q, model, k * cs, rnd.randbytes(cs))
        q.write_zeroes(24 * cs, 2 * cs)  # zero clusters keeping their host clusters
        q.write_zeroes(26 * cs, 2 * cs, unmap=True)  # plain zero clusters
        model[24 * cs : 28 * cs] = bytes(4 * cs)
        _write(q, model, 4 * cs + 17, rnd.randbytes(41 * cs))  # across all of it, partial compressed ends
        assert q.read(0, size) == model
    assert_qemu_agrees(img, model)


def test_partial_clusters_of_a_run_are_completed_from_the_backing_file(tmp_path: Path) -> None:
    cs = 65536
    size = 32 * cs
    rnd = random.Random(4)
    model = bytearray(rnd.randbytes(size))
    base = tmp_path / "base.qcow2"
    create_qcow2(str(base), size)
    with Qcow2Image(str(base)) as q:
        q.write(0, model)
    img = tmp_path / "top.qcow2"
    create_qcow2(str(img), size, backing_file=str(base), backing_format="qcow2")
    with Qcow2Image(str(img)) as q:
        _write(q, model, 3 * cs + 999, rnd.randbytes(9 * cs))  # new clusters, partial at both ends
        _write(q, model, 20 * cs, rnd.randbytes(4 * cs))  # whole clusters
        _write(q, model, 25 * cs - 10, rnd.randbytes(20))  # two partial clusters, nothing whole between
        assert q.read(0, size) == model
    assert_qemu_agrees(img, model)


def test_overwrite_of_clusters_not_back_to_back_on_the_host(tmp_path: Path) -> None:
    img = tmp_path / "o.qcow2"
    cs = 65536
    size = 16 * cs
    create_qcow2(str(img), size)
    model = bytearray(size)
    rnd = random.Random(3)
    with Qcow2Image(str(img)) as q:
        for k in (3, 1, 2, 0, 5, 4):  # host order differs from guest order
            _write(q, model, k * cs, rnd.randbytes(cs))
        end = q.rc.end
        _write(q, model, 100, rnd.randbytes(6 * cs - 200))  # in place, in several runs: nothing new
        assert q.rc.end == end
        _write(q, model, 4 * cs, rnd.randbytes(4 * cs))  # two owned clusters then two new ones
        assert q.rc.end == end + 2
    assert_qemu_agrees(img, model)


@pytest.mark.parametrize("refbits", [1, 16, 64])
def test_runs_cross_l2_tables_and_grow_the_refcount_structures(tmp_path: Path, refbits: int) -> None:
    """512-byte clusters: an L2 table maps 32 KiB and a refcount block covers 64-4096 clusters, so one 3 MiB
    write crosses ~100 L2 tables and needs new refcount blocks (and a bigger refcount table) mid-request."""
    img = tmp_path / "l.qcow2"
    size = 8 * MIB
    create_qcow2(str(img), size, cluster_size=512, refcount_bits=refbits)
    model = bytearray(size)
    rnd = random.Random(refbits)
    with Qcow2Image(str(img)) as q:
        table_offset = q.h.refcount_table_offset
        _write(q, model, 300, rnd.randbytes(3 * MIB))
        _write(q, model, 4 * MIB, rnd.randbytes(MIB))  # whole clusters, many tables
        _write(q, model, 100_000, rnd.randbytes(2 * MIB))  # overwrite, and new clusters past the first write
        if refbits == 64:
            assert q.h.refcount_table_offset != table_offset  # the table moved mid-run
    assert_qemu_agrees(img, model)


@pytest.fixture
def syscalls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """(name, bytes) of every positioned read and write from now on."""
    calls: list[tuple[str, int]] = []
    for name in ("pwrite", "pwritev", "pread", "preadv"):
        real = getattr(os, name)

        def spy(fd: int, data: object, offset: int, _real=real, _name=name) -> object:
            n = data if isinstance(data, int) else len(data) if _name == "pwrite" else sum(len(b) for b in data)
            calls.append((_name, n))
            return _real(fd, data, offset)

        monkeypatch.setattr(os, name, spy)
    return calls


def test_sequential_writes_and_reads_are_one_system_call_each(tmp_path: Path, syscalls: list) -> None:
    """A 1 MiB write into fresh clusters is one data write plus one refcount and one L2 write; an overwrite and
    a read of host-contiguous clusters are one system call (the batching that keeps qcow2 at QEMU's pace)."""
    img = tmp_path / "s.qcow2"
    create_qcow2(str(img), 16 * MIB)
    chunk = b"\x5a" * MIB
    with Qcow2Image(str(img)) as q:
        q.write(0, chunk)  # allocates the L2 table too
        syscalls.clear()
        q.write(MIB, chunk)
        assert sorted(n for _, n in syscalls) == [16 * 2, MIB]  # refcounts, data (L2 entries: at write-back)
        syscalls.clear()
        q.writeback()  # the entries of both writes in one L2 write, then the new L1 entry
        assert [n for _, n in syscalls] == [32 * 8, 8]
        syscalls.clear()
        q.write(MIB + 4096, chunk[: MIB - 8192])
        assert syscalls == [("pwrite", MIB - 8192)]
        buf = memoryview(bytearray(MIB))
        syscalls.clear()
        q.preadv_into(MIB, [buf])
        assert syscalls == [("preadv", MIB)] and buf == chunk
    assert_qemu_agrees(img, chunk * 2 + bytes(14 * MIB))


def test_a_mixed_request_allocates_once(tmp_path: Path, syscalls: list) -> None:
    """New, owned, new, owned, new clusters in one write: one refcount write for the three new clusters, one
    data write per run, and at write-back one write of the five L2 entries."""
    img = tmp_path / "m.qcow2"
    cs = 65536
    create_qcow2(str(img), 16 * cs)
    model = bytearray(16 * cs)
    rnd = random.Random(6)
    with Qcow2Image(str(img)) as q:
        _write(q, model, cs, rnd.randbytes(cs))
        _write(q, model, 3 * cs, rnd.randbytes(cs))
        syscalls.clear()
        _write(q, model, 0, rnd.randbytes(5 * cs))
        assert sorted(n for _, n in syscalls) == [3 * 2, *[cs] * 5]
        syscalls.clear()
        q.writeback()
        assert [n for _, n in syscalls] == [5 * 8, 8]  # the five entries, the new table's L1 entry
    assert_qemu_agrees(img, model)


def test_scattered_guest_buffers_are_written_without_a_join(tmp_path: Path, syscalls: list) -> None:
    """A virtio-blk write names several guest buffers: the sequential shapes write them with one pwritev each;
    any other shape still lands right."""
    img = tmp_path / "v.qcow2"
    size = 8 * MIB
    create_qcow2(str(img), size)
    model = bytearray(size)
    rnd = random.Random(5)

    def views(offset: int, *sizes: int) -> list[memoryview]:
        out = [memoryview(bytearray(rnd.randbytes(n))) for n in sizes]
        model[offset : offset + sum(sizes)] = b"".join(out)
        return out

    with Qcow2Image(str(img)) as q:
        q.write(0, bytes(65536))  # the L2 table exists
        syscalls.clear()
        q.pwritev_from(MIB, views(MIB, 4096, MIB - 8192, 4096))  # fresh clusters
        assert ("pwritev", MIB) in syscalls and len(syscalls) == 2  # refcounts, data (L2 entries: write-back)
        syscalls.clear()
        q.pwritev_from(MIB + 512, views(MIB + 512, 1000, 3000))  # in place
        assert syscalls == [("pwritev", 4000)]
        q.pwritev_from(3 * MIB - 100, views(3 * MIB - 100, 50, 70000, 30))  # partial clusters: the general path
        q.pwritev_from(2 * MIB - 4096, views(2 * MIB - 4096, 4096, 4096))  # half owned, half new
        assert q.read(0, size) == model
    assert_qemu_agrees(img, model)


def test_a_bad_entry_inside_a_contiguous_run_is_refused(tmp_path: Path) -> None:
    """The lean read path compares a run's entries at once: a run whose last entry points past the end of
    the file is still refused with the entry named, not read."""
    img = tmp_path / "c.qcow2"
    cs = 65536
    create_qcow2(str(img), 16 * cs)
    with Qcow2Image(str(img)) as q:
        q.write(0, b"\x01" * (4 * cs))
        l2 = q.l1[0] & 0x00FF_FFFF_FFFF_FE00
        last = q.l2.get(l2)[3]
    # truncate the file just past the third data cluster: the fourth entry now lies past its end
    os.truncate(img, (last & 0x00FF_FFFF_FFFF_FE00))
    with Qcow2Image(str(img), readonly=True) as q, pytest.raises(BlockError, match="past the end of the file"):
        q.preadv_into(0, [memoryview(bytearray(4 * cs))])
