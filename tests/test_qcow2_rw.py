"""qcow2 driver: allocation and refcounts, COW, zero clusters, compressed reads, backing chains, check()."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from refvm.block.driver import BlockError, open_image
from refvm.block.qcow2 import Qcow2Image, check_image, create_qcow2
from tests.conftest import require


def _tool(name: str) -> str:
    require(shutil.which(name) is not None, f"{name} not found (apt-get install qemu-utils)")
    return name


def qemu_check(path: Path) -> None:
    proc = subprocess.run([_tool("qemu-img"), "check", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def qemu_img(*args: str) -> None:
    subprocess.run([_tool("qemu-img"), *args], check=True, capture_output=True)


@pytest.mark.parametrize("cluster", [512, 4096, 65536])
@pytest.mark.parametrize("refbits", [1, 16, 64])
def test_random_writes_match_a_model(tmp_path: Path, cluster: int, refbits: int) -> None:
    img = tmp_path / "r.qcow2"
    size = 4 << 20
    create_qcow2(str(img), size, cluster_size=cluster, refcount_bits=refbits)
    model = bytearray(size)
    rnd = random.Random(cluster + refbits)
    with Qcow2Image(str(img)) as q:
        for _ in range(60):
            off = rnd.randrange(size)
            n = min(rnd.randrange(1, 200000), size - off)
            data = rnd.randbytes(n)
            q.write(off, data)
            model[off : off + n] = data
        assert q.read(0, size) == bytes(model)
    assert check_image(str(img)).corruptions == 0 and check_image(str(img)).leaks == 0
    qemu_check(img)
    with open_image(str(img), readonly=True) as q:
        assert q.read(0, size) == bytes(model)


def test_refcounts_follow_allocation(tmp_path: Path) -> None:
    img = tmp_path / "a.qcow2"
    create_qcow2(str(img), 64 << 20)
    with Qcow2Image(str(img)) as q:
        end = q.rc.end
        q.write(0, b"x" * 100)  # one L2 table + one data cluster
        assert q.rc.end == end + 2
        assert q.rc.get(end) == 1 and q.rc.get(end + 1) == 1
        q.write(10, b"y")  # in place: nothing new
        assert q.rc.end == end + 2
        q.discard(0, 65536)
        assert q.rc.get(end + 1) == 0
    qemu_check(img)


def test_zero_clusters_v3_and_v2(tmp_path: Path) -> None:
    for compat in ("1.1", "0.10"):
        img = tmp_path / f"z{compat}.qcow2"
        create_qcow2(str(img), 1 << 20, compat=compat)
        with Qcow2Image(str(img)) as q:
            q.write(0, b"\xff" * (1 << 20))
            q.write_zeroes(1000, 200000)
            q.write_zeroes(512 << 10, 128 << 10, unmap=True)
            data = q.read(0, 1 << 20)
        assert data[:1000] == b"\xff" * 1000 and data[1000:201000] == bytes(200000)
        assert data[201000 : 512 << 10] == b"\xff" * ((512 << 10) - 201000)
        assert data[512 << 10 : 640 << 10] == bytes(128 << 10) and data[640 << 10 :] == b"\xff" * (384 << 10)
        qemu_check(img)


def test_cow_from_backing_and_chain(tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    base.write_bytes(bytes(range(256)) * 4096)  # 1 MiB
    mid = tmp_path / "mid.qcow2"
    create_qcow2(str(mid), 2 << 20, backing_file="base.raw", backing_format="raw")  # larger than its backing
    with Qcow2Image(str(mid)) as q:
        q.write(70000, b"M" * 10)
    top = tmp_path / "top.qcow2"
    create_qcow2(str(top), 2 << 20, backing_file=str(mid), backing_format="qcow2")
    before = base.read_bytes()
    with Qcow2Image(str(top)) as q:
        q.write(65536 + 100, b"T" * 5)
        got = q.read(0, 2 << 20)
    expect = bytearray(before) + bytes(1 << 20)
    expect[70000:70010] = b"M" * 10
    expect[65636:65641] = b"T" * 5
    assert got == bytes(expect)
    assert base.read_bytes() == before
    qemu_check(top)
    qemu_check(mid)


def test_compressed_reads_of_qemu_image(tmp_path: Path) -> None:
    src = tmp_path / "s.raw"
    data = b"".join(f"{i:08d} compressible\n".encode() for i in range(50000)) + os.urandom(300000)
    data = data.ljust(-(-len(data) // 512) * 512, b"\0")
    src.write_bytes(data)
    img = tmp_path / "c.qcow2"
    qemu_img("convert", "-c", "-O", "qcow2", str(src), str(img))
    with open_image(str(img), readonly=True) as q:
        assert q.read(0, len(data)) == data
    with open_image(str(img)) as q:
        q.write(1, b"!")
        assert q.read(0, 3) == data[:1] + b"!" + data[2:3]
    qemu_check(img)


def test_grow_and_shrink(tmp_path: Path) -> None:
    img = tmp_path / "g.qcow2"
    create_qcow2(str(img), 1 << 20, cluster_size=512)
    with Qcow2Image(str(img)) as q:
        q.write(0, b"a" * 4096)
        q.truncate(64 << 20)  # L1 must grow with 512-byte clusters
        q.write((64 << 20) - 512, b"b" * 512)
        q.truncate(2048)
        assert q.length() == 2048 and q.read(0, 2048) == b"a" * 2048
    qemu_check(img)


def test_check_finds_leaks_and_corruptions(tmp_path: Path) -> None:
    img = tmp_path / "l.qcow2"
    create_qcow2(str(img), 1 << 20)
    with Qcow2Image(str(img)) as q:
        q.write(0, b"z" * 65536)
        q.rc.alloc(2)  # allocated, referenced by nothing: two leaks
    res = check_image(str(img))
    assert res.leaks == 2 and res.corruptions == 0
    with Qcow2Image(str(img)) as q:
        data_cluster = q.l2.get(q.l1[0] & ~(1 << 63))[0] & 0x00FF_FFFF_FFFF_FE00
        q.rc.update(data_cluster >> 16, 1, -1)  # referenced but refcount 0
    res = check_image(str(img))
    assert res.corruptions >= 1


def test_readonly_and_corrupt_bit(tmp_path: Path) -> None:
    img = tmp_path / "c.qcow2"
    create_qcow2(str(img), 1 << 20)
    with open_image(str(img), readonly=True) as q:
        with pytest.raises(BlockError, match="read-only"):
            q.write(0, b"x")
    with open(img, "r+b") as f:
        f.seek(72)
        f.write((2).to_bytes(8, "big"))
    with pytest.raises(BlockError, match="corrupt"):
        open_image(str(img))
    with open_image(str(img), readonly=True) as q:
        assert q.info()["format-specific"]["data"]["corrupt"] is True
