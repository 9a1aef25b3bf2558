"""virtio-balloon (VIRTIO 1.2 section 5.5): target, inflate/deflate PFNs, stats, page release."""

from __future__ import annotations

import struct

import pytest
from test_virtio_helpers import MODERN, SplitDriver, bring_up, make_mem

from refvm.virtio.devices import balloon as BL
from refvm.virtio.devices.balloon import VirtioBalloon

STATS = MODERN | (1 << BL.VIRTIO_BALLOON_F_STATS_VQ) | (1 << BL.VIRTIO_BALLOON_F_PAGE_POISON)


class Rig:
    def __init__(self, features: int = STATS, **props: str) -> None:
        self.mem = make_mem()
        self.dev = VirtioBalloon.create(self.mem, props)
        self.q = [SplitDriver(self.mem, 8, base=0x10000 + 0x1000 * i) for i in range(3)]
        self.cfg_irqs = 0
        self.used_irqs: list[int] = []
        self.dev.on_used_buffer = self.used_irqs.append

        def cfg() -> None:
            self.cfg_irqs += 1

        self.dev.on_config_change = cfg

        def configure(dev: VirtioBalloon) -> None:
            for i, d in enumerate(self.q):
                d.configure(dev, i)

        assert bring_up(self.dev, features, configure=configure)
        self.heads = [0, 0, 0]

    def post(self, qi: int, data: bytes, addr: int = 0x3000) -> None:
        self.mem.write(addr, data)
        h = self.heads[qi]
        self.heads[qi] = (h + 1) % 8
        self.q[qi].chain(h, [(addr, len(data), False)])
        self.q[qi].publish(h)
        self.dev.queue_notify(qi)


def test_qemu_shape() -> None:
    r = Rig()
    assert r.dev.device_id == 5 and r.dev.queue_max_sizes == (128, 128, 128)
    assert r.dev.device_feature_word(0) == 0x30000012  # STATS_VQ | PAGE_POISON, as QEMU 7.2
    assert bytes(r.dev.config) == bytes(16)
    oom = VirtioBalloon.create(make_mem(), {"deflate-on-oom": "on"})
    assert oom.features & (1 << BL.VIRTIO_BALLOON_F_DEFLATE_ON_OOM)


def test_target_change_raises_config_interrupt() -> None:
    r = Rig()
    gen = r.dev.config_generation
    r.dev.set_target_pages(16)
    assert r.cfg_irqs == 1 and r.dev.read_isr() & 2
    assert r.dev.config_read(0, 4) == 16 and r.dev.config_generation != gen
    r.dev.set_target_bytes(r.mem.size - 8 * 4096)
    assert r.dev.config_read(0, 4) == 8 and r.cfg_irqs == 2


def test_inflate_deflate_record_pfns_and_release_pages() -> None:
    r = Rig()
    changes: list[int] = []
    r.dev.on_actual_change = changes.append
    r.mem.fill(0x80000, 3 * 4096, 0x5A)
    pfns = [0x80, 0x81, 0x82, 0xFFFFF]  # the last is not RAM: ignored
    r.post(0, struct.pack(f"<{len(pfns)}I", *pfns))
    assert r.q[0].used_elem(0) == (0, 0)
    assert r.dev.inflated == {0x80, 0x81, 0x82}
    assert r.mem.read(0x80000, 4096) == bytes(4096)  # released: the host mapping reads zero again
    r.dev.config_write(4, 4, 3)
    assert r.dev.actual == 3 and changes == [3]
    r.post(1, struct.pack("<I", 0x81))
    assert r.dev.inflated == {0x80, 0x82} and r.q[1].used_elem(0) == (0, 0)


def test_poison_value_keeps_pages() -> None:
    r = Rig()
    r.dev.config_write(12, 4, 0xAA)
    assert r.dev.poison_val == 0xAA
    r.mem.fill(0x90000, 4096, 0xAA)
    r.post(0, struct.pack("<I", 0x90))
    assert 0x90 in r.dev.inflated and r.mem.read(0x90000, 4) == b"\xaa" * 4


def test_stats_kept_and_refreshed() -> None:
    r = Rig()
    r.post(2, struct.pack("<HQHQ", 4, 1000, 5, 4000))
    assert r.dev.stats == {"stat-free-memory": 1000, "stat-total-memory": 4000}
    assert r.q[2].used_idx() == 0  # held by the device
    assert r.dev.request_stats()
    assert r.q[2].used_idx() == 1 and r.used_irqs == [2]
    r.post(2, struct.pack("<HQ", 4, 999), addr=0x3100)
    assert r.dev.stats == {"stat-free-memory": 999}
    assert not Rig(MODERN).dev.request_stats()


def test_create_errors() -> None:
    with pytest.raises(ValueError, match="free-page-hint"):
        VirtioBalloon.create(make_mem(), {"free-page-hint": "on"})
    with pytest.raises(ValueError, match=r"'virtio-balloon-pci.guest-stats' not found"):
        VirtioBalloon.create(make_mem(), {"guest-stats": "1"})
