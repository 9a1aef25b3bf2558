"""Traditional memory balloon (VIRTIO 1.2 §5.5): inflate/deflate queues and the statistics queue.

The statistics check reads what the device understood back through QMP (`guest-stats`), the only window
onto it; a target without QMP skips it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest

from conformance.drivers.virtqueue import Seg
from conformance.virtio.conftest import BALLOON_ARGS, Machine, clause
from conformance.virtio.devices import (
    BALLOON_ACTUAL,
    BALLOON_F_PAGE_POISON,
    BALLOON_F_PAGE_REPORTING,
    BALLOON_F_STATS_VQ,
    BALLOON_NUM_PAGES,
    BALLOON_PFN_SHIFT,
    BALLOON_POISON_VAL,
)

REPORTING = "Device Types / Memory Balloon Device / Device Operation / Free Page Reporting"
OPER = "Device Types / Memory Balloon Device / Device Operation"
STATS = "Device Types / Memory Balloon Device / Device Operation / Memory Statistics"
CONFIG = "Basic Facilities of a Virtio Device / Device Configuration Space"


@clause(OPER, CONFIG)
def test_config_fields(vm: Callable[..., Machine]) -> None:
    m = vm(*BALLOON_ARGS)
    dev, _ = m.ready("balloon", queues=(0, 1))
    assert dev.config_read(BALLOON_NUM_PAGES, 4) == 0, "no balloon target was requested"
    dev.config_write(BALLOON_ACTUAL, 4, 5)
    assert dev.config_read(BALLOON_ACTUAL, 4) == 5


@clause(OPER)
def test_inflate_and_deflate(vm: Callable[..., Machine]) -> None:
    m = vm(*BALLOON_ARGS)
    dev, (inflate, deflate) = m.ready("balloon", queues=(0, 1))
    pages = [m.alloc.alloc(4096, 4096) for _ in range(4)]
    pfns = b"".join(struct.pack("<I", p >> BALLOON_PFN_SHIFT) for p in pages)
    assert inflate.transact([pfns], []).used.length == 0
    assert deflate.transact([pfns], []).used.length == 0
    m.qt.write(pages[0], b"after-deflate")
    assert m.qt.read(pages[0], 13) == b"after-deflate", "a deflated page is not usable guest memory"


@clause(STATS)
def test_stats_unknown_tags_ignored_any_order(running_vm: Callable[..., Machine]) -> None:
    m = running_vm("-device", "virtio-balloon-pci,disable-legacy=on,id=bal0", qmp=True)
    dev = m.device("balloon")
    if not dev.device_features() >> BALLOON_F_STATS_VQ & 1:
        pytest.skip("VIRTIO_BALLOON_F_STATS_VQ not offered")
    dev, (_, _, stats) = m.ready("balloon", want=1 << BALLOON_F_STATS_VQ, queues=(0, 1, 2))
    entries = [(0x7777, 99), (5, 0x12345000), (0x0100, 7), (4, 0x2000), (0, 11)]  # unknown tags mixed in
    stats.add([stats.out_buf(b"".join(struct.pack("<HQ", t, v) for t, v in entries))])
    stats.kick()
    got: dict = {}
    for _ in range(50):
        got = m.qmp_call("qom-get", path="/machine/peripheral/bal0", property="guest-stats")  # type: ignore[assignment]
        if got.get("last-update"):
            break
    values = got["stats"]
    assert values["stat-total-memory"] == 0x12345000
    assert values["stat-free-memory"] == 0x2000
    assert values["stat-swap-in"] == 11


@clause(REPORTING)
def test_reported_page_keeps_poison_value(vm: Callable[..., Machine]) -> None:
    """PAGE_POISON and PAGE_REPORTING negotiated, poison_val set: a reported page may only ever hold
    poison_val afterwards. (The reporting queue is the last one: queues that do not exist are not counted.)"""
    m = vm("-device", "virtio-balloon-pci,disable-legacy=on,free-page-reporting=on")
    dev = m.device("balloon")
    want = 1 << BALLOON_F_PAGE_POISON | 1 << BALLOON_F_PAGE_REPORTING
    if dev.device_features() & want != want:
        pytest.skip("PAGE_POISON and PAGE_REPORTING not both offered")
    dev.initialize(want=want, driver_ok=False)
    poison = 0x5A5A5A5A
    dev.config_write(BALLOON_POISON_VAL, 4, poison)
    reporting = m.split(dev, dev.num_queues - 1, min(8, dev.queue_max_size(dev.num_queues - 1)))
    dev.driver_ok()
    pages = [m.alloc.alloc(4096, 4096) for _ in range(2)]
    for page in pages:
        m.qt.memset(page, 4096, 0x5A)
    token = reporting.add([Seg(p, 4096, True) for p in pages])
    reporting.kick()
    assert reporting.wait_used().id == token
    for page in pages:
        assert m.qt.read(page, 4096) == bytes([0x5A]) * 4096, "reported page holds a value other than poison_val"
