"""A virtio-blk ring migrated mid-request, over qtest: the test is the driver on both sides.

The source's queue has completed a few requests (so its indices are not zero) and holds one more that is
in the middle of its life when the migration runs; the same driver state is then used on the destination
(conformance.drivers.virtio `moved_to`). The request must complete exactly once, on one side, with its data
and status byte, and the ring's indices must continue where they were: a device that restarted its
last_avail_idx at 0 would serve the old requests again, one that lost it would never serve the new one.
"""

from __future__ import annotations

import struct

import pytest

from conformance.drivers.pci import ConfigMechanism1, PciFunction, enumerate_bus
from conformance.drivers.virtio import GuestAllocator, VirtioPciDevice, find_virtio
from conformance.drivers.virtqueue import SplitQueue, Used
from conformance.migration.conftest import RAM_MB, wait_status
from conformance.virtio.conftest import Machine, blk_args, disk  # noqa: F401 - disk is a fixture
from conformance.virtio.devices import ID_BYTES, S_OK, SECTOR, T_GET_ID, T_IN, T_OUT, blk_header

MiB = 1 << 20
BEFORE = 3  # requests completed on the source before the one that migrates
#: 512 bytes/s: the first 4 KiB read passes at once and leaves the bucket ~8 s over its limit, so the next read
#: waits for the throttle (on a virtual clock that does not run under qtest, or for ~8 s of wall time).
THROTTLED = "throttling.bps-total=512"


def _sector(image: str, n: int) -> bytes:
    with open(image, "rb") as f:
        f.seek(n * SECTOR)
        return f.read(SECTOR)


def _source(vm, image: str, drive_opts: str = "") -> tuple:  # noqa: ANN001
    """(source, destination, device, queue): the source's blk ready with one queue of 8 that has completed
    BEFORE GET_ID requests; the destination, same machine, waits in -incoming defer."""
    args = blk_args(image, drive_opts=drive_opts)
    src, dst = vm(*args), vm(*args, "-incoming", "defer")
    machine = Machine(src, enumerate_bus(ConfigMechanism1(src), 0), alloc=GuestAllocator(MiB, RAM_MB * MiB))
    dev, (vq,) = machine.ready("blk", size=8)
    for _ in range(BEFORE):  # GET_ID: not throttled, on either target
        c = vq.transact([blk_header(T_GET_ID)], [ID_BYTES, 1])
        assert c.data[-1] == bytes([S_OK])
    return src, dst, dev, vq


def _migrate_driver(src, dst, dev: VirtioPciDevice, sock: str) -> PciFunction:  # noqa: ANN001
    """Migrate, then point the driver at the destination's function, whose BARs must be where they were."""
    dst.qmp.execute("migrate-incoming", uri=sock)
    src.qmp.execute("migrate", uri=sock)
    wait_status(src, "completed")
    wait_status(dst, "completed")
    func = find_virtio(enumerate_bus(ConfigMechanism1(dst), 0), "blk")
    for index, bar in dev.bars.items():
        low = func.read32(0x10 + 4 * index)
        high = func.read32(0x14 + 4 * index) if bar.kind == "mem64" else 0
        addr = (low & ~0x3 if bar.kind == "io" else low & ~0xF) | high << 32
        assert addr == bar.address, f"BAR{index} moved from {bar.address:#x} to {addr:#x} in the migration"
    dev.moved_to(dst, func)
    return func


def _used_ring(vq: SplitQueue) -> tuple[int, list[tuple[int, int]]]:
    """(used->idx, every element up to it) read from guest RAM."""
    idx = vq.used_idx()
    elems = [struct.unpack("<II", vq.qt.read(vq.device_addr + 4 + 8 * (i % vq.size), 8)) for i in range(idx)]
    return idx, elems


def _next_request_completes_once(vq: SplitQueue, image: str, expected_idx: int) -> None:
    """A write after the migrated request is served once, at the next used index, and reaches the image."""
    payload = b"after migration!" * (SECTOR // 16)
    c = vq.transact([blk_header(T_OUT, 60), payload], [1])
    assert c.data == [bytes([S_OK])]
    vq.assert_idle(0.1)
    assert vq.used_idx() == expected_idx, "the request after the migrated one is used exactly once"
    assert _sector(image, 60) == payload


@pytest.mark.clause("refvm-migration", "virtio-blk/available-request")
def test_request_made_available_before_migration_completes_once_on_destination(vm, disk, sock_dir) -> None:  # noqa: F811
    src, dst, dev, vq = _source(vm, disk)
    segs = [vq.out_buf(blk_header(T_IN, 40)), vq.in_buf(SECTOR), vq.in_buf(1)]
    token = vq.add(segs)  # avail->idx is BEFORE + 1; no notification yet
    vq.assert_idle(0.05)
    _migrate_driver(src, dst, dev, f"unix:{sock_dir}/m")
    assert vq.qt.readw(vq.driver_addr + 2) == BEFORE + 1, "the available ring arrived with the request"
    assert _used_ring(vq)[0] == BEFORE, "nothing was used on the source: the request was never notified"
    vq.kick()  # the notification the source never got
    used = vq.wait_used()
    assert used.id == token and used.length == SECTOR + 1, used
    assert vq.read_back(token) == [_sector(disk, 40), bytes([S_OK])]
    vq.assert_idle(0.1)
    idx, elems = _used_ring(vq)
    assert idx == BEFORE + 1, f"used->idx {idx}: the migrated request (or an old one again) was served twice"
    assert elems[-1] == (token, SECTOR + 1)
    _next_request_completes_once(vq, disk, BEFORE + 2)


@pytest.mark.clause("refvm-migration", "virtio-blk/notified-request")
def test_notified_request_held_by_throttle_completes_once(vm, disk, sock_dir) -> None:  # noqa: F811
    src, dst, dev, vq = _source(vm, disk, THROTTLED)
    c = vq.transact([blk_header(T_IN, 0)], [8 * SECTOR, 1])  # 4 KiB: passes, and empties the bucket
    assert c.data[-1] == bytes([S_OK])
    segs = [vq.out_buf(blk_header(T_IN, 50)), vq.in_buf(SECTOR), vq.in_buf(1)]
    token = vq.add(segs)
    vq.kick()
    if vq.used_idx() != BEFORE + 1:
        pytest.skip("the notified request completed at once: this target does not hold it for its throttle")
    vq.assert_idle(0.05)  # notified, popped by the device, waiting for the throttle: in flight
    _migrate_driver(src, dst, dev, f"unix:{sock_dir}/m")
    idx = vq.used_idx()
    assert idx == BEFORE + 2, f"used->idx {idx}: the request in flight at the migration was not completed once"
    assert vq.get_used() == Used(token, SECTOR + 1)  # completed before the switchover, its used element in RAM
    assert vq.read_back(token) == [_sector(disk, 50), bytes([S_OK])]
    vq.kick()  # a notification on the destination must not serve it a second time
    vq.assert_idle(0.2)
    assert vq.used_idx() == BEFORE + 2
    _next_request_completes_once(vq, disk, BEFORE + 3)
