"""virtio-blk through Linux's virtio_blk: data on /dev/vda is the host file's data, both ways, and the
driver's flush, discard, read-only and capacity-change paths reach the device."""

from __future__ import annotations

import hashlib
import os

import pytest

from conformance.guest_linux.conftest import DISK_SIZE, PATTERN_LEN, PATTERN_OFFSET, clause, pattern

pytestmark = pytest.mark.hw_kvm
BS = 4096


def host_read(path, offset: int, length: int) -> bytes:  # noqa: ANN001
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def blockstats(vm, device: str = "d0") -> dict:  # noqa: ANN001
    for entry in vm.qmp.execute("query-blockstats"):
        if entry.get("device") == device:
            return entry["stats"]
    raise AssertionError(f"query-blockstats has no device {device}")


def guest_md5(vm, dev: str, offset: int, length: int) -> str:  # noqa: ANN001
    out = vm.guest.check(f"dd if={dev} bs={BS} skip={offset // BS} count={length // BS} 2>/dev/null | md5sum")
    return out.split()[0]


@clause("blk/read")
def test_guest_reads_what_the_host_file_holds(vm) -> None:  # noqa: ANN001
    assert guest_md5(vm, "/dev/vda", PATTERN_OFFSET, PATTERN_LEN) == hashlib.md5(pattern(1)).hexdigest()
    assert vm.guest.check("cat /sys/block/vda/size") == str(DISK_SIZE // 512)


@clause("blk/write-flush")
def test_guest_write_with_fsync_reaches_host_file_and_flushes(vm) -> None:  # noqa: ANN001
    before = blockstats(vm)
    offset = 2 << 20
    vm.guest.check(f"dd if=/dev/urandom of=/tmp/w bs={BS} count=4 2>/dev/null")
    digest = vm.guest.check("md5sum /tmp/w").split()[0]
    vm.guest.check(f"dd if=/tmp/w of=/dev/vda bs={BS} seek={offset // BS} conv=fsync 2>/dev/null")
    assert hashlib.md5(host_read(vm.disk, offset, 4 * BS)).hexdigest() == digest
    after = blockstats(vm)
    assert after["wr_bytes"] - before["wr_bytes"] >= 4 * BS
    assert after["flush_operations"] > before["flush_operations"], "fsync on /dev/vda sent no FLUSH request"


@clause("blk/discard")
def test_blkdiscard_punches_the_host_file(vm) -> None:  # noqa: ANN001
    offset, length = 4 << 20, 1 << 20
    with open(vm.disk, "r+b") as f:  # allocated, non-zero data in the range first
        f.seek(offset)
        f.write(b"\xa5" * length)
    assert int(vm.guest.check("cat /sys/block/vda/queue/discard_max_bytes")) > 0, "Linux sees no DISCARD"
    vm.guest.check(f"blkdiscard -o {offset} -l {length} /dev/vda")
    fd = os.open(vm.disk, os.O_RDONLY)
    try:
        assert os.lseek(fd, offset, os.SEEK_HOLE) == offset, "the discarded range is still allocated in the file"
    finally:
        os.close(fd)
    assert host_read(vm.disk, offset, length) == bytes(length)


@clause("blk/read-only")
def test_read_only_disk_refuses_writes(vm) -> None:  # noqa: ANN001
    assert vm.guest.check("cat /sys/block/vdb/ro") == "1"
    res = vm.guest.run(f"dd if=/dev/zero of=/dev/vdb bs={BS} seek={PATTERN_OFFSET // BS} count=1 conv=fsync")
    assert res.status != 0, f"a write to the read-only disk succeeded: {res.output}"
    assert host_read(vm.rodisk, PATTERN_OFFSET, PATTERN_LEN) == pattern(2)
    assert guest_md5(vm, "/dev/vdb", PATTERN_OFFSET, PATTERN_LEN) == hashlib.md5(pattern(2)).hexdigest()


@clause("blk/resize")
def test_qmp_block_resize_is_seen_by_the_guest(vm) -> None:  # noqa: ANN001
    new_size = 2 * DISK_SIZE
    vm.qmp.execute("block_resize", device="d0", size=new_size)
    assert os.path.getsize(vm.disk) == new_size
    vm.guest.wait_for("cat /sys/block/vda/size", lambda out: out == str(new_size // 512), timeout=10)
    vm.guest.check(f"dd if=/dev/zero of=/dev/vda bs={BS} seek={(new_size - BS) // BS} count=1 conv=fsync")
