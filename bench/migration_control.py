"""Total time of a 256 MiB guest's live migration between two refvmd daemons, for each combination of control
path (direct: virsh drives both daemons; p2p: the source daemon drives the destination) and data path (native:
VMM to VMM over tcp; tunnelled: through both daemons as a libvirt stream), printed as ratios to direct-native.
Direct-tunnelled does not exist (libvirt refuses it), so three combinations are timed.

The probe guest (QEMU TCG by default, --driver refvm for refvm under KVM) writes a seeded pattern over
--fill-mib of its RAM first, so the stream carries real pages, not only zero pages; the time is the wall
time of `virsh migrate --live [--p2p [--tunnelled]]`, from the command's start to its exit, with the
migration speed unlimited. The guest's pattern is checked on the destination after every run. Runs
alternate the combinations; the median of --runs is reported.

Usage: python bench/migration_control.py [--runs 3] [--mib 256] [--fill-mib 192] [--driver qemu|refvm]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.mgmt_daemon import Refvmd  # noqa: E402
from tests.test_mgmt_migration import console  # noqa: E402

PROBE = ROOT / "guests" / "probe" / "build" / "probe.elf"
COMBINATIONS = {"direct-native": [], "p2p-native": ["--p2p"], "p2p-tunnelled": ["--p2p", "--tunnelled"]}
FILL_START = 0x1000000  # above the probe's own image and buffers


class _Side:
    """One daemon and a libvirt connection to it (console() reads the domain's pty from ``conn``)."""

    def __init__(self, libvirt, tmp: Path, driver: str) -> None:
        tmp.mkdir()
        self.daemon = Refvmd(tmp)
        self.daemon.start()
        self.uri = self.daemon.uri.replace("refvm+unix", f"{driver}+unix")
        self.conn = libvirt.open(self.uri)


def guest_xml(shared: Path, mib: int, driver: str) -> str:
    disk = shared / "bench.img"
    disk.write_bytes(b"\0" * (1 << 20))
    return (f"<domain type='{'kvm' if driver == 'refvm' else 'qemu'}'><name>bench</name>"
            f"<memory unit='MiB'>{mib}</memory><os><type>hvm</type><kernel>{PROBE}</kernel></os><devices>"
            f"<disk type='file'><driver name='qemu' type='raw'/><source file='{disk}'/><target dev='vda' "
            "bus='virtio'/></disk><serial type='pty'/><console type='pty'/></devices></domain>")


def one_run(src: _Side, dst: _Side, xml: str, flags: list[str], fill: str) -> float:
    """Seconds of one `virsh migrate`; the pattern is checked on the destination."""
    src.conn.createXML(xml, 0)
    assert "bytes written" in console(src, "bench", f"pattern fill {fill}")
    t0 = time.perf_counter()
    out = subprocess.run(["virsh", "-c", src.uri, "migrate", "--live", *flags, "bench", dst.uri],
                         capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"migrate {' '.join(flags)} failed: {out.stderr.strip()}")
    result = console(dst, "bench", f"pattern check {fill}")
    dst.conn.lookupByName("bench").destroy()
    if "bytes ok" not in result:
        raise SystemExit(f"the pattern did not arrive intact ({' '.join(flags)}): {result}")
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--mib", type=int, default=256, help="guest RAM in MiB")
    ap.add_argument("--fill-mib", type=int, default=192, help="MiB of guest RAM written before migrating")
    ap.add_argument("--driver", choices=("qemu", "refvm"), default="qemu")
    args = ap.parse_args()
    if args.fill_mib + FILL_START // (1 << 20) > args.mib:
        ap.error(f"--fill-mib must leave the first {FILL_START >> 20} MiB of --mib to the probe")
    import libvirt

    libvirt.registerErrorHandler(lambda ctx, err: None, None)
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    fill = f"{FILL_START:#x} {args.fill_mib << 20:#x} 99"
    times: dict[str, list[float]] = {name: [] for name in COMBINATIONS}
    with tempfile.TemporaryDirectory(prefix="bench-migration-") as tmp:
        sides = [_Side(libvirt, Path(tmp) / name, args.driver) for name in ("a", "b")]
        try:
            xml = guest_xml(Path(tmp), args.mib, args.driver)
            for i in range(args.runs):
                for name, flags in COMBINATIONS.items():
                    src, dst = sides[i % 2], sides[1 - i % 2]  # alternate directions too
                    times[name].append(one_run(src, dst, xml, flags, fill))
                    print(f"run {i + 1} {name}: {times[name][-1]:.2f} s", flush=True)
        finally:
            for side in sides:
                side.conn.close()
                side.daemon.stop()
    base = statistics.median(times["direct-native"])
    print(f"\n{args.mib} MiB guest ({args.fill_mib} MiB written), {args.driver} driver, median of {args.runs}:")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"  {name:14s} {med:7.2f} s   ratio to direct-native {med / base:5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
