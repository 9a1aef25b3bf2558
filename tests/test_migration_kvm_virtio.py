"""Live migration of a KVM probe guest whose virtio devices write its RAM while the RAM is being sent.

The guest has a virtio-blk disk (a real raw file both processes open) and a virtio-rng.  Before migrating it
reads 4 MiB of the disk into RAM above the region under test (ballast: non-zero pages the first pass must
send, at a max-bandwidth that makes the pass last seconds) and fills the region under test with a pattern.
Once the first pass has sent that region, the guest has the device read other sectors into it, through
virtio's zero-copy views, which KVM's dirty log never sees; then the bandwidth is raised and the migration
completes.  On the destination the region must hold the disk's bytes (`blk verify` reads the same sectors
again and compares), and the shell, the disk and the rng must go on working.  With the deviation
`migration-drop-dirty` (device writes not logged) the region still holds the pattern there: the test of
that is the proof that the logging is what carries the device's writes.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from test_migration_kvm import _pair, _shell

pytestmark = pytest.mark.kvm

REGION = ("0x400000", "0x10000")  # ADDR LEN: 64 KiB written by the device during the migration
REGION_SECTOR = 2048  # read from 1 MiB into the disk (the ballast comes from sector 0)
BALLAST = ("0x800000", "0x400000", "0")  # 4 MiB of disk data, loaded before migrating
SLOW, FAST = 1 << 20, 1 << 30  # max-bandwidth (bytes/s): first pass over the ballast ~4 s, then unthrottled


def _devices(tmp: Path, deviation: str | None) -> list[str]:
    disk = tmp / "disk.raw"
    if not disk.exists():
        disk.write_bytes(os.urandom(8 << 20))
    extra = ["-global", f"virtio-pci.x-deviation={deviation}"] if deviation else []
    return ["-m", "32", "-drive", f"if=none,id=d0,file={disk},format=raw",
            "-device", "virtio-blk-pci,drive=d0,addr=0x4", "-device", "virtio-rng-pci,addr=0x5", *extra]


def _migrate_while_device_writes(tmp: Path, deviation: str | None) -> str:
    """Returns the destination's `blk verify` line for the region after the migration."""
    region = f"{REGION[0]} {REGION[1]} {REGION_SECTOR}"
    with _pair(tmp, "uri", *_devices(tmp, deviation)) as (src, dst, qmp_src, qmp_dst, mig):
        assert "bytes read" in _shell(src, "blk load " + " ".join(BALLAST))
        assert "bytes written" in _shell(src, f"pattern fill {REGION[0]} {REGION[1]} 5")
        assert "len 16" in _shell(src, "rng read 16")
        assert "FAIL" in _shell(src, "blk verify " + region), "the pattern is not yet the disk's bytes"
        qmp_src.cmd("migrate-set-parameters", **{"max-bandwidth": SLOW})
        assert qmp_src.cmd("migrate", uri=f"unix:{mig}") == {"return": {}}
        deadline = time.monotonic() + 30
        while (info := qmp_src.cmd("query-migrate")["return"]).get("ram", {}).get("normal", 0) < 200:
            assert info["status"] in ("setup", "active") and time.monotonic() < deadline, info
            time.sleep(0.02)  # 200 pages: the image and the region are behind, the ballast is being sent
        assert "bytes read" in _shell(src, "blk load " + region)  # the device writes the sent region
        assert "len 16" in _shell(src, "rng read 16")
        info = qmp_src.cmd("query-migrate")["return"]
        assert info["status"] == "active" and info["ram"]["dirty-sync-count"] <= 1, (
            f"the first pass ended before the device wrote: no proof ({info})")
        qmp_src.cmd("migrate-set-parameters", **{"max-bandwidth": FAST})
        assert qmp_src.wait_migration()["status"] == "completed"
        assert qmp_dst.wait_migration()["status"] == "completed", qmp_dst.cmd("query-migrate")
        assert "still here" in _shell(dst, "echo still here")
        assert "len 16" in _shell(dst, "rng read 16")
        assert "bytes ok" in _shell(dst, f"blk verify {BALLAST[0]} 0x10000 0")  # sent in the first pass
        return _shell(dst, "blk verify " + region)


def test_device_writes_during_precopy_reach_the_destination(tmp_path: Path) -> None:
    out = _migrate_while_device_writes(tmp_path, None)
    assert f"blk verify: {int(REGION[1], 0)} bytes ok" in out, out


def test_deviation_migration_drop_dirty_loses_them(tmp_path: Path) -> None:
    out = _migrate_while_device_writes(tmp_path, "migration-drop-dirty")
    assert "blk verify: FAIL" in out, f"with device writes not logged the region cannot be intact: {out}"
