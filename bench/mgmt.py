"""Management-layer cycle time: refvmd + refvm against libvirtd (qemu:///system) + QEMU, in one run.

One cycle, through libvirt-python on both sides: defineXML, create, destroy, undefine of the probe guest
(32 MiB, one vCPU, a serial pty, -kernel). refvmd is started here on a private socket and state directory;
libvirtd is used if it already listens on /run/libvirt/libvirt-sock, else started as the issue's notes say
(`chgrp kvm /dev/kvm; chmod 660 /dev/kvm`, `virtlogd -d`, `libvirtd -d`) and stopped again at the end.
Runs alternate refvmd / libvirtd; the median of --runs is reported with the ratio refvmd/libvirtd (< 1 means
refvmd is faster). Goal: <= 0.5.

Usage: python bench/mgmt.py [--runs 5]
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.mgmt_daemon import Refvmd  # noqa: E402

PROBE = ROOT / "guests" / "probe" / "build" / "probe.elf"
LIBVIRT_SOCK = Path("/run/libvirt/libvirt-sock")


def domain_xml(name: str, dom_type: str) -> str:
    return (f"<domain type='{dom_type}'><name>{name}</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>"
            "<cpu check='none'/>"
            f"<os><type arch='x86_64'>hvm</type><kernel>{PROBE}</kernel></os>"
            "<devices><serial type='pty'/><memballoon model='none'/></devices></domain>")


def cycle(conn, xml: str) -> float:
    """Seconds for define + start + destroy + undefine."""
    start = time.perf_counter()
    dom = conn.defineXML(xml)
    dom.create()
    dom.destroy()
    dom.undefine()
    return time.perf_counter() - start


def _listening(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


def ensure_libvirtd() -> list[int]:
    """Start virtlogd and libvirtd unless libvirtd already listens; returns the pids this started."""
    if _listening(LIBVIRT_SOCK):
        return []
    for tool in ("virtlogd", "libvirtd"):
        if shutil.which(tool) is None:
            sys.exit(f"bench/mgmt.py: {tool} not found (apt-get install libvirt-daemon-system)")
    subprocess.run(["chgrp", "kvm", "/dev/kvm"], check=False)
    os.chmod("/dev/kvm", 0o660)
    started = []
    for tool in ("virtlogd", "libvirtd"):
        proc = subprocess.Popen([tool], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append(proc.pid)
    deadline = time.monotonic() + 60
    while not _listening(LIBVIRT_SOCK):
        if time.monotonic() > deadline:
            sys.exit("bench/mgmt.py: libvirtd did not start listening")
        time.sleep(0.2)
    return started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    import libvirt

    libvirt.registerErrorHandler(lambda ctx, err: None, None)
    if not PROBE.exists():
        sys.exit(f"bench/mgmt.py: {PROBE} not built (make -C guests/probe)")
    started = ensure_libvirtd()
    with tempfile.TemporaryDirectory(prefix="bench-mgmt-") as tmp:
        daemon = Refvmd(Path(tmp))
        daemon.start()
        try:
            ours, theirs = libvirt.open(daemon.uri), libvirt.open("qemu:///system")
            cycle(ours, domain_xml("bench-refvm", "kvm"))  # warm-up: imports, first process start
            times: dict[str, list[float]] = {"refvmd+refvm": [], "libvirtd+qemu": []}
            for _ in range(args.runs):
                times["refvmd+refvm"].append(cycle(ours, domain_xml("bench-refvm", "kvm")))
                times["libvirtd+qemu"].append(cycle(theirs, domain_xml("bench-qemu", "kvm")))
            ours.close()
            theirs.close()
        finally:
            daemon.stop()
            for pid in started:
                os.kill(pid, 15)
    med = {k: statistics.median(v) for k, v in times.items()}
    for name, value in med.items():
        print(f"{name:15s} define+start+destroy+undefine  median {value * 1000:8.1f} ms  ({args.runs} runs)")
    ratio = med["refvmd+refvm"] / med["libvirtd+qemu"]
    print(f"ratio refvmd/libvirtd {ratio:.3f} (goal <= 0.5: {'met' if ratio <= 0.5 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
