"""A/B of the KVM fast path: the probe guest's `blk bench N SIZE` on refvm with ioeventfd notifies handled
on the IoThread, and with ``REFVM_NO_FASTPATH=1`` (every notify an MMIO exit handled on the vCPU thread).

Same disk, alternating runs, one VM at a time (Firecracker-style A/B, no stored baseline). Host wall time of
the command is reported as requests/s, plus the guest's TSC delta; the ratio is fast / slow.

Usage: python bench/virtio_notify.py [--n 500] [--size 4096] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from conformance.drivers.console import SerialConsole  # noqa: E402
from conformance.drivers.guests import probe_elf  # noqa: E402

RUNNER = Path(__file__).resolve().parent.parent / "tests" / "fastpath_runner.py"
BENCH_LINE = re.compile(r"^bench: (\d+) reads of (\d+) bytes, tsc (\d+)$", re.M)


def boot(kernel: Path, disk: Path, fast: bool) -> SerialConsole:
    env_key = "REFVM_NO_FASTPATH"
    if fast:
        os.environ.pop(env_key, None)
    else:
        os.environ[env_key] = "1"
    argv = [
        sys.executable, str(RUNNER), "-watchdog-timeout", "600", "-display", "none", "-serial", "stdio",
        "-nodefaults", "-no-reboot", "-kernel", str(kernel),
        "-drive", f"if=none,id=d0,file={disk},format=raw", "-device", "virtio-blk-pci,drive=d0,disable-legacy=on",
    ]  # fmt: skip
    con = SerialConsole(argv, timeout=600, name="fast" if fast else "slow")
    con.wait_prompt()
    con.command("pciassign")
    con.command("blk bench 8 4096")  # warm-up (driver init, first exits)
    return con


def run_bench(con: SerialConsole, n: int, size: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    out = con.command(f"blk bench {n} {size}")
    seconds = time.perf_counter() - t0
    m = BENCH_LINE.search(out)
    if m is None or int(m.group(1)) != n:
        raise RuntimeError(f"blk bench failed:\n{out}")
    return seconds, int(m.group(3))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    kernel = probe_elf()
    with tempfile.TemporaryDirectory() as tmp:
        disk = Path(tmp) / "disk.raw"
        disk.write_bytes(bytes(64 << 20))
        samples: dict[str, list[tuple[float, int]]] = {"fast": [], "slow": []}
        # One VM at a time: an idle probe polls its serial port and would eat one of the host's cores.
        for _ in range(args.runs):
            for label in ("fast", "slow"):
                con = boot(kernel, disk, label == "fast")
                try:
                    samples[label].append(run_bench(con, args.n, args.size))
                finally:
                    con.close()
    rates = {}
    for label, runs in samples.items():
        secs = statistics.median(s for s, _ in runs)
        tsc = statistics.median(t for _, t in runs)
        rates[label] = args.n / secs
        print(f"{label:5s} {args.n} x {args.size} B: {secs:.3f} s median, {rates[label]:8.0f} req/s, guest tsc {tsc}")
    print(f"ratio fast/slow: {rates['fast'] / rates['slow']:.2f}")


if __name__ == "__main__":
    main()
