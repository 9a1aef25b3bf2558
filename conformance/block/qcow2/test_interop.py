"""qcow2 interop with the reference implementation (qemu-img/qemu-io), both directions.

Every image the tool under test writes must pass ``qemu-img check`` and read back through ``qemu-io``;
every image qemu-img makes (plain, compressed, with backing files) must read back byte-exact through the
tool under test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conformance.block.qcow2.conftest import ImgTool, qemu, qemu_io

SPEC = "qcow2"


def _ok_check(path: Path) -> None:
    proc = qemu("check", str(path), check=False)
    assert proc.returncode == 0, f"qemu-img check found problems:\n{proc.stdout}{proc.stderr}"
    assert "No errors were found" in proc.stdout


def _verify(path: Path, *reads: str, fmt: str = "qcow2") -> None:
    argv = ["-f", fmt]
    for r in reads:
        argv += ["-c", r]
    proc = qemu_io(*argv, str(path))
    assert "verification failed" not in proc.stdout, proc.stdout


@pytest.mark.clause(SPEC, "create/layout")
@pytest.mark.parametrize("opts", ["compat=1.1", "compat=0.10", "cluster_size=4096", "cluster_size=512,compat=1.1"])
def test_created_image_is_clean_and_usable(tool: ImgTool, tmp_path: Path, opts: str) -> None:
    img = tmp_path / "t.qcow2"
    tool.run_img("create", "-f", "qcow2", "-o", opts, str(img), "16M")
    _ok_check(img)
    info = json.loads(qemu("info", "--output=json", str(img)).stdout)
    assert info["virtual-size"] == 16 << 20 and info["format"] == "qcow2"
    _verify(img, "read -P 0 0 16M")


@pytest.mark.clause(SPEC, "info/json")
def test_info_json_matches_qemu_img(tool: ImgTool, tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    qemu("create", "-f", "raw", str(base), "2M")
    img = tmp_path / "over.qcow2"
    qemu("create", "-f", "qcow2", "-b", "base.raw", "-F", "raw", str(img))
    mine = json.loads(tool.run_img("info", "--output=json", str(img)).stdout)
    ref = json.loads(qemu("info", "--output=json", str(img)).stdout)
    for key in ref:
        if key != "actual-size":
            assert mine.get(key) == ref[key], key


@pytest.mark.clause(SPEC, "write/allocation")
@pytest.mark.parametrize(
    "opts", ["compat=1.1", "compat=0.10", "cluster_size=512", "refcount_bits=1", "refcount_bits=64"]
)
def test_writes_pass_qemu_check_and_read_back(tool: ImgTool, tmp_path: Path, opts: str) -> None:
    img = tmp_path / "w.qcow2"
    qemu("create", "-q", "-f", "qcow2", "-o", opts, str(img), "32M")
    tool.run_io(
        "-f", "qcow2",
        "-c", "write -P 0xab 0 64k",
        "-c", "write -P 0xcd 100k 300k",  # partial clusters at both ends: COW from zeroes
        "-c", "write -P 0x11 31M 1M",
        "-c", "write -P 0x22 1000 10",
        str(img),
    )  # fmt: skip
    _ok_check(img)
    _verify(
        img,
        "read -P 0xab 0 1000",
        "read -P 0x22 1000 10",
        "read -P 0xab 1010 64526",
        "read -P 0 64k 36k",
        "read -P 0xcd 100k 300k",
        "read -P 0x11 31M 1M",
        "read -P 0 400k 30320k",
    )


@pytest.mark.clause(SPEC, "write/zero-clusters")
def test_write_zeroes_and_discard(tool: ImgTool, tmp_path: Path) -> None:
    img = tmp_path / "z.qcow2"
    qemu("create", "-q", "-f", "qcow2", str(img), "8M")
    qemu_io("-c", "write -P 0x77 0 4M", str(img))
    tool.run_io("-f", "qcow2", "-c", "write -z 0 1M", "-c", "write -z -u 1M 1M", "-c", "discard 2M 1M", str(img))
    _ok_check(img)
    _verify(img, "read -P 0 0 3M", "read -P 0x77 3M 1M")


@pytest.mark.clause(SPEC, "read/qemu-made")
def test_reads_qemu_written_image(tool: ImgTool, tmp_path: Path) -> None:
    img = tmp_path / "q.qcow2"
    qemu("create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", str(img), "4M")
    qemu_io("-c", "write -P 0x3c 4000 100000", "-c", "write -z 8192 4096", str(img))
    proc = tool.run_io("-r", "-f", "qcow2", "-c", "read -P 0 0 4000", "-c", "read -P 0x3c 4000 4192",
                       "-c", "read -P 0 8192 4096", "-c", "read -P 0x3c 12288 91712", "-c", "read -P 0 104000 10000",
                       str(img))  # fmt: skip
    assert "verification failed" not in proc.stdout


@pytest.mark.clause(SPEC, "read/compressed")
@pytest.mark.parametrize("opts", ["compat=1.1", "compat=0.10,cluster_size=4096"])
def test_compressed_image_reads_byte_exact(tool: ImgTool, tmp_path: Path, opts: str) -> None:
    src = tmp_path / "src.raw"
    data = bytearray()
    for i in range(3000):
        data += (f"line {i} of a compressible disk image\n" * 3).encode()
    data += bytes(range(256)) * 2000
    src.write_bytes(bytes(data).ljust((1 << 20) + 12800, b"\0"))
    img = tmp_path / "c.qcow2"
    qemu("convert", "-c", "-O", "qcow2", "-o", opts, str(src), str(img))
    out = tmp_path / "out.raw"
    # the tool reads the compressed image: dump it through a verify of each 64k piece against the source
    reads = []
    for off in range(0, len(data), 65536):
        piece = bytes(data[off : off + 65536])
        if piece == piece[:1] * len(piece):
            reads += ["-c", f"read -P {piece[0]} {off} {len(piece)}"]
    proc = tool.run_io("-r", "-f", "qcow2", *reads, str(img))
    assert "verification failed" not in proc.stdout
    # byte-exact: convert back with the reference from a copy written by the tool
    tool.run_io("-f", "qcow2", "-c", "write -P 0x99 200000 5000", str(img))  # COW out of a compressed cluster
    _ok_check(img)
    qemu("convert", "-O", "raw", str(img), str(out))
    expect = bytearray(src.read_bytes())
    expect[200000:205000] = b"\x99" * 5000
    assert out.read_bytes() == bytes(expect)


@pytest.mark.clause(SPEC, "backing/chain")
@pytest.mark.parametrize("base_fmt", ["raw", "qcow2"])
@pytest.mark.parametrize("maker", ["reference", "target"])
def test_backing_chain(tool: ImgTool, tmp_path: Path, base_fmt: str, maker: str) -> None:
    base = tmp_path / f"base.{base_fmt}"
    qemu("create", "-q", "-f", base_fmt, str(base), "4M")
    qemu_io("-f", base_fmt, "-c", "write -P 0x11 0 4M", str(base))
    before = base.read_bytes()
    mid = tmp_path / "mid.qcow2"
    top = tmp_path / "top.qcow2"
    create = tool.run_img if maker == "target" else qemu
    create("create", "-f", "qcow2", "-b", base.name, "-F", base_fmt, str(mid))
    qemu_io("-c", "write -P 0x22 1M 64k", str(mid))
    create("create", "-f", "qcow2", "-b", mid.name, "-F", "qcow2", str(top))
    tool.run_io("-f", "qcow2", "-c", "write -P 0x33 2M 1000", "-c", "read -P 0x22 1M 64k", str(top))
    assert base.read_bytes() == before, "a write through the overlay changed the base image"
    _ok_check(top)
    _ok_check(mid)
    _verify(top, "read -P 0x11 0 1M", "read -P 0x22 1M 64k", "read -P 0x11 1088k 960k",
            "read -P 0x33 2M 1000", "read -P 0x11 2098152 2095304")  # fmt: skip
    ref = json.loads(qemu("info", "--output=json", str(top)).stdout)
    assert ref["backing-filename"] == "mid.qcow2" and ref["backing-filename-format"] == "qcow2"


@pytest.mark.clause(SPEC, "check/exit-status")
def test_check_reports_leaks_like_qemu(tool: ImgTool, tmp_path: Path) -> None:
    img = tmp_path / "leak.qcow2"
    qemu("create", "-q", "-f", "qcow2", str(img), "4M")
    qemu_io("-c", "write -P 1 0 64k", str(img))
    assert tool.run_img("check", str(img), check=False).returncode == 0
    # leak one cluster: raise the refcount of the cluster after the end of the data by appending it
    with open(img, "r+b") as f:
        f.seek(48)
        rt = int.from_bytes(f.read(8), "big")
        f.seek(rt)
        block = int.from_bytes(f.read(8), "big")
        end = f.seek(0, 2)
        f.write(bytes(65536))
        f.seek(block + 2 * (end // 65536))
        f.write((1).to_bytes(2, "big"))
    assert qemu("check", str(img), check=False).returncode == 3
    proc = tool.run_img("check", str(img), check=False)
    assert proc.returncode == 3 and "1 leaked clusters" in proc.stdout
