"""Fuzz: every virtio device's queues, split and packed, with hostile descriptor tables, indices and addresses.

Each example resets the device, negotiates a random subset of the ring features (packed or split,
EVENT_IDX, INDIRECT_DESC), configures every queue with a random size at fixed areas, fills the descriptor
area and the driver area with generated descriptors (addresses in RAM, at its edges, far outside it;
lengths up to 2^32 - 1; any flags, next and ids) or raw bytes, and notifies random queues. Properties:
``queue_notify`` never raises and never hangs; a device-model bug (the core's "device error" catch-all)
never fires -- a hostile ring is a driver error, answered with DEVICE_NEEDS_RESET (2.1.2) or ignored.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from fuzzing import FUZZ, example, require
from hypothesis import given
from hypothesis import strategies as st
from test_virtio_helpers import EVENT_IDX, INDIRECT, MODERN, PACKED, RAM_SIZE, bring_up, make_mem

from refvm.block import RawFile
from refvm.virtio import status as S
from refvm.virtio.devices.balloon import VirtioBalloon
from refvm.virtio.devices.blk import VirtioBlk
from refvm.virtio.devices.console import VirtioSerial
from refvm.virtio.devices.net import VirtioNet
from refvm.virtio.devices.rng import VirtioRng
from refvm.virtio.devices.tap import Tap

AREA = 0x20000  # queue q's descriptor area at AREA + q * 0x4000, driver area +0x1000, device area +0x2000
DESC = struct.Struct("<QIHH")

addrs = st.one_of(
    st.integers(0x40000, 0x48000),  # ordinary buffers in RAM
    st.sampled_from([0, RAM_SIZE - 1, RAM_SIZE - 16, RAM_SIZE, AREA, AREA + 0x1000, 1 << 40, (1 << 64) - 16]),
    st.integers(0, (1 << 64) - 1),
)
lengths = st.one_of(st.integers(0, 4096), st.sampled_from([1, 16, 17, 0xFFFFFFFF, 0x80000000]),
                    st.integers(0, (1 << 32) - 1))
flags = st.one_of(st.sampled_from([0, 1, 2, 3, 4, 0x80, 0x81, 0x82, 0x83, 0x84, 0x8080]), st.integers(0, 0xFFFF))
desc = st.builds(DESC.pack, addrs, lengths, st.one_of(st.integers(0, 8), st.integers(0, 0xFFFF)), flags)
table = st.one_of(st.lists(desc, min_size=1, max_size=16).map(b"".join), st.binary(min_size=1, max_size=256))
ring = st.binary(min_size=4, max_size=64)  # driver area: flags, idx, ring entries / event suppression


class Devices:
    """One of each device model, made once (a reset per example makes it new again)."""

    def __init__(self, tmp: Path) -> None:
        self.mem = make_mem()
        disk = tmp / "fuzz.img"
        disk.write_bytes(os.urandom(64 << 10))
        self.backend = RawFile(str(disk))
        try:
            self.tap: Tap | None = Tap(f"rvfz{os.getpid() % 100000}")
        except OSError as exc:
            self.tap, self.tap_error = None, str(exc)
        self.all = {
            "blk": VirtioBlk(self.mem, self.backend, queue_size=16),
            "console": VirtioSerial(self.mem, max_ports=2),
            "rng": VirtioRng(self.mem),
            "balloon": VirtioBalloon(self.mem),
        }
        if self.tap is not None:
            self.all["net"] = VirtioNet(self.mem, self.tap, start_reader=False, rx_queue_size=16, tx_queue_size=16)


@pytest.fixture(scope="module")
def devices(tmp_path_factory: pytest.TempPathFactory) -> Devices:
    return Devices(tmp_path_factory.mktemp("fuzz"))


def _configure(dev, sizes: list[int], packed: bool) -> None:
    for q, want in zip(range(len(dev.queues)), sizes, strict=False):
        vq = dev.queues[q]
        if not vq.max_size:
            continue
        size = min(want, vq.max_size)
        if not packed:
            size = 1 << (size.bit_length() - 1)  # split sizes are powers of 2 (the transport checks it too)
        vq.size = size
        base = AREA + q * 0x4000
        vq.desc_addr, vq.driver_addr, vq.device_addr = base, base + 0x1000, base + 0x2000
        vq.enabled = True


def run_device(dev, mem, packed: bool, feats: int, sizes: list[int], tables: list[bytes], rings: list[bytes],
               notifies: list[int]) -> None:
    """One hostile episode against ``dev``; asserts the device never crashed."""
    mem.fill(AREA, 0x4000 * 8)
    for q, (t, r) in enumerate(zip(tables, rings, strict=False)):
        mem.write(AREA + q * 0x4000, t[:0x1000])
        mem.write(AREA + q * 0x4000 + 0x1000, r)
    features = MODERN | feats | (PACKED if packed else 0)
    if not bring_up(dev, features & dev.device_features, configure=lambda d: _configure(d, sizes, packed)):
        return
    for q in notifies:
        dev.queue_notify(q % (len(dev.queues) + 1))  # sometimes a queue that does not exist
        if isinstance(dev, VirtioNet):
            dev.receive(b"\xff" * 6 + bytes(6 + 2 + q * 100))  # a broadcast frame into the hostile rx ring
    crashes = [f for f in dev.failures if f.startswith("device error")]
    assert not crashes, crashes
    assert dev.status & S.DEVICE_NEEDS_RESET or dev.error is None


episode = dict(
    packed=st.booleans(),
    feats=st.sampled_from([0, EVENT_IDX, INDIRECT, EVENT_IDX | INDIRECT]),
    sizes=st.lists(st.integers(1, 16), min_size=1, max_size=8),
    tables=st.lists(table, min_size=1, max_size=4),
    rings=st.lists(ring, min_size=1, max_size=4),
    notifies=st.lists(st.integers(0, 8), min_size=1, max_size=6),
)


@pytest.mark.parametrize("kind", ["blk", "net", "console", "rng", "balloon"])
def test_fuzz_device_queues(devices: Devices, kind: str) -> None:
    if kind not in devices.all:
        require(False, f"virtio-net needs a tap device: {devices.tap_error}")
    dev = devices.all[kind]

    @FUZZ
    @given(**episode)
    def target(**kw) -> None:
        with example():
            run_device(dev, devices.mem, **kw)

    target()
