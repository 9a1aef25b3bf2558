"""virtio-blk device-model time per request, in process: no vCPU, no exits, only refvm's Python.

A real :class:`~refvm.memory.GuestMemory`, a real raw image opened as a ``-drive`` (cache=writeback, no
throttle group), a :class:`~refvm.virtio.devices.blk.VirtioBlk` on a split queue of 256 with EVENT_IDX,
and the driver side of the ring from ``tests/test_virtio_helpers.py``. Each request is the probe guest's
layout (16-byte header, one data buffer, one status byte) made available and notified on its own, so
the time is what one notify exit costs inside refvm: pop, descriptor walk, I/O, status, used ring,
interrupt decision. The available ring entries of a batch are written before it is timed; in the timed
loop the driver only stores the new avail idx (one 2-byte store into RAM, timed separately and
subtracted) and notifies. Times are the vCPU-side thread's CPU time (``time.thread_time``), fastest batch
of 128 per run, median over runs: on a CPU shared with other work, wall time mostly measures the neighbours.

Both device-model paths are measured: ``compiled`` (virtio-blk's C fast path, refvm/virtio/devices/blk_fast.c,
the default) and ``python`` (``x-fastpath=off``: the Python model, the reference). ``--path`` picks one.

This is the number the issue's "device-model time per 4 KiB request" goal is about; ``bench/virtio_blk.py``
measures the whole guest round trip against QEMU.

Usage: python bench/virtio_blk_model.py [--n 20000] [--runs 5] [--path compiled|python|both]
"""

from __future__ import annotations

import argparse
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from refvm.block.drive import open_drive  # noqa: E402
from refvm.clock import RealtimeClock  # noqa: E402
from refvm.virtio import features as F  # noqa: E402
from refvm.virtio.devices.blk import VirtioBlk  # noqa: E402
from tests.test_virtio_helpers import SplitDriver, bring_up, make_mem  # noqa: E402

HDR, DATA, STATUS = 0x100000, 0x200000, 0x180000
BATCH = 128  # requests per timed batch (<= the queue size); a run reports its fastest batch (least disturbed)
_U16 = struct.Struct("<H")


def run(size: int, write: bool, n: int, disk: Path, compiled: bool) -> float:
    """µs of device model per request: the fastest batch of the run, in thread CPU time."""
    mem = make_mem(16 << 20)
    drive = open_drive("d0", {"file": str(disk), "format": "raw"}, clock=RealtimeClock())
    dev = VirtioBlk(mem, drive, fastpath=compiled)
    drv = SplitDriver(mem, 256)
    feats = F.bit(F.VIRTIO_F_VERSION_1) | F.bit(F.VIRTIO_F_RING_EVENT_IDX) | 1 << 9  # FLUSH: writeback cache
    assert bring_up(dev, feats, configure=drv.configure)
    mem.write(HDR, struct.pack("<IIQ", 1 if write else 0, 0, 8))
    drv.chain(0, [(HDR, 16, False), (DATA, size, not write), (STATUS, 1, True)])
    assert dev.fast_path_active == compiled, "the compiled path is not available here"
    notify = dev.queue_notify
    ram = mem.regions[0].view
    idx_at = drv.avail + 2
    store = _U16.pack_into
    clock = time.thread_time  # CPU time of this thread: other processes on a shared CPU do not count
    best = float("inf")
    batches = max(1, n // BATCH)
    for _ in range(batches):
        base = drv.idx
        drv.publish(*([0] * BATCH), bump=False)  # the ring entries, untimed
        idxs = [(base + i) & 0xFFFF for i in range(1, BATCH + 1)]
        t0 = clock()
        for i in idxs:
            store(ram, idx_at, i)
        t_drv = clock() - t0
        store(ram, idx_at, base)  # rewind: the device has not seen these yet
        t0 = clock()
        for i in idxs:
            store(ram, idx_at, i)
            notify(0)
        best = min(best, (clock() - t0 - t_drv) / BATCH)
    assert dev.error is None and mem.read_u8(STATUS) == 0 and drv.used_idx() == drv.idx, dev.error
    assert dev.fast_requests_served == (batches * BATCH if compiled else 0)
    drive.close()
    mem.close()
    return best * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--path", choices=("compiled", "python", "both"), default="both")
    args = ap.parse_args()
    paths = [p for p in ("compiled", "python") if args.path in (p, "both")]
    with tempfile.TemporaryDirectory() as tmp:
        disk = Path(tmp) / "disk.raw"
        with open(disk, "wb") as f:
            f.truncate(64 << 20)
        print(f"virtio-blk device model, in process, N={args.n} requests per run, median of {args.runs}")
        for path in paths:
            for write in (False, True):
                for size in (4096, 65536):
                    times = [run(size, write, args.n, disk, path == "compiled") for _ in range(args.runs)]
                    med = statistics.median(times)
                    print(f"  {path:8s} {'write' if write else 'read ':5s} {size:6d} B: {med:6.1f} µs/request "
                          f"(runs: {', '.join(f'{t:.1f}' for t in times)})")


if __name__ == "__main__":
    main()
