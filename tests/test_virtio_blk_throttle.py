"""virtio-blk through a throttled drive on a VirtualClock: the test is the driver and owns time.

Requests over the limit are held (the used ring does not move) and complete when the clock reaches
the moment the leaky bucket allows, from the timer callback, in order per direction. FLUSH and
GET_ID are never held. Without limits everything completes synchronously, as before.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from test_virtio_helpers import MODERN, SplitDriver, bring_up, make_mem

from refvm.block.drive import Drive, open_drive
from refvm.block.throttle_config import ThrottleConfig
from refvm.block.throttle_group import ThrottleGroups
from refvm.clock import VirtualClock
from refvm.virtio.devices import blk as B
from refvm.virtio.devices.blk import VirtioBlk

QSIZE = 128
FEATS = MODERN | (1 << B.VIRTIO_BLK_F_FLUSH) | (1 << B.VIRTIO_BLK_F_CONFIG_WCE)
MS = 1_000_000


@pytest.fixture
def image(tmp_path: Path) -> Path:
    p = tmp_path / "disk.img"
    with open(p, "wb") as f:
        f.write(bytes(range(256)) * 64)
        f.truncate(4 << 20)
    return p


class Rig:
    """One device, one queue; every request gets its own header/data/status slots."""

    def __init__(self, image: Path, **props: str) -> None:
        self.clock = VirtualClock()
        self.groups = ThrottleGroups(self.clock)
        self.drive: Drive = open_drive("d0", {"file": str(image), "format": "raw", **props},
                                       clock=self.clock, throttle_groups=self.groups)
        self.mem = make_mem(4 << 20)
        self.dev = VirtioBlk.create(self.mem, {"drive": "d0"}, drives={"d0": self.drive})
        self.drv = SplitDriver(self.mem, QSIZE)
        assert bring_up(self.dev, FEATS, configure=self.drv.configure)
        self.head = 0
        self.n = 0
        self.status_at: dict[int, int] = {}

    def submit(self, rtype: int, sector: int = 0, nbytes: int = 512, notify: bool = True) -> int:
        """Lay out one request (no notify unless asked); returns its head index."""
        slot = self.n
        self.n += 1
        hdr, data, status = 0x100000 + slot * 16, 0x200000 + slot * 0x2000, 0x180000 + slot
        self.mem.write(hdr, struct.pack("<IIQ", rtype, 0, sector))
        elems = [(hdr, 16, False)]
        if rtype == B.T_OUT:
            self.mem.write(data, bytes([slot & 0xFF]) * nbytes)
            elems.append((data, nbytes, False))
        elif rtype in (B.T_IN, B.T_GET_ID):
            elems.append((data, nbytes, True))
        self.mem.write_u8(status, 0xEE)
        elems.append((status, 1, True))
        head = self.head
        self.head = (self.head + len(elems)) % QSIZE
        self.drv.chain(head, elems)
        self.drv.publish(head)
        self.status_at[head] = status
        if notify:
            self.dev.queue_notify(0)
        return head

    def used_heads(self) -> list[int]:
        return [self.drv.used_elem(i)[0] for i in range(self.drv.used_idx())]

    def completion_times(self, until_ns: int, step_ns: int = MS) -> list[int]:
        """Step the clock in ``step_ns`` ticks up to ``until_ns``; when each *new* used entry appeared."""
        base = self.drv.used_idx()
        times: list[int] = []
        while self.clock.now_ns() < until_ns:
            self.clock.step(step_ns)
            times += [self.clock.now_ns()] * (self.drv.used_idx() - base - len(times))
        return times


def test_unthrottled_drive_completes_synchronously(image: Path) -> None:
    r = Rig(image)
    for _ in range(5):
        r.submit(B.T_IN)
    assert r.drv.used_idx() == 5 and r.dev.throttled_pending == 0
    assert r.drive.throttle.group is None


def test_iops_limit_rate_on_the_virtual_clock(image: Path) -> None:
    r = Rig(image, **{"throttling.iops-total": "10"})
    for _ in range(21):
        r.submit(B.T_IN, notify=False)
    r.dev.queue_notify(0)  # one kick, 21 requests: only what the bucket allows completes now
    first = r.drv.used_idx()
    assert 1 <= first <= 2 and r.dev.throttled_pending == 21 - first
    times = r.completion_times(3000 * MS)
    assert len(times) == 21 - first and r.dev.throttled_pending == 0
    # 10 IOPS: one completion every 100 ms once the burst is used up (±1 ms tick).
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert all(99 * MS <= g <= 101 * MS for g in gaps), gaps
    assert r.used_heads() == [3 * i % QSIZE for i in range(21)]  # FIFO
    assert all(r.mem.read_u8(s) == B.S_OK for s in r.status_at.values())
    assert all(r.drv.used_elem(i)[1] == 513 for i in range(21))


def test_bps_write_limit_and_data_lands(image: Path) -> None:
    # 64 KiB/s of writes, 16 writes of 4 KiB. QEMU's bucket (burst = avg/10 when no max is given) lets a
    # request go while the level is within the burst, so the last one starts when the bucket has
    # leaked the other 15 writes minus the burst: (15 * 4096 - 6553.6) / 65536 s = 0.8375 s.
    r = Rig(image, **{"throttling.bps-write": str(64 * 1024)})
    for i in range(16):
        r.submit(B.T_OUT, sector=8 * i, nbytes=4096, notify=False)
    r.dev.queue_notify(0)
    times = r.completion_times(2000 * MS)
    done = r.drv.used_idx()
    assert done == 16
    assert 837 * MS <= times[-1] <= 839 * MS, times[-1]
    data = image.read_bytes()
    for i in range(16):
        assert data[4096 * i : 4096 * (i + 1)] == bytes([i]) * 4096


def test_flush_and_get_id_are_not_throttled_and_reads_not_held_by_writes(image: Path) -> None:
    r = Rig(image, **{"throttling.iops-write": "1"})
    w = [r.submit(B.T_OUT, sector=i, nbytes=512) for i in range(3)]
    assert r.used_heads() == w[:1]  # the first write fits, the rest wait
    f = r.submit(B.T_FLUSH)
    g = r.submit(B.T_GET_ID, nbytes=20)
    rd = r.submit(B.T_IN)
    assert r.used_heads() == [w[0], f, g, rd]  # overtake the held writes, as in QEMU
    r.completion_times(2500 * MS, step_ns=10 * MS)
    assert r.used_heads()[4:] == w[1:]


def test_reconfigure_and_disable_release_held_requests(image: Path) -> None:
    r = Rig(image, **{"throttling.iops-read": "1"})
    for _ in range(4):
        r.submit(B.T_IN)
    assert r.drv.used_idx() == 1
    r.groups.set_io_throttle(r.drive.throttle, ThrottleConfig(), "d0")  # all limits 0: off
    assert r.drv.used_idx() == 4 and r.dev.throttled_pending == 0
    r.submit(B.T_IN)
    assert r.drv.used_idx() == 5


def test_reset_drains_held_writes_without_touching_the_new_rings(image: Path) -> None:
    r = Rig(image, **{"throttling.iops-write": "1"})
    for i in range(3):
        r.submit(B.T_OUT, sector=100 + i, nbytes=512)
    assert r.dev.throttled_pending == 2
    r.dev.write_status(0)  # reset: QEMU drains (performs) them first
    assert r.dev.throttled_pending == 0
    data = image.read_bytes()
    assert data[512 * 101 : 512 * 102] == bytes([1]) * 512 and data[512 * 102 : 512 * 103] == bytes([2]) * 512
    r.clock.step(5000 * MS)  # the throttle's timers fire later: nothing happens twice, nothing crashes
    assert r.dev.failures == []


def test_guest_wce_toggle_reaches_the_drive_and_reset_restores_it(image: Path) -> None:
    r = Rig(image, cache="writethrough")
    assert r.dev.config_read(32, 1) == 0 and r.drive.writeback is False
    r.dev.config_write(32, 1, 1)
    assert r.drive.writeback is True
    r.dev.write_status(0)
    assert r.dev.config_read(32, 1) == 0 and r.drive.writeback is False


def test_writethrough_drive_keeps_syncing_for_a_flush_only_driver(image: Path) -> None:
    """No CONFIG_WCE, FLUSH negotiated: the byte says writeback (5.2.5), the drive still syncs each write."""
    clock = VirtualClock()
    drive = open_drive("d0", {"file": str(image), "cache": "writethrough"}, clock=clock)
    mem = make_mem(4 << 20)
    dev = VirtioBlk.create(mem, {"drive": "d0"}, drives={"d0": drive})
    drv = SplitDriver(mem, QSIZE)
    assert bring_up(dev, MODERN | (1 << B.VIRTIO_BLK_F_FLUSH), configure=drv.configure)
    assert dev.config_read(32, 1) == 1
    mem.write(0x100000, struct.pack("<IIQ", B.T_OUT, 0, 0))
    drv.chain(0, [(0x100000, 16, False), (0x200000, 512, False), (0x180000, 1, True)])
    drv.publish(0)
    dev.queue_notify(0)
    assert drv.used_idx() == 1 and drive.policy.syncs == 1
    drive.close()
