"""QMP block_resize (QEMU 7.2 texts and order of checks) and the virtio-blk configuration change it causes
(VIRTIO 1.2 5.2.6.2, 2.5.1, 4.1.4.3: capacity changes, config_generation changes, config interrupt)."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from test_block_qmp import FakeServer
from virtio_pci_rig import C, Rig, tree_of

from refvm.block.drive import Drive, open_drive
from refvm.block.qcow2 import create_qcow2
from refvm.clock import VirtualClock
from refvm.monitor.block_resize import BlockResizeCommands
from refvm.virtio import features as F
from refvm.virtio.devices.blk import VirtioBlk

SECTOR = 512
MIB = 1 << 20


def _raw(tmp_path: Path, name: str = "d.img", size: int = MIB) -> str:
    path = tmp_path / name
    with open(path, "wb") as f:
        f.truncate(size)
    return str(path)


class Setup:
    """Drives, virtio-blk models on a real PCI rig for d0, and block_resize on a fake server."""

    def __init__(self, tmp_path: Path, extra: dict[str, dict[str, str]] | None = None) -> None:
        clock = VirtualClock()
        self.drives: dict[str, Drive] = {"d0": open_drive("d0", {"file": _raw(tmp_path), "format": "raw"}, clock=clock)}
        for ident, props in (extra or {}).items():
            self.drives[ident] = open_drive(ident, props, clock=clock)
        self.rig = Rig(VirtioBlk(Rig().mem, self.drives["d0"]))
        self.blk: VirtioBlk = self.rig.vdev  # type: ignore[assignment]
        self.server = FakeServer()
        tree = tree_of(("virtio-blk-pci", {"drive": "d0"}, self.blk, self.rig.fn))
        BlockResizeCommands(self.server, SimpleNamespace(devices=tree), self.drives)

    def call(self, **args: Any) -> dict[str, Any]:
        return self.server.call("block_resize", args)

    def close(self) -> None:
        for d in self.drives.values():
            d.close()


@pytest.fixture
def setup(tmp_path: Path):  # noqa: ANN201
    s = Setup(tmp_path)
    yield s
    s.close()


def _error(desc: str, cls: str = "GenericError") -> dict[str, Any]:
    return {"error": {"class": cls, "desc": desc}}


def test_lookup_errors_as_qemu(setup: Setup) -> None:
    assert setup.call(device="nope", size=1) == _error("Cannot find device='nope' nor node-name=''")
    assert setup.call(**{"node-name": "nope", "size": 1}) == _error("Cannot find device='' nor node-name='nope'")
    assert setup.call(size=1) == _error("Cannot find device='' nor node-name=''")
    assert setup.call(device="d0") == _error("Parameter 'size' is missing")
    assert setup.call(device="nope", size=-1) == _error("Cannot find device='nope' nor node-name=''")
    assert setup.call(device="d0", size=-1) == _error("Parameter 'size' expects a >0 size")


def test_grow_by_device_updates_capacity_and_notifies(setup: Setup) -> None:
    rig, blk = setup.rig, setup.blk
    rig.enable_msix()
    rig.init_driver(1 << F.VIRTIO_F_VERSION_1, {}, config_vector=0)
    gen = rig.rd(C.GEN, 1)
    assert rig.rd(0x2000, 4) == MIB // SECTOR
    assert setup.call(device="d0", size=4 * MIB) == {"return": {}}
    assert os.path.getsize(setup.drives["d0"].file) == 4 * MIB
    assert blk.capacity == 4 * MIB // SECTOR
    assert rig.msis and rig.msis[-1][1] == 0x40, "no configuration change interrupt on vector 0"
    assert rig.rd(0x2000, 4) | rig.rd(0x2004, 4) << 32 == 8192
    assert rig.rd(C.GEN, 1) != gen
    assert rig.isr() & 2, "ISR configuration change bit not set"


def test_shrink_by_node_name_and_unaligned_raw(setup: Setup) -> None:
    node = setup.drives["d0"].node_name
    assert setup.call(**{"device": "nope", "node-name": node, "size": 1000}) == {"return": {}}
    assert os.path.getsize(setup.drives["d0"].file) == 1000
    assert setup.blk.capacity == 1  # whole sectors only
    assert setup.call(device="d0", size=0) == {"return": {}}
    assert setup.blk.capacity == 0


def test_before_driver_ok_no_interrupt_but_new_capacity(setup: Setup) -> None:
    assert setup.call(device="d0", size=2 * MIB) == {"return": {}}
    assert setup.rig.msis == [] and setup.blk.isr == 0
    assert setup.rig.rd(0x2000, 4) == 4096


def test_readonly_and_qcow2(tmp_path: Path) -> None:
    qcow = str(tmp_path / "q.qcow2")
    create_qcow2(qcow, MIB)
    s = Setup(tmp_path, {
        "ro": {"file": _raw(tmp_path, "ro.img"), "format": "raw", "read-only": "on"},
        "q": {"file": qcow, "format": "qcow2"},
    })
    try:
        assert s.call(device="ro", size=2 * MIB) == _error("Image is read-only")
        assert s.call(device="q", size=1000) == _error("The new size must be a multiple of 512")
        assert s.call(device="q", size=4 * MIB) == {"return": {}}
        assert s.drives["q"].length() == 4 * MIB
        s.drives["q"].pwrite(3 * MIB, b"grown")
        assert s.drives["q"].pread(3 * MIB, 5) == b"grown"
    finally:
        s.close()
