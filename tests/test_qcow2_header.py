"""qcow2 header: parse/serialize round trip on qemu-img-made headers, extensions kept, limits enforced."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from refvm.block.driver import BlockError, open_image, probe_format
from refvm.block.qcow2.create import create_qcow2
from refvm.block.qcow2.header import EXT_BACKING_FORMAT, EXT_FEATURE_TABLE, Extension, Header, parse_header
from tests.conftest import require


def _qemu_img(*args: str) -> None:
    require(shutil.which("qemu-img") is not None, "qemu-img not found (apt-get install qemu-utils)")
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


@pytest.mark.parametrize("opts", ["compat=1.1", "compat=0.10", "cluster_size=4096,refcount_bits=8"])
def test_round_trip_of_qemu_made_header(tmp_path: Path, opts: str) -> None:
    base = tmp_path / "b.raw"
    base.write_bytes(bytes(1 << 20))
    img = tmp_path / "a.qcow2"
    _qemu_img("create", "-f", "qcow2", "-o", opts, "-b", "b.raw", "-F", "raw", str(img))
    raw = img.read_bytes()
    h = parse_header(str(img), raw[:65536], len(raw))
    assert h.backing_file == "b.raw" and h.backing_format == "raw"
    out = h.serialize()
    assert out == raw[: len(out)]


def test_unknown_extension_and_fields_are_preserved() -> None:
    h = Header(size=1 << 20, l1_size=1, l1_table_offset=3 << 16, refcount_table_offset=1 << 16)
    h.refcount_table_clusters = 1
    h.header_length = 120
    h.extra_fields = bytes(8) + b"futurefl"
    h.extensions = [Extension(0x12345678, b"opaque!"), Extension(EXT_BACKING_FORMAT, b"qcow2")]
    h.backing_file = "x.qcow2"
    buf = h.serialize().ljust(65536, b"\0")
    again = parse_header("t", buf, 4 << 16)
    assert again.extra_fields == h.extra_fields
    assert [(e.type, e.data) for e in again.extensions] == [(0x12345678, b"opaque!"), (EXT_BACKING_FORMAT, b"qcow2")]
    assert again.serialize() == h.serialize()


def test_created_header_has_feature_table(tmp_path: Path) -> None:
    img = tmp_path / "c.qcow2"
    create_qcow2(str(img), 1 << 30)
    raw = img.read_bytes()
    h = parse_header(str(img), raw[:65536], len(raw))
    assert h.version == 3 and h.refcount_bits == 16 and h.header_length == 112
    assert any(e.type == EXT_FEATURE_TABLE for e in h.extensions)
    assert h.feature_name(0, 1) == "corrupt bit"
    assert probe_format(str(img)) == "qcow2"


@pytest.mark.parametrize(
    ("offset", "fmt", "value", "words"),
    [
        (20, ">I", 8, "cluster size"),
        (20, ">I", 22, "cluster size"),
        (72, ">Q", 1 << 4, "extended L2 entries"),
        (72, ">Q", 1 << 40, "unknown feature bit 40"),
        (96, ">I", 7, "refcount_order"),
        (100, ">I", 108, "multiple of 8"),
        (32, ">I", 1, "Encrypted"),
        (36, ">I", 0, "too small"),
        (40, ">Q", 12345, "aligned"),
    ],
)
def test_bad_fields_are_refused(tmp_path: Path, offset: int, fmt: str, value: int, words: str) -> None:
    img = tmp_path / "c.qcow2"
    create_qcow2(str(img), 1 << 20)
    with open(img, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(fmt, value))
    with pytest.raises(BlockError, match=words) as exc:
        open_image(str(img), "qcow2", readonly=True)
    assert str(img) in str(exc.value)
