"""Fixtures of the cache-mode suite: one machine per test with a raw image opened in a given cache mode.

The mode table is QEMU's documented one (qemu-options, `-drive cache=`): each mode is a combination of
cache.writeback (the guest sees a volatile write cache), cache.direct (O_DIRECT, bypassing the host page
cache) and cache.no-flush (flush requests are ignored). DESIGN.md §3 has the same values as observed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from conformance.block.conftest import BlockMachine, drive_args
from conformance.virtio.devices import BLK_F_CONFIG_WCE, BLK_F_FLUSH


@dataclass(frozen=True)
class CacheMode:
    name: str
    writeback: bool  # cache.writeback: guest-visible write cache (virtio-blk `writeback` byte 1)
    direct: bool  # cache.direct: the image is opened O_DIRECT
    no_flush: bool  # cache.no-flush: flushes never reach the host disk


MODES = {
    m.name: m
    for m in (
        CacheMode("writeback", True, False, False),
        CacheMode("none", True, True, False),
        CacheMode("writethrough", False, False, False),
        CacheMode("directsync", False, True, False),
        CacheMode("unsafe", True, False, True),
    )
}
MODE_NAMES = list(MODES)

WCE = 1 << BLK_F_CONFIG_WCE
FLUSH = 1 << BLK_F_FLUSH


@dataclass
class CacheVm:
    """A machine whose virtio-blk drive `d0` is the raw image `image` opened with cache=`mode`."""

    vm: BlockMachine
    image: str
    mode: CacheMode


@pytest.fixture
def cache_vm(block_vm: Callable[..., BlockMachine], raw_image: Callable[..., str]) -> Callable[..., CacheVm]:
    def start(mode: str, qmp: bool = False) -> CacheVm:
        image = raw_image(1 << 20, f"cache-{mode}")
        vm = block_vm(*drive_args(image, drive_opts=[f"cache={mode}"]), qmp=qmp)
        return CacheVm(vm, image, MODES[mode])

    return start
