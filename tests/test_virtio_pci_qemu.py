"""Differential: refvm's VirtioPciFunction against a live QEMU 7.2 ``-device virtio-rng-pci`` in each mode.

QEMU runs stopped under qtest (``-accel tcg -S -qtest unix:SOCK``, DESIGN.md §3); the test reads all 256
configuration bytes of 00:02.0 through 0xCF8/0xCFC and sizes every BAR. refvm builds the same function
in-process around its own virtio-rng device (or, if that does not exist, the echo test device with device
ID 4 and no config space). Interrupt Line is 0 on both: QEMU ran no firmware and refvm's bus is told not to
play firmware here. Skips without QEMU, fails without it when CI=true.
"""

from __future__ import annotations

import shutil

import pytest
from virtio_pci_rig import EchoRng, make_mem

from refvm.bus import MmioBus, PioBus
from refvm.devices.pci import PciBus
from refvm.virtio.device import VirtioDevice
from refvm.virtio.pci import VirtioPciFunction
from tests.conftest import require

MODES = {
    "transitional": ("", {}),
    "modern": (",disable-legacy=on", {"disable_legacy": True}),
    "legacy": (",disable-modern=on", {"disable_modern": True}),
}


def refvm_rng() -> VirtioDevice:
    mem = make_mem()
    try:
        from refvm.virtio.devices.rng import VirtioRng
    except ImportError:
        dev = EchoRng(mem, sizes=(8,))
        dev.config = bytearray()
        return dev
    return VirtioRng(mem)


def refvm_view(kwargs: dict[str, bool]) -> tuple[bytes, dict[int, tuple[str, int]]]:
    bus = PciBus(PioBus(), MmioBus(), lambda a, d: None, lambda i, v: None, assign_irq_lines=False)
    fn = VirtioPciFunction(refvm_rng(), **kwargs)  # type: ignore[arg-type]
    bus.add(fn, slot=2)
    data = bytes(bus.config_read(0, 2, 0, off, 1) for off in range(256))
    return data, {i: (b.kind, b.size) for i, b in sorted(fn.bars.items())}


def qemu_view(extra: str) -> tuple[bytes, dict[int, tuple[str, int]]]:
    from conformance.drivers.pci import ConfigMechanism1, PciFunction
    from conformance.drivers.qtest import QtestSession
    from conformance.targets import qemu_target

    with QtestSession() as qt:
        qt.start(qemu_target(), ["-device", "virtio-rng-pci" + extra])
        cfg = ConfigMechanism1(qt)
        fn = PciFunction(cfg, 0, 2, 0)
        assert fn.exists, "virtio-rng-pci is not at 00:02.0"
        data = bytes(cfg.read(0, 2, 0, off, 1) for off in range(256))
        bars = {b.index: (b.kind, b.size) for b in fn.bars()}
    return data, bars


@pytest.fixture(scope="module")
def qemu() -> None:
    require(shutil.which("qemu-system-x86_64") is not None, "qemu-system-x86_64 is not installed")


@pytest.mark.qemu
@pytest.mark.clause("virtio-1.2", "devicenormative:Virtio Transport Options / Virtio Over PCI Bus / PCI Device Layout")
@pytest.mark.parametrize("mode", list(MODES))
def test_config_space_and_bars_match_qemu(qemu: None, mode: str) -> None:
    extra, kwargs = MODES[mode]
    want_cfg, want_bars = qemu_view(extra)
    got_cfg, got_bars = refvm_view(kwargs)
    assert got_bars == want_bars
    pairs = enumerate(zip(got_cfg, want_cfg, strict=True))
    diffs = [f"{i:#04x}: refvm {a:#04x} qemu {b:#04x}" for i, (a, b) in pairs if a != b]
    assert not diffs, "\n".join(diffs)
