"""virtio-blk's compiled fast path (refvm/virtio/devices/blk_fast.c) against the Python model, byte for byte.

Two devices on two copies of one raw image and two guest memories with the same layout (two adjacent RAM
regions, so a buffer may cross from one to the other): one with the compiled path, one with
``x-fastpath=off``. The test is the driver of both: the same request streams, laid out the same way, good
ones and hostile ones, with the same notifications. Afterwards all of guest RAM (buffers, status bytes,
used ring, avail_event), the image files, the device status, the interrupt count and ISR, and the
blockstats must be equal -- and the compiled path must really have served the ordinary requests, while
everything unusual went to the Python model, which gives the spec's answer (IOERR, UNSUPP, NEEDS_RESET).
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_virtio_helpers import EVENT_IDX, INDIRECT, MODERN, SplitDriver, bring_up

from refvm.block import RawFile
from refvm.block.drive import open_drive
from refvm.clock import RealtimeClock
from refvm.memory import GuestMemory
from refvm.virtio import status as S
from refvm.virtio.devices import blk as B
from refvm.virtio.devices import blk_fast_build
from refvm.virtio.devices.blk import VirtioBlk
from refvm.virtio.queue import DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE

REGION = 0x80000  # two adjacent RAM regions of 512 KiB: [0, REGION) and [REGION, 2 * REGION)
QSIZE = 16
DISK_SECTORS = 512
CAP = DISK_SECTORS
DATA_BASE = 0x40000
INDIRECT_BASE = 0x30000
FEATS = MODERN | (1 << B.VIRTIO_BLK_F_FLUSH) | (1 << B.VIRTIO_BLK_F_CONFIG_WCE) | (1 << B.VIRTIO_BLK_F_DISCARD)
FEATS |= 1 << B.VIRTIO_BLK_F_WRITE_ZEROES

pytestmark = pytest.mark.skipif(
    blk_fast_build.load() is None and os.environ.get("CI") != "true",
    reason=f"the compiled fast path could not be built here: {blk_fast_build.load_error()}",
)


def test_fast_path_is_built_under_ci() -> None:
    """With CI=true the extension must build (gcc and the Python headers come from .ci/setup)."""
    assert blk_fast_build.load() is not None, blk_fast_build.load_error()


def test_c_source_is_warning_free() -> None:
    """The guest-facing C compiles without a warning under strict flags (conversions included)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed")
    flags = ["-fsyntax-only", "-std=gnu11", "-Wall", "-Wextra", "-Wpedantic", "-Wconversion", "-Werror"]
    done = subprocess.run([gcc, *flags, str(blk_fast_build.SOURCE)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@dataclass
class Twin:
    """One device, its memory, its image and its driver; ``irqs`` counts used buffer notifications."""

    mem: GuestMemory
    image: Path
    dev: VirtioBlk
    drv: SplitDriver
    irqs: list[int] = field(default_factory=list)


def make_twin(tmp: Path, name: str, fast: bool, features: int, readonly: bool = False) -> Twin:
    mem = GuestMemory()
    mem.add_ram(0, REGION)
    mem.add_ram(REGION, REGION)
    image = tmp / f"{name}.img"
    shutil.copyfile(tmp / "base.img", image)
    backend = RawFile(str(image), readonly=readonly)
    props = {"drive": "d0", "x-fastpath": "on" if fast else "off", "queue-size": str(QSIZE)}
    dev = VirtioBlk.create(mem, props, drives={"d0": backend}, writeback=True)
    drv = SplitDriver(mem, QSIZE)
    twin = Twin(mem, image, dev, drv)
    dev.on_used_buffer = twin.irqs.append
    assert bring_up(dev, features, configure=drv.configure)
    return twin


@pytest.fixture
def base_image(tmp_path: Path) -> Path:
    p = tmp_path / "base.img"
    p.write_bytes(bytes((i * 7 + 3) & 0xFF for i in range(DISK_SECTORS * 512)))
    return tmp_path


# ---------------------------------------------------------------------------------------------- requests
@dataclass
class Req:
    """One request as the driver lays it out."""

    rtype: int
    sector: int
    size: int  # data bytes (OUT: readable after the header, IN: writable before the status)
    hdr_split: int = 16  # bytes of the header in the first descriptor (the rest in a second one)
    segs: int = 1  # data descriptors
    status: str = "own"  # own | merged (last data desc + 1) | none | zero (zero-length last) | wide (2 bytes)
    indirect: bool = False
    #: outside | cross | next_oob | loop | rw_order | zero_seg | huge_indirect | short_hdr | force_indirect
    mutation: str | None = None


def layout(req: Req, k: int) -> list[tuple[int, int, bool]]:
    """(addr, len, writable) elements of request number ``k`` of a batch (disjoint buffers per request)."""
    base = DATA_BASE + k * 0x9000
    if req.mutation == "cross":
        base = REGION - 0x200 - k * 0x40  # data crosses into the second RAM region
    hdr = 0x30 + base if req.mutation != "cross" else DATA_BASE + 0x8000 + k * 0x40
    elems = [(hdr, req.hdr_split, False)]
    if req.hdr_split < 16 and req.mutation != "short_hdr":
        elems.append((hdr + req.hdr_split, 16 - req.hdr_split, False))
    nhdr = len(elems)
    write = bool(req.rtype & 1)  # OUT-type requests (and DISCARD/WRITE_ZEROES) carry readable data
    data = base + 0x100
    sizes = _split(req.size, req.segs)
    for i, n in enumerate(sizes):
        elems.append((data, n, not write))
        data += n + (0x10 if i % 2 else 0)  # sometimes a gap between segments
    status_at = data + 0x20
    if req.status == "own":
        elems.append((status_at, 1, True))
    elif req.status == "merged" and elems[-1][2] and len(elems) > 1:
        a, n, w = elems[-1]
        elems[-1] = (a, n + 1, w)
    elif req.status == "zero":
        elems.append((status_at, 0, True))
    elif req.status == "wide":
        elems.append((status_at, 2, True))
    elif req.status == "merged":
        elems.append((status_at, 1, True))
    if req.mutation == "outside":
        a, n, w = elems[-1]
        elems[-1] = (1 << 40, n, w)
    elif req.mutation == "rw_order":
        elems.append((status_at + 0x10, 4, False))
    elif req.mutation == "zero_seg":
        elems.insert(nhdr, (0, 0, False))
    return elems


def _split(total: int, parts: int) -> list[int]:
    if total == 0:
        return []
    parts = max(1, min(parts, total))
    cut = [total * i // parts for i in range(parts + 1)]
    return [b - a for a, b in zip(cut, cut[1:], strict=False) if b > a]


def lay_out(tw: Twin, reqs: list[Req]) -> None:
    """Write headers, OUT data, status sentinels and descriptors; make the requests available (no notify).
    Requests that no longer fit in the descriptor table are left out (a driver waits for free entries)."""
    mem, drv = tw.mem, tw.drv
    slot = 0
    heads = []
    for k, req in enumerate(reqs):
        elems = layout(req, k)
        indirect = req.indirect and (tw.dev.queues[0].indirect or req.mutation == "force_indirect")
        if slot + (1 if indirect else len(elems)) > QSIZE:
            break
        hdr = struct.pack("<IIQ", req.rtype & 0xFFFFFFFF, 0, req.sector & (2**64 - 1))
        first = elems[0]
        mem.write(first[0], hdr[: first[1]])
        nhdr = 1
        if req.hdr_split < 16 and req.mutation != "short_hdr":
            mem.write(elems[1][0], hdr[req.hdr_split:])
            nhdr = 2
        for a, ln, w in elems[nhdr:]:
            if ln and a + ln <= 2 * REGION:
                mem.write(a, bytes(((a + i) * 31 + k) & 0xFF for i in range(ln)) if not w else b"\xee" * ln)
        descs = [(a, ln, (DESC_F_WRITE if w else 0)) for a, ln, w in elems]
        if indirect:  # without the feature only when forced (test_indirect_without_the_feature_needs_reset)
            table = INDIRECT_BASE + k * 0x400
            count = len(descs) if req.mutation != "huge_indirect" else 2 * QSIZE + 1
            for i in range(count):
                a, ln, f = descs[min(i, len(descs) - 1)]
                nxt = i + 1
                last = i == count - 1
                mem.write(table + 16 * i, struct.pack("<QIHH", a, ln, f | (0 if last else DESC_F_NEXT), nxt))
            descs = [(table, 16 * count, DESC_F_INDIRECT)]
        head = slot
        for i, (a, ln, f) in enumerate(descs):
            idx = slot + i
            last = i == len(descs) - 1
            nxt = (idx + 1) % QSIZE
            if req.mutation == "next_oob" and last:
                f, nxt = f | DESC_F_NEXT, QSIZE + 3
            if req.mutation == "loop" and last:
                f, nxt = f | DESC_F_NEXT, head
            drv.set_desc(idx, a, ln, f | (0 if last else DESC_F_NEXT), nxt)
        slot += len(descs)
        heads.append(head)
    drv.publish(*heads)


@dataclass
class Batch:
    reqs: list[Req]
    used_event: int = 0
    no_interrupt: bool = False
    wce: bool | None = None  # write the config's writeback byte first (CONFIG_WCE)


def run_stream(tw: Twin, batches: list[Batch]) -> None:
    for b in batches:
        if b.wce is not None:
            tw.dev.write_config(32, bytes([int(b.wce)]))
        tw.drv.set_used_event((tw.drv.idx + b.used_event) & 0xFFFF)
        tw.drv.set_avail_flags(int(b.no_interrupt))
        lay_out(tw, b.reqs)
        tw.dev.queue_notify(0)


def assert_same(fast: Twin, slow: Twin) -> None:
    assert fast.dev.status == slow.dev.status
    assert fast.dev.error == slow.dev.error
    assert fast.mem.read(0, 2 * REGION) == slow.mem.read(0, 2 * REGION)
    assert fast.image.read_bytes() == slow.image.read_bytes()
    assert (fast.irqs, fast.dev.isr) == (slow.irqs, slow.dev.isr)
    assert fast.dev.stats == slow.dev.stats
    assert slow.dev.fast_requests_served == 0


# ---------------------------------------------------------------------------------------------- hand-made cases
def twins(tmp: Path, features: int = FEATS, readonly: bool = False) -> tuple[Twin, Twin]:
    return make_twin(tmp, "fast", True, features, readonly), make_twin(tmp, "slow", False, features, readonly)


def test_ordinary_reads_and_writes_are_served_compiled_and_identical(base_image: Path) -> None:
    fast, slow = twins(base_image, FEATS | EVENT_IDX)
    assert fast.dev.fast_path_active and not slow.dev.fast_path_active
    stream = [Batch([Req(B.T_IN, 8, 4096), Req(B.T_OUT, 16, 1024, segs=3), Req(B.T_IN | B.T_BARRIER, 16, 1024)]),
              Batch([Req(B.T_OUT | B.T_BARRIER, 0, 512, hdr_split=8), Req(B.T_IN, 0, 2048, status="merged")]),
              Batch([Req(B.T_IN, CAP - 4, 2048, segs=2)], used_event=5)]
    for tw in (fast, slow):
        run_stream(tw, stream)
    assert_same(fast, slow)
    assert fast.dev.fast_requests_served == 6
    assert fast.drv.used_elem(0) == (0, 4097) and fast.mem.read_u8(DATA_BASE + 0x100 + 4096 + 0x20) == B.S_OK
    with open(fast.image, "rb") as f:
        f.seek(16 * 512)
        assert f.read(1024) == slow.image.read_bytes()[16 * 512: 17 * 512 + 512]


@pytest.mark.parametrize(
    "req, status, served",
    [
        (Req(B.T_FLUSH, 0, 0), B.S_OK, 0),
        (Req(B.T_GET_ID, 0, 20), B.S_OK, 0),
        (Req(B.T_IN, CAP, 512), B.S_IOERR, 0),  # past the end
        (Req(B.T_IN, CAP - 1, 1024), B.S_IOERR, 0),  # crosses the end
        (Req(B.T_IN, 2**64 - 1, 512), B.S_IOERR, 0),
        (Req(B.T_OUT, 0, 100), B.S_IOERR, 0),  # not a multiple of the block size
        (Req(B.T_IN, 0, 0), B.S_OK, 0),  # no data: Python's
        (Req(2, 0, 512), B.S_UNSUPP, 0),  # SCSI
        (Req(0x1234, 0, 512), B.S_UNSUPP, 0),
        (Req(B.T_IN, 0, 1024, mutation="cross"), B.S_OK, 0),  # buffer over two RAM regions
        (Req(B.T_IN, 0, 1024, status="wide"), B.S_IOERR, 0),  # data_in = 1025: the status is the last byte only
        (Req(B.T_IN, 0, 1024, status="merged"), B.S_OK, 1),  # status byte at the end of the data descriptor
        (Req(B.T_IN, 0, 1024, mutation="zero_seg"), B.S_OK, 1),
        (Req(B.T_IN, 0, 1024, indirect=True), B.S_OK, 1),
    ],
)
def test_requests_the_compiled_path_leaves_to_python(base_image: Path, req: Req, status: int, served: int) -> None:
    fast, slow = twins(base_image, FEATS | INDIRECT)
    for tw in (fast, slow):
        run_stream(tw, [Batch([Req(B.T_IN, 1, 512), req, Req(B.T_IN, 2, 512)])])
    assert_same(fast, slow)
    assert fast.dev.error is None
    assert fast.drv.used_idx() == 3
    status_addr = [a + ln - 1 for a, ln, w in layout(req, 1) if w][-1]
    assert fast.mem.read_u8(status_addr) == status
    assert fast.dev.fast_requests_served == 2 + served


@pytest.mark.parametrize("req", [
    Req(B.T_OUT, 0, 512, status="none"),  # no device-writable status byte
    Req(B.T_IN, 0, 512, status="zero"),
    Req(B.T_IN, 0, 512, hdr_split=8, mutation="short_hdr"),  # an 8-byte header
    Req(B.T_IN, 0, 512, mutation="outside"),
    Req(B.T_IN, 0, 512, mutation="next_oob"),
    Req(B.T_IN, 0, 512, mutation="loop"),
    Req(B.T_IN, 0, 512, mutation="rw_order"),
    Req(B.T_IN, 0, 512, indirect=True, mutation="huge_indirect"),
    Req(B.T_IN, 0, 512, indirect=True, mutation="loop"),
])
def test_driver_errors_still_need_reset(base_image: Path, req: Req) -> None:
    """A malformed chain: the compiled path serves what came before it and Python fails the device."""
    fast, slow = twins(base_image, FEATS | INDIRECT)
    for tw in (fast, slow):
        run_stream(tw, [Batch([Req(B.T_IN, 1, 512), req, Req(B.T_IN, 2, 512)])])
    assert_same(fast, slow)
    assert fast.dev.status & S.DEVICE_NEEDS_RESET, fast.dev.error
    assert fast.dev.fast_requests_served == 1 and fast.drv.used_idx() == 1


def test_indirect_without_the_feature_needs_reset(base_image: Path) -> None:
    fast, slow = twins(base_image)
    for tw in (fast, slow):
        run_stream(tw, [Batch([Req(B.T_IN, 0, 512, indirect=True, mutation="force_indirect")])])
    assert_same(fast, slow)
    assert "INDIRECT" in (fast.dev.error or "")


def test_read_only_and_write_through_writes_go_to_python(base_image: Path) -> None:
    fast, slow = twins(base_image, readonly=True)
    for tw in (fast, slow):
        run_stream(tw, [Batch([Req(B.T_OUT, 0, 512), Req(B.T_IN, 0, 512)])])
    assert_same(fast, slow)
    assert fast.dev.fast_requests_served == 1 and fast.dev.stats["failed_wr_operations"] == 1

    fast, slow = twins(base_image)
    for tw in (fast, slow):  # the guest turns its write cache off: every write is flushed, by Python
        run_stream(tw, [Batch([Req(B.T_OUT, 0, 512)], wce=False), Batch([Req(B.T_OUT, 1, 512)], wce=True)])
    assert_same(fast, slow)
    assert fast.dev.fast_requests_served == 1


def test_notification_suppression_matches(base_image: Path) -> None:
    """EVENT_IDX's used_event and VIRTQ_AVAIL_F_NO_INTERRUPT give the same interrupts on both paths."""
    for feats in (FEATS, FEATS | EVENT_IDX):
        fast, slow = twins(base_image, feats)
        stream = [Batch([Req(B.T_IN, i, 512) for i in range(n)], used_event=ev, no_interrupt=ni)
                  for n, ev, ni in ((1, 0, False), (2, 1, True), (3, 5, False), (1, 0, True), (2, 1, False))]
        for tw in (fast, slow):
            run_stream(tw, stream)
        assert_same(fast, slow)
        assert fast.dev.fast_requests_served == 9 and fast.irqs


def test_switches_and_backends_without_the_fast_path(base_image: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert not make_twin(base_image, "off", False, FEATS).dev.fast_path_active
    monkeypatch.setenv("REFVM_BLK_FASTPATH", "0")
    assert not make_twin(base_image, "env", True, FEATS).dev.fast_path_active
    monkeypatch.delenv("REFVM_BLK_FASTPATH")
    mem = GuestMemory()
    mem.add_ram(0, 2 * REGION)
    clock = RealtimeClock()
    for props in ({"cache": "none"}, {"throttling.iops-total": "1000"}):
        drive = open_drive("d0", {"file": str(base_image / "base.img"), "format": "raw", **props}, clock=clock)
        dev = VirtioBlk.create(mem, {"drive": "d0"}, drives={"d0": drive})
        drv = SplitDriver(mem, QSIZE)
        assert bring_up(dev, FEATS, configure=drv.configure)
        assert not dev.fast_path_active, props
        drive.close()
    drive = open_drive("d0", {"file": str(base_image / "base.img"), "format": "raw"}, clock=clock)
    dev = VirtioBlk.create(mem, {"drive": "d0"}, drives={"d0": drive})
    assert bring_up(dev, FEATS, configure=SplitDriver(mem, QSIZE).configure)
    assert dev.fast_path_active
    mem.start_dirty_log()
    assert not dev.fast_path_active  # a migration logs: the C side marks nothing, so Python serves
    mem.stop_dirty_log()
    assert dev.fast_path_active
    drive.close()
    assert not dev.fast_path_active


# ---------------------------------------------------------------------------------------------- generated streams
reqs = st.builds(
    Req,
    rtype=st.one_of(st.sampled_from([B.T_IN, B.T_OUT]), st.sampled_from([B.T_IN, B.T_OUT, B.T_IN | B.T_BARRIER,
                                                                          B.T_OUT | B.T_BARRIER]),
                    st.sampled_from([B.T_FLUSH, B.T_GET_ID, B.T_DISCARD, B.T_WRITE_ZEROES, 2, 5]),
                    st.integers(0, 2**32 - 1)),
    sector=st.one_of(st.integers(0, 64), st.integers(0, CAP - 128),
                     st.sampled_from([CAP - 8, CAP - 1, CAP, CAP + 1, 2**63, 2**64 - 1])),
    size=st.one_of(st.sampled_from([512, 1024, 4096, 8192]), st.sampled_from([512, 2048, 65536]),
                   st.integers(0, 4200)),
    hdr_split=st.sampled_from([16, 16, 16, 8, 4, 15]),
    segs=st.integers(1, 4),
    status=st.sampled_from(["own"] * 20 + ["merged"] * 4 + ["none", "zero", "wide"]),
    indirect=st.sampled_from([False, False, False, True]),
    mutation=st.sampled_from([None] * 48 + ["outside", "cross", "next_oob", "loop", "rw_order", "zero_seg",
                                            "short_hdr", "huge_indirect"]),
)
batches = st.lists(
    st.builds(Batch, reqs=st.lists(reqs, min_size=1, max_size=4), used_event=st.integers(0, 4),
              no_interrupt=st.booleans(), wce=st.one_of(st.none(), st.none(), st.booleans())),
    min_size=1, max_size=6,
)


@settings(max_examples=int(os.environ.get("REFVM_FUZZ_EXAMPLES", "60")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(stream=batches, feats=st.sampled_from([0, EVENT_IDX, INDIRECT, EVENT_IDX | INDIRECT]))
def test_generated_streams_match_the_python_model(base_image: Path, stream: list[Batch], feats: int) -> None:
    for name in ("fast.img", "slow.img"):
        (base_image / name).unlink(missing_ok=True)
    fast, slow = twins(base_image, FEATS | feats)
    for tw in (fast, slow):
        run_stream(tw, stream)
    assert_same(fast, slow)
    served = fast.dev.fast_requests_served
    event(f"compiled path served {'0' if not served else '1-2' if served < 3 else '3+'}; "
          f"{'NEEDS_RESET' if fast.dev.error else 'no driver error'}")


def test_a_dirty_log_started_during_a_call_loses_no_write(base_image: Path) -> None:
    """A migration that starts logging while the C side runs (it marks nothing itself): the pages it wrote
    must still be sent again, so every RAM page counts as dirty after that call."""
    tw = make_twin(base_image, "fast", True, FEATS)
    fast = tw.dev._fast
    real = fast._serve

    def serve_while_logging_starts(*args: object) -> int:
        tw.mem.start_dirty_log()  # as if the migration thread started the log right now
        return real(*args)

    fast._serve = serve_while_logging_starts
    run_stream(tw, [Batch([Req(B.T_IN, 1, 4096)])])
    assert tw.dev.fast_requests_served == 1
    data, used = layout(Req(B.T_IN, 1, 4096), 0)[1][0], tw.drv.used
    dirty = tw.mem.take_dirty()
    assert {data & ~0xFFF, used & ~0xFFF} <= dirty and len(dirty) == 2 * REGION // 4096


def test_resize_moves_the_compiled_path_s_end_of_disk(base_image: Path) -> None:
    """block_resize: the C side's capacity follows the device's (5.2.4), growing and shrinking."""
    mem = GuestMemory()
    mem.add_ram(0, 2 * REGION)
    drive = open_drive("d0", {"file": str(base_image / "base.img"), "format": "raw"}, clock=RealtimeClock())
    dev = VirtioBlk.create(mem, {"drive": "d0", "queue-size": str(QSIZE)}, drives={"d0": drive})
    tw = Twin(mem, base_image / "base.img", dev, SplitDriver(mem, QSIZE))
    assert bring_up(dev, FEATS, configure=tw.drv.configure)

    def read_status(sector: int) -> int:
        run_stream(tw, [Batch([Req(B.T_IN, sector, 512)])])
        return mem.read_u8([a + n - 1 for a, n, w in layout(Req(B.T_IN, sector, 512), 0) if w][-1])

    assert read_status(CAP) == B.S_IOERR and dev.fast_requests_served == 0
    drive.resize(2 * CAP * 512)
    dev.capacity_changed()
    assert read_status(CAP) == B.S_OK and dev.fast_requests_served == 1
    drive.resize(CAP * 512 // 2)
    dev.capacity_changed()
    assert read_status(CAP // 2) == B.S_IOERR and dev.fast_requests_served == 1
    assert read_status(CAP // 2 - 1) == B.S_OK and dev.fast_requests_served == 2
    drive.close()


def test_without_a_compiler_virtio_blk_runs_on_python(base_image: Path, tmp_path: Path) -> None:
    """No compiler (CC=/bin/false) and an empty cache: the build fails quietly and requests still complete."""
    script = f"""
import struct, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_virtio_helpers import MODERN, SplitDriver, bring_up, make_mem
from refvm.block import RawFile
from refvm.virtio.devices import blk_fast_build
from refvm.virtio.devices.blk import VirtioBlk
mem = make_mem()
dev = VirtioBlk.create(mem, {{"drive": "d0"}}, drives={{"d0": RawFile({str(base_image / "base.img")!r})}})
drv = SplitDriver(mem, 8)
assert bring_up(dev, MODERN, configure=drv.configure)
mem.write(0x1000, struct.pack("<IIQ", 0, 0, 1))
drv.chain(0, [(0x1000, 16, False), (0x2000, 512, True), (0x3000, 1, True)])
drv.publish(0)
dev.queue_notify(0)
assert mem.read_u8(0x3000) == 0 and drv.used_elem(0) == (0, 513) and not dev.fast_path_active
print("python-model", blk_fast_build.load_error())
"""
    env = {**os.environ, "CC": "/bin/false", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).parent.parent)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("python-model ") and "CompileError" in done.stdout
    assert not done.stderr.strip(), done.stderr  # quiet: one debug line, which nothing prints by default
