"""qcow2 throughput: refvm's qcow2 driver (in-process) against qemu-io on identical images, in one run.

Three workloads on a fresh qcow2 image (64 KiB clusters) of --size bytes:
  seq-write  1 MiB writes from 0 to the end (every cluster gets allocated)
  seq-read   1 MiB reads of the whole image
  rand-read  --ops 4 KiB reads at random 4 KiB-aligned offsets (same offsets on both sides)
qemu-io gets the same requests as one ``-c`` command each (``-q``, ``-t unsafe`` so that its exit flush
does not count); its time is the process's wall time minus the wall time of an idle qemu-io on the same
image (start, open, close). Runs alternate refvm / qemu-io and the median of --runs is reported, with
refvm/qemu-io ratios (> 1 means refvm is faster). Goal: >= 0.9 on the sequential workloads.
qemu-io pays ~1 ms per command of its own (buffer allocation and pattern fill), so the same requests are also
run through ``qemu-img bench`` (depth 1, it times itself): the stricter peer, QEMU's block layer alone. Goal
(issue 15): seq-write >= 0.8x and seq-read >= 1.0x qemu-img bench.
What each side does is the same: a fresh image made by the same code, 1 MiB requests from offset 0 to the
end, one at a time (queue depth 1), host page cache on and no flush (``-t unsafe`` is cache.writeback=on,
direct=off, no-flush=on; refvm opens the file buffered and never flushes), open and close not timed. refvm
reads with ``preadv_into`` into one reused buffer -- the path virtio-blk takes into guest RAM -- as qemu-img
bench reads into one reused buffer. Where they differ, refvm pays more: it writes each request's refcount
update at once, where QEMU keeps it in its metadata cache until close (untimed); both keep L2 entries for the
write-back at close (untimed). rand-read on the
qemu-img bench side walks a fixed stride (``-S``), not the random offsets refvm and qemu-io use.
The load average is printed beside the result: the host is shared, and the ratios drift with it. The image is
1 GiB by default because qemu-img bench prints its time in whole milliseconds: a 256 MiB read pass takes
~30 ms here, so its ratio would move in 3% steps.

Usage: python bench/block.py [--size 1G] [--ops 5000] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from refvm.block.driver import open_image  # noqa: E402
from refvm.block.img import parse_size  # noqa: E402
from refvm.block.qcow2 import create_qcow2  # noqa: E402

MIB = 1 << 20


def _qemu_io(path: Path, commands: list[str]) -> float:
    argv = ["qemu-io", "-f", "qcow2", "-t", "unsafe"]
    for c in commands:
        argv += ["-c", c]
    t0 = time.perf_counter()
    subprocess.run([*argv, str(path)], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def qemu_side(path: Path, size: int, offsets: list[int]) -> dict[str, float]:
    create_qcow2(str(path), size)
    idle = min(_qemu_io(path, ["read -q 0 512"]) for _ in range(3))
    out = {"seq-write": _qemu_io(path, [f"write -q -P 0xab {o} 1M" for o in range(0, size, MIB)]) - idle}
    out["seq-read"] = _qemu_io(path, [f"read -q {o} 1M" for o in range(0, size, MIB)]) - idle
    out["rand-read"] = _qemu_io(path, [f"read -q {o} 4k" for o in offsets]) - idle
    return out


def _bench(path: Path, *args: str) -> float:
    out = subprocess.run(
        ["qemu-img", "bench", "-t", "unsafe", "-d", "1", *args, str(path)], check=True, capture_output=True, text=True
    ).stdout
    m = re.search(r"Run completed in ([0-9.]+) seconds", out)
    if not m:
        raise RuntimeError(f"unexpected qemu-img bench output: {out!r}")
    return float(m.group(1))


def bench_side(path: Path, size: int, offsets: list[int]) -> dict[str, float]:
    """qemu-img bench: QEMU's block layer without qemu-io's per-command cost (it times itself)."""
    create_qcow2(str(path), size)
    n = size // MIB
    out = {"seq-write": _bench(path, "-w", "--pattern=171", "-s", "1M", "-c", str(n))}
    out["seq-read"] = _bench(path, "-s", "1M", "-c", str(n))
    out["rand-read"] = _bench(path, "-s", "4k", "-S", str(4096 * 9973), "-c", str(len(offsets)))
    return out


def refvm_side(path: Path, size: int, offsets: list[int]) -> dict[str, float]:
    create_qcow2(str(path), size)
    chunk = b"\xab" * MIB
    out = {}
    img = open_image(str(path), "qcow2")
    t0 = time.perf_counter()
    for o in range(0, size, MIB):
        img.write(o, chunk)
    out["seq-write"] = time.perf_counter() - t0
    img.close()
    img = open_image(str(path), "qcow2", readonly=True)
    # reads land in one reused buffer, as virtio-blk's land in guest RAM (qemu-img bench reuses its buffer too)
    buf = [memoryview(bytearray(MIB))]
    t0 = time.perf_counter()
    for o in range(0, size, MIB):
        img.preadv_into(o, buf)
    out["seq-read"] = time.perf_counter() - t0
    small = [buf[0][:4096]]
    t0 = time.perf_counter()
    for o in offsets:
        img.preadv_into(o, small)
    out["rand-read"] = time.perf_counter() - t0
    img.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1G")
    ap.add_argument("--ops", type=int, default=5000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    if shutil.which("qemu-io") is None:
        print("bench/block.py: qemu-io not found (apt-get install qemu-utils)", file=sys.stderr)
        return 1
    size = parse_size(args.size)
    rnd = random.Random(42)
    offsets = [rnd.randrange(size // 4096) * 4096 for _ in range(args.ops)]
    load0 = " ".join(f"{x:.2f}" for x in os.getloadavg())
    runs: dict[str, dict[str, list[float]]] = {"refvm": {}, "qemu-io": {}, "qemu-img bench": {}}
    with tempfile.TemporaryDirectory(prefix="refvm-bench-") as tmp:
        for _ in range(args.runs):
            for name, fn in (("refvm", refvm_side), ("qemu-io", qemu_side), ("qemu-img bench", bench_side)):
                path = Path(tmp) / f"{name}.qcow2"
                for k, v in fn(path, size, offsets).items():
                    runs[name].setdefault(k, []).append(v)
                path.unlink()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"qcow2, {size // MIB} MiB image, 64 KiB clusters, median of {args.runs} runs")
    print(f"load average before: {load0}, after: {load}")
    print(f"{'workload':<11} {'refvm':>14} {'qemu-io':>14} {'ratio':>6} {'qemu-img bench':>15} {'ratio':>6}")
    for k in ("seq-write", "seq-read", "rand-read"):
        r = statistics.median(runs["refvm"][k])
        q = statistics.median(runs["qemu-io"][k])
        b = statistics.median(runs["qemu-img bench"][k])
        work, unit = (args.ops, "IOPS") if k == "rand-read" else (size / MIB, "MB/s")
        rv, qv, bv = work / r, work / q, work / b
        print(f"{k:<11} {rv:>9.0f} {unit} {qv:>9.0f} {unit} {rv / qv:>6.2f} {bv:>10.0f} {unit} {rv / bv:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
