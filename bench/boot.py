"""Boot-time benchmark: process start to the probe guest's `probe> ` prompt, refvm vs QEMU.

Runs every contender several times in the same process and prints medians and the ratios
refvm/QEMU-kvm and refvm/QEMU-tcg (goal: <= 1.0 against both). A ratio against a peer measured in the
same run, not a stored number, is what we compare: machines differ, ratios travel.

    python bench/boot.py [--runs N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conformance.drivers.console import SerialConsole  # noqa: E402
from conformance.drivers.guests import probe_elf  # noqa: E402
from conformance.targets import DEBUG_EXIT, qemu_target, refvm_target  # noqa: E402

COMMON = ["-nodefaults", "-display", "none", "-serial", "stdio", *DEBUG_EXIT]


def time_to_prompt(argv: list[str]) -> float:
    start = time.monotonic()
    con = SerialConsole(argv, timeout=120)
    try:
        con.wait_prompt()
        elapsed = time.monotonic() - start
        con.send("exit 0\r")
        con.wait_exit(timeout=30)
    finally:
        con.close()
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="runs per contender (default 5)")
    parser.add_argument("--kvm-runs", type=int, default=3, help="runs of QEMU -accel kvm (slow here)")
    args = parser.parse_args()
    kernel = str(probe_elf())
    refvm = refvm_target()
    qemu = qemu_target()
    contenders = {
        "refvm (kvm)": (refvm.argv([*COMMON, "-kernel", kernel]), args.runs),
        "qemu (tcg)": ([*qemu.binary, "-accel", "tcg", *COMMON, "-kernel", kernel], args.runs),
        "qemu (kvm)": ([*qemu.binary, "-accel", "kvm", *COMMON, "-kernel", kernel], args.kvm_runs),
    }
    medians: dict[str, float] = {}
    for name, (argv, runs) in contenders.items():
        samples = [time_to_prompt(argv) for _ in range(runs)]
        medians[name] = statistics.median(samples)
        shown = " ".join(f"{s:.3f}" for s in samples)
        print(f"{name:12s} median {medians[name]:.3f} s   runs: {shown}", flush=True)
    ours = medians["refvm (kvm)"]
    print(f"ratio refvm/qemu-kvm = {ours / medians['qemu (kvm)']:.3f}   (goal <= 1.0)")
    print(f"ratio refvm/qemu-tcg = {ours / medians['qemu (tcg)']:.3f}   (goal <= 1.0)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
