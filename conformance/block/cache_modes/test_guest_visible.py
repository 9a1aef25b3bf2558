"""What the guest sees of the cache mode: offered features and the virtio-blk `writeback` byte.

VIRTIO 1.2 §5.2.5/§5.2.6 say how `writeback` relates to negotiation (CONFIG_WCE: 0 writethrough, 1
writeback; CONFIG_WCE without FLUSH: MUST start at 0); qemu-options' cache table says which cache each mode
starts with. Without CONFIG_WCE the byte is checked against what §5.2.5 tells the driver to assume (a
writeback cache with FLUSH, a stable disk without), which is also what QEMU reports.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from conformance.block.cache_modes.conftest import FLUSH, MODE_NAMES, WCE, CacheVm
from conformance.block.conftest import clause
from conformance.targets import Target
from conformance.verdicts import expect, known
from conformance.virtio.devices import BLK_F_CONFIG_WCE, BLK_F_FLUSH, BLK_WRITEBACK
from conformance.virtio.known import BLK_WRITEBACK_WITHOUT_FLUSH


@clause("cache/features-offered")
@pytest.mark.parametrize("mode", MODE_NAMES)
def test_flush_and_config_wce_offered(cache_vm: Callable[[str], CacheVm], mode: str) -> None:
    dev = cache_vm(mode).vm.blk()
    offered = dev.device_features()
    assert offered >> BLK_F_FLUSH & 1, f"cache={mode}: VIRTIO_BLK_F_FLUSH not offered"
    assert offered >> BLK_F_CONFIG_WCE & 1, f"cache={mode}: VIRTIO_BLK_F_CONFIG_WCE not offered"


@clause("cache/wce-initial")
@pytest.mark.parametrize("mode", MODE_NAMES)
def test_writeback_byte_with_config_wce(cache_vm: Callable[[str], CacheVm], mode: str) -> None:
    """CONFIG_WCE and FLUSH negotiated: `writeback` is the mode's cache.writeback, and DRIVER_OK keeps it."""
    cvm = cache_vm(mode)
    dev = cvm.vm.blk()
    dev.initialize(want=WCE | FLUSH, driver_ok=False)
    assert dev.features & (WCE | FLUSH) == WCE | FLUSH
    expected = int(cvm.mode.writeback)
    assert dev.config_read(BLK_WRITEBACK, 1) == expected, f"cache={mode}: writeback after FEATURES_OK"
    dev.driver_ok()
    assert dev.config_read(BLK_WRITEBACK, 1) == expected, f"cache={mode}: writeback changed at DRIVER_OK"


@clause("cache/wce-without-flush")
@pytest.mark.parametrize("mode", MODE_NAMES)
def test_writeback_byte_config_wce_without_flush(
    cache_vm: Callable[[str], CacheVm], mode: str, target: Target, request: pytest.FixtureRequest
) -> None:
    """§5.2.5 devicenormative: CONFIG_WCE negotiated but FLUSH not → the device MUST initialize writeback to 0."""
    cvm = cache_vm(mode)
    if cvm.mode.writeback:
        known(request, target, BLK_WRITEBACK_WITHOUT_FLUSH)
    dev = cvm.vm.blk()
    dev.initialize(want=WCE, drop=FLUSH, driver_ok=False)
    expect(dev.config_read(BLK_WRITEBACK, 1) == 0, f"cache={mode}: writeback after FEATURES_OK")
    dev.driver_ok()
    expect(dev.config_read(BLK_WRITEBACK, 1) == 0, f"cache={mode}: writeback after DRIVER_OK")


@clause("cache/wce-without-config-wce")
@pytest.mark.parametrize("mode", MODE_NAMES)
@pytest.mark.parametrize("flush", [True, False], ids=["flush", "no-flush"])
def test_writeback_byte_without_config_wce(cache_vm: Callable[[str], CacheVm], mode: str, flush: bool) -> None:
    """CONFIG_WCE not negotiated: once DRIVER_OK is set the byte reports the cache §5.2.5 tells the driver to
    assume: a writeback cache when FLUSH was negotiated, a writethrough one (stable writes) when not."""
    dev = cache_vm(mode).vm.blk()
    dev.initialize(want=FLUSH if flush else 0, drop=WCE)
    assert dev.config_read(BLK_WRITEBACK, 1) == int(flush), f"cache={mode}, FLUSH negotiated: {flush}"


@clause("cache/wce-toggle")
@pytest.mark.parametrize("mode", MODE_NAMES)
def test_writeback_byte_is_writable(cache_vm: Callable[[str], CacheVm], mode: str) -> None:
    """§5.2.6: with CONFIG_WCE the driver MAY switch the cache by writing 0 or 1; the byte reads back."""
    dev = cache_vm(mode).vm.blk()
    dev.initialize(want=WCE | FLUSH)
    for value in (0, 1, 0) if MODE_NAMES.index(mode) % 2 else (1, 0, 1):
        dev.config_write(BLK_WRITEBACK, 1, value)
        assert dev.config_read(BLK_WRITEBACK, 1) == value, f"cache={mode}: wrote writeback={value}"
