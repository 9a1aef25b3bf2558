"""virtio-blk device-model time per request, in process: no vCPU, no exits, only refvm's Python.

A real :class:`~refvm.memory.GuestMemory`, a real raw image opened as a ``-drive`` (cache=writeback, no
throttle group), a :class:`~refvm.virtio.devices.blk.VirtioBlk` on a split queue of 256 with EVENT_IDX,
and the driver side of the ring from ``tests/test_virtio_helpers.py``. Each request is the probe guest's
layout (16-byte header, one data buffer, one status byte) made available and notified on its own, so
the time is what one notify exit costs inside refvm: pop, descriptor walk, I/O, status, used ring,
interrupt decision. Driver-side work (writing the avail entry) is timed separately and subtracted. Times
are the vCPU-side thread's CPU time (``time.thread_time``), fastest batch of 500 per run, median over runs:
on a CPU shared with other work, wall time mostly measures the neighbours.

This is the number the issue's "device-model time per 4 KiB request" goal is about; ``bench/virtio_blk.py``
measures the whole guest round trip against QEMU.

Usage: python bench/virtio_blk_model.py [--n 20000] [--runs 5]
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
BATCH = 500  # requests per timed batch; a run reports its fastest batch (the least disturbed by contention)


def run(size: int, write: bool, n: int, disk: Path) -> float:
    """µs of device model per request: the fastest batch of the run, in thread CPU time."""
    mem = make_mem(16 << 20)
    drive = open_drive("d0", {"file": str(disk), "format": "raw"}, clock=RealtimeClock())
    dev = VirtioBlk(mem, drive)
    drv = SplitDriver(mem, 256)
    feats = F.bit(F.VIRTIO_F_VERSION_1) | F.bit(F.VIRTIO_F_RING_EVENT_IDX) | 1 << 9  # FLUSH: writeback cache
    assert bring_up(dev, feats, configure=drv.configure)
    mem.write(HDR, struct.pack("<IIQ", 1 if write else 0, 0, 8))
    drv.chain(0, [(HDR, 16, False), (DATA, size, not write), (STATUS, 1, True)])
    notify = dev.queue_notify
    publish = drv.publish
    clock = time.thread_time  # CPU time of this thread: other processes on a shared CPU do not count
    best = float("inf")
    for _ in range(max(1, n // BATCH)):
        base = drv.idx
        t0 = clock()
        for _ in range(BATCH):
            publish(0)
        t_drv = clock() - t0
        drv.set_avail_idx(base)  # rewind: the device has not seen these yet
        drv.idx = base
        t0 = clock()
        for _ in range(BATCH):
            publish(0)
            notify(0)
        best = min(best, (clock() - t0 - t_drv) / BATCH)
    assert dev.error is None and mem.read_u8(STATUS) == 0 and drv.used_idx() == drv.idx, dev.error
    drive.close()
    mem.close()
    return best * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        disk = Path(tmp) / "disk.raw"
        with open(disk, "wb") as f:
            f.truncate(64 << 20)
        print(f"virtio-blk device model, in process, N={args.n} requests per run, median of {args.runs}")
        for write in (False, True):
            for size in (4096, 65536):
                times = [run(size, write, args.n, disk) for _ in range(args.runs)]
                med = statistics.median(times)
                print(f"  {'write' if write else 'read ':5s} {size:6d} B: {med:6.1f} µs/request "
                      f"(runs: {', '.join(f'{t:.1f}' for t in times)})")


if __name__ == "__main__":
    main()
