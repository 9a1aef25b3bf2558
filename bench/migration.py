"""Live migration benchmark: total time and downtime of a probe guest that keeps dirtying its RAM, refvm vs QEMU.

For each RAM size (256 MiB and 1 GiB by default) and each VMM, a source boots the probe guest and a destination
waits with `-incoming unix:PATH`; the guest runs `dirty START LEN 0` (a word into every page of LEN bytes, round
after round, until a byte arrives on its serial port) and the source migrates while it runs, with the same
`downtime-limit` and `max-bandwidth` on both.  The numbers are QMP query-migrate's own `total-time` and
`downtime` (ms) on the source, so each VMM measures itself the way QEMU defines them; the destination's guest
must then stop its loop and answer at its prompt (the run counts only if it does).  refvm runs `-accel kvm` (here
kvm-pvm, a software KVM: the guest's page writes fault into it), QEMU `-accel tcg` (its dirty tracking is the
TCG softmmu's); the dirtying rate therefore differs between them: the same workload, not the same rate.

Goals (issue 9): downtime no longer than QEMU's (ratio <= 1.0); total time at most 1.5x QEMU's.

    python bench/migration.py [--sizes 256,1024] [--runs 1] [--dirty-mib 16]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conformance.drivers.console import SerialConsole  # noqa: E402
from conformance.drivers.guests import probe_elf  # noqa: E402
from conformance.targets import qemu_target, refvm_target  # noqa: E402
from refvm.mgmt.qmp_client import QmpClient  # noqa: E402

DIRTY_START = 16 << 20  # the dirtied range starts at 16 MiB (above the probe image and its DMA buffers)
DOWNTIME_LIMIT_MS = 300  # QEMU 7.2's default
MAX_BANDWIDTH = 128 << 20  # QEMU 7.2's default max-bandwidth (bytes/s)


def _qmp(path: Path) -> QmpClient:
    client = QmpClient(str(path), lambda *_: None)
    client.connect(timeout=60)
    return client


def migrate_once(vmm: list[str], ram_mib: int, dirty_mib: int, tmp: Path) -> dict[str, float]:
    """One migration of a dirtying guest; query-migrate's figures on the source."""
    kernel = str(probe_elf())
    common = ["-nodefaults", "-display", "none", "-serial", "stdio", "-m", str(ram_mib), "-kernel", kernel]
    sock = tmp / "mig.sock"
    dst = SerialConsole([*vmm, *common, "-qmp", f"unix:{tmp / 'dst.qmp'},server=on,wait=off",
                         "-incoming", f"unix:{sock}"], timeout=300, name="destination")
    src = SerialConsole([*vmm, *common, "-qmp", f"unix:{tmp / 'src.qmp'},server=on,wait=off"],
                        timeout=300, name="source")
    clients: list[QmpClient] = []
    try:
        src.wait_prompt()
        clients += [_qmp(tmp / "src.qmp"), _qmp(tmp / "dst.qmp")]
        qsrc = clients[0]
        qsrc.execute("migrate-set-parameters", {"downtime-limit": DOWNTIME_LIMIT_MS, "max-bandwidth": MAX_BANDWIDTH})
        src.send(f"dirty {DIRTY_START:#x} {dirty_mib << 20:#x} 0\r")
        src.expect(f"dirty {DIRTY_START:#x}")
        time.sleep(0.5)  # the loop is running
        qsrc.execute("migrate", {"uri": f"unix:{sock}"})
        deadline = time.monotonic() + 600
        while (info := qsrc.execute("query-migrate"))["status"] not in ("completed", "failed"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"migration did not complete: {info}")
            time.sleep(0.05)
        if info["status"] != "completed":
            raise RuntimeError(f"migration failed: {info}")
        while clients[1].execute("query-migrate").get("status") != "completed":  # loaded: a byte sent before
            if time.monotonic() > deadline:  # that would be lost when the UART's state is loaded
                raise RuntimeError("the destination did not finish loading")
            time.sleep(0.05)
        dst.send("\r")  # ends the guest's loop on the destination
        out = dst.expect("probe> ")
        if "dirty: " not in out:
            raise RuntimeError(f"the guest did not carry on on the destination: {out!r}")
        ram = info["ram"]
        return {"total": info["total-time"], "downtime": info["downtime"], "passes": ram["dirty-sync-count"],
                "mib": ram["transferred"] / (1 << 20)}
    finally:
        for c in clients:
            c.close()
        src.close()
        dst.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="256,1024", help="guest RAM sizes in MiB (default 256,1024)")
    parser.add_argument("--runs", type=int, default=1, help="migrations per VMM and size (median; default 1)")
    parser.add_argument("--dirty-mib", type=int, default=16, help="MiB the guest keeps dirtying (default 16)")
    args = parser.parse_args()
    refvm = refvm_target()
    vmms = {"refvm (kvm)": [*refvm.binary, "-accel", "kvm", "-watchdog-timeout", "900"],
            "qemu (tcg)": [*qemu_target().binary, "-accel", "tcg"]}
    print(f"dirtying {args.dirty_mib} MiB from {DIRTY_START >> 20} MiB on; downtime-limit {DOWNTIME_LIMIT_MS} ms, "
          f"max-bandwidth {MAX_BANDWIDTH >> 20} MiB/s; query-migrate on the source; median of {args.runs}", flush=True)
    for size in (int(s) for s in args.sizes.split(",")):
        med: dict[str, dict[str, float]] = {}
        for name, vmm in vmms.items():
            runs = []
            for _ in range(args.runs):
                with tempfile.TemporaryDirectory(prefix="refvm-mig-bench-") as tmp:
                    runs.append(migrate_once(vmm, size, args.dirty_mib, Path(tmp)))
            med[name] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            m = med[name]
            print(f"{size:5d} MiB {name:12s} total {m['total']:8.0f} ms  downtime {m['downtime']:6.0f} ms  "
                  f"passes {m['passes']:3.0f}  sent {m['mib']:7.1f} MiB   runs: "
                  + ", ".join(f"{r['total']:.0f}/{r['downtime']:.0f}" for r in runs), flush=True)
        ours, theirs = med["refvm (kvm)"], med["qemu (tcg)"]
        print(f"{size:5d} MiB ratio refvm/qemu: total {ours['total'] / max(theirs['total'], 1):.2f} (goal <= 1.5)  "
              f"downtime {ours['downtime'] / max(theirs['downtime'], 1):.2f} (goal <= 1.0)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
