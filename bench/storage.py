"""Volume upload and download throughput of 256 MiB: refvmd against libvirtd (qemu:///system), in one run.

Both through libvirt-python streams (sendAll/recvAll), into a dir pool in a private temporary directory on
each side. libvirtd must already listen on /run/libvirt/libvirt-sock (see bench/mgmt.py for starting it).
Runs alternate refvmd / libvirtd; the median of --runs is printed as MiB/s and the ratio refvmd/libvirtd
(> 1 means refvmd is faster). Goal: >= 1.0.

Usage: python bench/storage.py [--runs 3] [--mib 256]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.mgmt_daemon import Refvmd  # noqa: E402

CHUNK = 256 * 1024


def one_run(libvirt, uri: str, folder: Path, size: int, payload: bytes) -> tuple[float, float]:
    """(upload seconds, download seconds) for one volume of ``size`` bytes."""
    conn = libvirt.open(uri)
    pool = conn.storagePoolCreateXML(f"<pool type='dir'><name>bench-{os.getpid()}</name><target><path>{folder}"
                                     "</path></target></pool>", 1)
    try:
        vol = pool.createXML(f"<volume><name>v</name><capacity>{size}</capacity></volume>", 0)
        st = conn.newStream(0)
        t0 = time.perf_counter()
        vol.upload(st, 0, size, 0)
        sent = 0
        while sent < size:
            sent += st.send(payload[:min(CHUNK, size - sent)])
        st.finish()
        up = time.perf_counter() - t0
        st = conn.newStream(0)
        t0 = time.perf_counter()
        vol.download(st, 0, size, 0)
        got = 0
        while True:
            data = st.recv(CHUNK)
            if not data:
                break
            got += len(data)
        st.finish()
        down = time.perf_counter() - t0
        assert got == size, f"downloaded {got} of {size} bytes"
        vol.delete(0)
    finally:
        pool.destroy()
        conn.close()
    return up, down


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--mib", type=int, default=256)
    args = ap.parse_args()
    import libvirt

    libvirt.registerErrorHandler(lambda ctx, err: None, None)
    size = args.mib << 20
    payload = os.urandom(CHUNK)
    with tempfile.TemporaryDirectory(prefix="bench-storage-") as tmp:
        d = Refvmd(Path(tmp))
        d.start()
        results: dict[str, list[tuple[float, float]]] = {"refvmd": [], "libvirtd": []}
        try:
            for i in range(args.runs):
                for name, uri in (("refvmd", d.uri), ("libvirtd", "qemu:///system")):
                    results[name].append(one_run(libvirt, uri, Path(tmp) / f"{name}-{i}", size, payload))
        finally:
            d.stop()
    med = {k: (statistics.median(u for u, _ in v), statistics.median(dn for _, dn in v)) for k, v in results.items()}
    for k, (u, dn) in med.items():
        print(f"{k:9s} upload {args.mib / u:8.1f} MiB/s  download {args.mib / dn:8.1f} MiB/s")
    print(f"ratio refvmd/libvirtd (throughput, goal >= 1.0): upload {med['libvirtd'][0] / med['refvmd'][0]:.2f}  "
          f"download {med['libvirtd'][1] / med['refvmd'][1]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
