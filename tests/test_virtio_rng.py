"""virtio-rng (VIRTIO 1.2 section 5.4): buffers filled exactly, from a real file, with a rate limit."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from test_virtio_helpers import MODERN, SplitDriver, bring_up, make_mem

from refvm.virtio.devices.rng import VirtioRng


def rig(**kw: object) -> tuple[VirtioRng, SplitDriver]:
    mem = make_mem()
    dev = VirtioRng.create(mem, {k: str(v) for k, v in kw.pop("props", {}).items()}, **kw)  # type: ignore[arg-type]
    drv = SplitDriver(mem, 8)
    assert bring_up(dev, MODERN, configure=drv.configure)
    return dev, drv


def test_qemu_shape() -> None:
    dev, _ = rig()
    assert dev.device_id == 4 and dev.queue_max_sizes == (8,) and len(dev.config) == 0
    assert dev.device_feature_word(0) == 0x30000000  # only INDIRECT_DESC and EVENT_IDX, as QEMU 7.2


def test_fills_every_writable_byte_exactly(tmp_path: Path) -> None:
    src = tmp_path / "pool"
    src.write_bytes(bytes(range(256)) * 4)
    dev, drv = rig(props={"rng": "r0"}, objects={"r0": {"qom-type": "rng-random", "filename": str(src)}})
    mem = dev.mem
    mem.fill(0x3000, 0x200, 0xEE)
    drv.chain(0, [(0x3000, 10, True), (0x3100, 6, True)])
    drv.publish(0)
    dev.queue_notify(0)
    assert drv.used_elem(0) == (0, 16)
    assert mem.read(0x3000, 11) == bytes(range(10)) + b"\xee"
    assert mem.read(0x3100, 7) == bytes(range(10, 16)) + b"\xee"


def test_urandom_default_and_multiple_buffers() -> None:
    dev, drv = rig()
    for k in range(3):
        drv.chain(2 * k, [(0x4000 + 0x100 * k, 64, True)])
    drv.publish(0, 2, 4)
    dev.queue_notify(0)
    assert [drv.used_elem(n)[1] for n in range(3)] == [64, 64, 64]
    assert dev.mem.read(0x4000, 64) != dev.mem.read(0x4100, 64)
    assert dev.bytes_served == 192


def test_rate_limit_holds_buffers_until_the_next_period() -> None:
    dev, drv = rig(props={"max-bytes": 16, "period": 200})
    drv.chain(0, [(0x4000, 64, True)])
    drv.chain(2, [(0x4100, 64, True)])
    drv.publish(0, 2)
    dev.queue_notify(0)
    assert drv.used_idx() == 1 and drv.used_elem(0) == (0, 16)
    deadline = time.monotonic() + 3
    while drv.used_idx() < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert drv.used_idx() == 2 and drv.used_elem(1) == (2, 16)
    dev.close()


def test_create_errors() -> None:
    mem = make_mem()
    with pytest.raises(ValueError, match=r"Property 'virtio-rng-pci.rng' can't find value 'nope'"):
        VirtioRng.create(mem, {"rng": "nope"})
    with pytest.raises(ValueError, match="period"):
        VirtioRng.create(mem, {"period": "0"})
    with pytest.raises(ValueError, match="max-bytes"):
        VirtioRng.create(mem, {"max-bytes": "x"})
    with pytest.raises(ValueError, match="Could not open"):
        VirtioRng.create(mem, {"rng": "r"}, objects={"r": {"filename": "/nonexistent/rng"}})
