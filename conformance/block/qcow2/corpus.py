"""The corrupted-image corpus: each entry is a valid qemu-img-made qcow2 image with a few bytes edited.

Built at test time (no binary images in git) with qemu-img/qemu-io, then patched with struct writes at the
offsets qcow2.txt gives. No refvm imports: the conformance suite and refvm's unit tests both use it.

Base image layout as qemu-img 7.2 creates it (64 KiB clusters): header at 0, refcount table at 0x10000,
refcount block at 0x20000, L1 table at 0x30000; after ``write 0 64k`` the L2 table is at 0x40000 and the data
cluster at 0x50000 (both found from the image, not assumed).
"""

from __future__ import annotations

import hashlib
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CorpusEntry", "CORPUS", "build", "sha256", "make_base"]

CLUSTER = 65536


@dataclass(frozen=True)
class CorpusEntry:
    """One corruption: ``at_open`` problems are found when the image is opened (read-only is enough);
    the others only when I/O reaches the bad structure. ``keywords``: words refvm's message must contain."""

    name: str
    at_open: bool
    keywords: tuple[str, ...]
    clause: str


CORPUS = [
    CorpusEntry("bad_magic", True, ("not in qcow2 format",), "corpus/bad-magic"),
    CorpusEntry("bad_version", True, ("version 4",), "corpus/unsupported-version"),
    CorpusEntry("l1_past_eof", True, ("L1 table", "past the end"), "corpus/l1-past-eof"),
    CorpusEntry("header_length_small", True, ("header_length",), "corpus/header-length"),
    CorpusEntry("backing_loop", True, ("backing file loop",), "corpus/backing-loop"),
    CorpusEntry("l2_entry_past_eof", False, ("past the end of the file",), "corpus/cluster-past-eof"),
    CorpusEntry("l1_entry_misaligned", False, ("L1 entry 0", "aligned"), "corpus/l1-misaligned"),
]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60)


def make_base(path: Path) -> None:
    """A 4 MiB qcow2 v3 image with guest cluster 0 written (so it has one L2 table and one data cluster)."""
    _run("qemu-img", "create", "-q", "-f", "qcow2", str(path), "4M")
    _run("qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 64k", str(path))


def _patch(path: Path, offset: int, fmt: str, *values: int | bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(fmt, *values))


def _u64(path: Path, offset: int) -> int:
    with open(path, "rb") as f:
        f.seek(offset)
        return struct.unpack(">Q", f.read(8))[0]


def build(name: str, directory: Path) -> Path:
    """Make corpus entry ``name`` in ``directory``; returns the image to open."""
    path = directory / f"{name}.qcow2"
    if name == "backing_loop":
        a, b = directory / "loop_a.qcow2", directory / "loop_b.qcow2"
        _run("qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", b.name, "-F", "qcow2", str(a), "1M")
        _run("qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", a.name, "-F", "qcow2", str(b), "1M")
        return a
    make_base(path)
    size = path.stat().st_size
    l1_offset = _u64(path, 40)
    l2_offset = _u64(path, l1_offset) & 0x00FF_FFFF_FFFF_FE00
    if name == "bad_magic":
        _patch(path, 0, ">4s", b"QFI\x00")
    elif name == "bad_version":
        _patch(path, 4, ">I", 4)
    elif name == "l1_past_eof":
        _patch(path, 40, ">Q", size + 16 * CLUSTER)  # l1_table_offset beyond the file
    elif name == "header_length_small":
        _patch(path, 100, ">I", 96)
    elif name == "l2_entry_past_eof":
        _patch(path, l2_offset, ">Q", (1 << 63) | (size + 64 * CLUSTER))
    elif name == "l1_entry_misaligned":
        _patch(path, l1_offset, ">Q", (1 << 63) | (l2_offset + 512))
    else:
        raise ValueError(f"unknown corpus entry {name}")
    return path
