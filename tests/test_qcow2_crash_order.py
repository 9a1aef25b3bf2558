"""qcow2 metadata ordering under a host power loss: at most leaked clusters, never a corruption.

Each workload runs on an image whose file logs every write and sync (:mod:`tests.qcow2_crash`); then every
crash state (the file as of the last sync plus any subset of the writes after it) is checked with refvm's
own check (and a sample with ``qemu-img check``): ``corruptions`` must be 0, leaks are allowed. Where a guest
flush completed before the crash, every byte written before that flush and not rewritten since must read
back. Small clusters (512 bytes) make new L2 tables, new refcount blocks, L2 cache evictions and a refcount
table move happen within a few hundred KiB.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from qcow2_crash import CrashState, RecordingFile, crash_states  # noqa: E402

from refvm.block.cache import CACHE_MODES, CachePolicyBackend  # noqa: E402
from refvm.block.drive import open_drive  # noqa: E402
from refvm.block.flush_all import flush_drives  # noqa: E402
from refvm.block.qcow2 import Qcow2Image, check_image, create_qcow2  # noqa: E402
from refvm.block.qcow2 import image as image_module  # noqa: E402
from refvm.clock import VirtualClock  # noqa: E402
from refvm.migration.job import _refresh_drives  # noqa: E402

CS = 512
SECTOR = 512
QEMU_IMG = shutil.which("qemu-img")
QEMU_SAMPLES = 10  # crash states per workload also checked by qemu-img check


@dataclass
class Flushed:
    """A completed flush: where it ended in the log, the guest disk then, sectors written since."""

    end: int
    model: bytes
    touched: set[int] = field(default_factory=set)


@dataclass
class Run:
    """A workload on a recording image, with the guest-visible model of its contents."""

    q: Qcow2Image
    model: bytearray
    flushes: list[Flushed] = field(default_factory=list)

    @property
    def f(self) -> RecordingFile:
        assert isinstance(self.q.f, RecordingFile)
        return self.q.f

    def _touch(self, offset: int, length: int) -> None:
        sectors = range(offset // SECTOR, -(-(offset + length) // SECTOR))
        for fl in self.flushes:
            fl.touched.update(sectors)

    def write(self, offset: int, data: bytes) -> None:
        self.q.write(offset, data)
        self.model[offset : offset + len(data)] = data
        self._touch(offset, len(data))

    def zeroes(self, offset: int, length: int, unmap: bool) -> None:
        self.q.write_zeroes(offset, length, unmap)
        self.model[offset : offset + length] = bytes(length)
        self._touch(offset, length)

    def discard(self, offset: int, length: int) -> None:
        """Whole clusters only (they read as zeroes after, with or without a backing file)."""
        self.q.discard(offset, length)
        self.model[offset : offset + length] = bytes(length)
        self._touch(offset, length)

    def truncate(self, size: int) -> None:
        """Shrink: the cut-off part is gone (crash states that kept the old size read it as zeroes)."""
        self._touch(size, len(self.model) - size)
        self.q.truncate(size)
        del self.model[size:]

    def flush(self) -> None:
        self.q.flush()
        self.flushes.append(Flushed(len(self.f.ops), bytes(self.model)))


Workload = Callable[[Run, random.Random], None]


def _seq_alloc(run: Run, rnd: random.Random) -> None:
    """Sequential allocating writes across several L2 tables (each covers 32 KiB here), two flushes."""
    for k in range(12):
        run.write(k * 8192, rnd.randbytes(8192))
        if k in (3, 9):
            run.flush()


def _overwrite(run: Run, rnd: random.Random) -> None:
    """Partial-cluster writes (copy-on-write of zero clusters), overwrites in place, unflushed tail."""
    run.write(1000, rnd.randbytes(5000))
    run.write(70000, rnd.randbytes(700))
    run.flush()
    run.write(1500, rnd.randbytes(3000))
    run.write(69000, rnd.randbytes(4000))
    run.flush()
    run.write(200, rnd.randbytes(100))


def _discard_realloc(run: Run, rnd: random.Random) -> None:
    """Frees (discard, write-zeroes with unmap) and reallocation of the freed guest range."""
    run.write(0, rnd.randbytes(16384))
    run.flush()
    run.discard(2048, 4096)
    run.zeroes(8192, 4096, unmap=True)
    run.write(2048, rnd.randbytes(6144))
    run.flush()
    run.zeroes(0, 1024, unmap=True)
    run.write(9000, rnd.randbytes(2000))


def _cow_backing(run: Run, rnd: random.Random) -> None:
    """Copy-on-write of partial clusters over a backing file, and a discard leaving zero clusters."""
    run.write(100, rnd.randbytes(300))
    run.write(4000, rnd.randbytes(2000))
    run.flush()
    run.discard(8192, 2048)
    run.write(8292, rnd.randbytes(100))
    run.write(30000, rnd.randbytes(5000))


def _evict(run: Run, rnd: random.Random) -> None:
    """More dirty L2 tables than the L2 cache holds (32): evictions write back in order, mid-workload."""
    for k in range(40):
        run.write(k * 32768 + 512, rnd.randbytes(1024))


def _prefill(q: Qcow2Image) -> None:
    """(Not recorded.) Fill the image until its one-cluster refcount table (64-bit refcounts: 64 blocks of
    64 clusters, 2 MiB) is nearly full."""
    rnd = random.Random(9)
    pos = 0
    while q.f.size < (2 << 20) - 40 * CS:
        q.write(pos, rnd.randbytes(16384))
        pos += 16384


def _reftable_growth(run: Run, rnd: random.Random) -> None:
    """New refcount blocks and a refcount table move, a flush, then a truncate that frees clusters."""
    start = run.q.h.refcount_table_offset
    pos = len(run.model) // 2
    while run.q.h.refcount_table_offset == start:
        run.write(pos, rnd.randbytes(8192))
        pos += 8192
    for _ in range(6):  # and past at least one more refcount block (64 clusters)
        run.write(pos, rnd.randbytes(8192))
        pos += 8192
    run.flush()
    run.write(100, rnd.randbytes(1000))
    run.truncate(len(run.model) // 2 + 16384)


@dataclass(frozen=True)
class Case:
    name: str
    workload: Workload
    size: int = 1 << 20
    refcount_bits: int = 16
    cluster_size: int = CS
    backing: bool = False
    prefill: Callable[[Qcow2Image], None] | None = None


CASES = [
    Case("seq-alloc", _seq_alloc),
    Case("overwrite", _overwrite),
    Case("discard-realloc", _discard_realloc),
    Case("cow-backing", _cow_backing, backing=True, cluster_size=1024),  # the header needs > 512 bytes
    Case("evict", _evict, size=2 << 20),
    Case("reftable-growth", _reftable_growth, size=4 << 20, refcount_bits=64, prefill=_prefill),
]


def _build(tmp: Path, case: Case) -> tuple[Path, bytes]:
    """A fresh image (over a backing file with data if the case wants one); returns it and its contents."""
    img = tmp / "top.qcow2"
    content = bytes(case.size)
    backing = None
    if case.backing:
        backing = tmp / "base.qcow2"
        create_qcow2(str(backing), case.size, cluster_size=CS)
        content = random.Random(7).randbytes(case.size)
        with Qcow2Image(str(backing)) as base:
            base.write(0, content)
    create_qcow2(
        str(img), case.size, cluster_size=case.cluster_size, refcount_bits=case.refcount_bits,
        backing_file="base.qcow2" if backing else None, backing_format="qcow2" if backing else None,
    )
    if case.prefill is not None:
        with Qcow2Image(str(img)) as q:
            case.prefill(q)
            content = q.read(0, case.size)
    return img, content


def _record(img: Path, content: bytes, case: Case, monkeypatch: pytest.MonkeyPatch) -> tuple[bytes, Run]:
    with monkeypatch.context() as m:
        m.setattr(image_module, "HostFile", RecordingFile)
        q = Qcow2Image(str(img))
        run = Run(q, bytearray(content))
        base = run.f.base
        case.workload(run, random.Random(case.name))
        q.close()  # the close's write-back is logged too (crash states after it are checked)
    return base, run


def _qemu_check(path: Path) -> dict:
    out = subprocess.run([QEMU_IMG, "check", "--output=json", str(path)], capture_output=True, text=True)
    assert out.stdout, out.stderr
    return json.loads(out.stdout)


def _check_durable(path: Path, state: CrashState, run: Run) -> None:
    """Bytes written before the last flush that completed in this state (and not rewritten since) read back."""
    done = [fl for fl in run.flushes if fl.end <= state.synced_ops]
    if not done:
        return
    fl = done[-1]
    with Qcow2Image(str(path), readonly=True) as q:
        now = q.read(0, min(q.length(), len(fl.model)))
    for s in range(len(now) // SECTOR):
        if s not in fl.touched:
            assert now[s * SECTOR : (s + 1) * SECTOR] == fl.model[s * SECTOR : (s + 1) * SECTOR], f"sector {s} lost"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_no_crash_state_is_corrupt(tmp_path: Path, case: Case, monkeypatch: pytest.MonkeyPatch) -> None:
    img, content = _build(tmp_path, case)
    base, run = _record(img, content, case, monkeypatch)
    with Qcow2Image(str(img), readonly=True) as q:  # after close, a fresh open reads everything
        assert q.read(0, len(run.model)) == bytes(run.model)
    states = list(crash_states(base, run.f.ops, seed=len(case.name)))
    probe = tmp_path / "crash.qcow2"
    sample = set(random.Random(1).sample(range(len(states)), min(QEMU_SAMPLES, len(states))))
    for n, state in enumerate(states):
        probe.write_bytes(state.data)
        res = check_image(str(probe))
        assert res.corruptions == 0, (case.name, n, state.synced_ops, res.messages[:3])
        if QEMU_IMG and n in sample:
            assert _qemu_check(probe).get("corruptions", 0) == 0, (case.name, n)
        if n % 4 == 0:
            _check_durable(probe, state, run)


def test_guest_flush_writes_back_and_fresh_open_reads_it(tmp_path: Path) -> None:
    """After flush() another reader of the file sees every write (as after QEMU's flush)."""
    img = tmp_path / "f.qcow2"
    create_qcow2(str(img), 1 << 20, cluster_size=CS)
    data = random.Random(3).randbytes(100_000)
    q = Qcow2Image(str(img))
    try:
        q.write(777, data)
        q.flush()
        with Qcow2Image(str(img), readonly=True) as other:
            assert other.read(777, len(data)) == data
        assert check_image(str(img)).corruptions == 0
    finally:
        q.close()


def test_cache_unsafe_writes_metadata_back_without_syncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """cache=unsafe: a guest flush issues no sync at all, yet the L1/L2 entries reach the file."""
    img = tmp_path / "u.qcow2"
    create_qcow2(str(img), 1 << 20, cluster_size=CS)
    with monkeypatch.context() as m:
        m.setattr(image_module, "HostFile", RecordingFile)
        q = Qcow2Image(str(img))
    policy = CachePolicyBackend(q, CACHE_MODES["unsafe"])
    try:
        policy.pwrite(40000, b"\xab" * 3000)
        policy.flush()
        assert isinstance(q.f, RecordingFile) and ("s",) not in q.f.ops
        with Qcow2Image(str(img), readonly=True) as other:
            assert other.read(40000, 3000) == b"\xab" * 3000
    finally:
        policy.close()


def test_migration_on_shared_storage_writes_back_then_rereads(tmp_path: Path) -> None:
    """Source and destination open the same image; the switchover flushes the source's drives (write-back)
    and the destination reads the metadata again before it runs: it sees the source's writes, and its own
    allocations land past the source's (no cluster referenced twice)."""
    img = tmp_path / "shared.qcow2"
    create_qcow2(str(img), 1 << 20, cluster_size=CS)
    clock = VirtualClock()
    src = open_drive("d0", {"file": str(img), "format": "qcow2"}, clock=clock)
    dst = open_drive("d0", {"file": str(img), "format": "qcow2"}, clock=clock)  # -incoming: opened at start
    try:
        src.pwrite(5000, b"\x11" * 70000)
        flush_drives({"d0": src}, [])  # the source's switchover (Machine.flush_drives)
        _refresh_drives(SimpleNamespace(backends=SimpleNamespace(drives={"d0": dst})))
        assert dst.pread(5000, 70000) == b"\x11" * 70000
        dst.pwrite(200000, b"\x22" * 9000)
        dst.flush()
    finally:
        dst.close()
        src.driver.f.close()  # the source stops using the image (its cache is stale now)
    assert check_image(str(img)).corruptions == 0
    with Qcow2Image(str(img), readonly=True) as q:
        assert q.read(5000, 70000) == b"\x11" * 70000 and q.read(200000, 9000) == b"\x22" * 9000
