"""A virtio-blk function stopped mid-ring migrates between two real refvm processes under -accel qtest and
completes on the destination exactly once; the test is the guest's driver (conformance/drivers over qtest).

Also: the source's devices go on after a failed migration or `cont` (saving froze them), and a destination
whose device differs ends with one line naming the section and field. The state itself, in-process, is
tests/test_migration_virtio.py.
"""
from __future__ import annotations

import struct
from pathlib import Path

import pytest
from test_migration_qtest import Qmp

from conformance.drivers.pci import BarAllocator, ConfigMechanism1, enumerate_bus
from conformance.drivers.qtest import QtestSession
from conformance.drivers.virtio import GuestAllocator, VirtioPciDevice, find_virtio
from conformance.drivers.virtqueue import SplitQueue
from conformance.targets import refvm_target
from refvm.virtio.devices import blk as B


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    path = tmp_path / "disk.raw"
    path.write_bytes(bytes(1 << 20))
    return path


class Session:
    """The qtest session the drivers talk to: the source's until the migration, then the destination's."""

    def __init__(self, current: QtestSession) -> None:
        self.current = current

    def __getattr__(self, name: str):  # noqa: ANN204 - forwards QtestSession's methods
        return getattr(self.current, name)


def _machine(tmp: Path, name: str, disk: Path, *extra: str, drive: str = "", device: str = "") -> \
        tuple[QtestSession, Qmp]:
    qmp_path = tmp / f"{name}.qmp"
    qt = QtestSession(name=name).start(refvm_target(), [
        "-m", "32", "-qmp", f"unix:{qmp_path},server=on,wait=off", "-watchdog-timeout", "120",
        "-drive", f"file={disk},if=none,id=d0,format=raw{drive}", "-device", f"virtio-blk-pci,drive=d0,addr=4{device}",
        *extra])
    return qt, Qmp(qmp_path)


@pytest.mark.parametrize("uri,end", [("exec:exit 1", "failed"), ("exec:cat > {tmp}/stream", "completed")])
def test_source_devices_go_on_after_a_failed_migration_or_cont(tmp_path: Path, disk: Path, uri: str,
                                                                end: str) -> None:
    """Saving froze the device; a failed migration thaws it, and so does `cont` on a completed one's source
    (postmigrate -> running, which QEMU allows)."""
    src_qt, src_qmp = _machine(tmp_path, "src", disk)
    try:
        qt = Session(src_qt)
        vq, _dev = _blk_queue(qt)
        token, segs = _blk_request(vq, B.T_OUT, 7, b"C" * 512)
        assert src_qmp.cmd("migrate", uri=uri.format(tmp=tmp_path)) == {"return": {}}
        src_qmp.wait_status(end)
        if end == "completed":
            vq.kick()
            vq.assert_idle(0.2)  # postmigrate: frozen at the cut
            assert src_qmp.cmd("cont") == {"return": {}}
        vq.kick()
        assert vq.wait_used().id == token and src_qt.readb(segs[-1].addr) == B.S_OK
        assert src_qmp.cmd("query-status")["return"]["status"] == "running"
    finally:
        src_qmp.sock.close()
        src_qt.close()


def test_destination_whose_device_differs_ends_with_one_line_naming_the_section(tmp_path: Path, disk: Path) -> None:
    mig = tmp_path / "mig.sock"
    dst_qt, dst_qmp = _machine(tmp_path, "dst", disk, "-incoming", f"unix:{mig}", device=",num-queues=2")
    src_qt, src_qmp = _machine(tmp_path, "src", disk)
    try:
        assert src_qmp.cmd("migrate", uri=f"unix:{mig}") == {"return": {}}
        src_qmp.wait_status("completed")
        assert dst_qt.proc is not None and dst_qt.proc.wait(timeout=30) == 1
        lines = [ln for ln in dst_qt.stderr.splitlines() if "migration" in ln]
        assert len(lines) == 1 and "section '0000:00:04.0/virtio-blk': field 'pci.config': byte 0x9a" in lines[0], lines
    finally:
        for qmp in (src_qmp, dst_qmp):
            qmp.sock.close()
        src_qt.close()
        dst_qt.close()


def _blk_queue(qt: Session) -> tuple[SplitQueue, VirtioPciDevice]:
    """The test as the guest's driver: BARs placed, features negotiated, queue 0 set up, DRIVER_OK."""
    alloc = GuestAllocator(0x100000, 0x1F00000)
    func = find_virtio(enumerate_bus(ConfigMechanism1(qt), 0), "blk")  # type: ignore[arg-type]
    dev = VirtioPciDevice(qt, func, alloc).map(BarAllocator())  # type: ignore[arg-type]
    dev.initialize(driver_ok=False)
    vq = SplitQueue(qt, alloc, 0, 16)  # type: ignore[arg-type]
    dev.setup_queue(vq)
    dev.driver_ok()
    return vq, dev


def _blk_request(vq: SplitQueue, rtype: int, sector: int, data: bytes = b"", inlen: int = 0) -> tuple[int, list]:
    segs = [vq.out_buf(struct.pack("<IIQ", rtype, 0, sector))]
    segs += [vq.out_buf(data)] if data else []
    segs += [vq.in_buf(inlen)] if inlen else []
    segs.append(vq.in_buf(1))
    return vq.add(segs), segs


@pytest.mark.parametrize("stop", ["before-notify", "throttled-after-notify"])
def test_virtio_blk_stopped_mid_ring_migrates_between_processes_and_completes_once(
        tmp_path: Path, disk: Path, stop: str) -> None:
    """Source and destination are real refvm processes under -accel qtest; the test is the guest's driver.

    before-notify: the request is in the available ring, never notified; the destination completes it at
    its first notification. throttled-after-notify: the request was notified but waits for the throttle
    (iops-total=1, virtual clock stopped); the source drains it at save, the destination's ring shows it
    used and does not run it again. Either way: used idx advances exactly once per request, the indices
    go on where the source left them, the data is on disk once."""
    mig = tmp_path / "mig.sock"
    drive = ",throttling.iops-total=1" if stop != "before-notify" else ""
    dst_qt, dst_qmp = _machine(tmp_path, "dst", disk, "-incoming", f"unix:{mig}", drive=drive)
    src_qt, src_qmp = _machine(tmp_path, "src", disk, drive=drive)
    try:
        qt = Session(src_qt)
        vq, _dev = _blk_queue(qt)
        first, _ = _blk_request(vq, B.T_OUT, 1, b"A" * 512)
        vq.kick()
        assert vq.wait_used().id == first  # (within the throttle's burst)
        second, segs = _blk_request(vq, B.T_OUT, 2, b"B" * 512)  # made available ...
        if stop != "before-notify":
            vq.kick()  # ... and notified: held by the throttle, whose virtual clock stands still under qtest
            vq.assert_idle(0.3)
        assert vq.used_idx() == 1
        assert src_qmp.cmd("migrate", uri=f"unix:{mig}") == {"return": {}}
        src_qmp.wait_status("completed")
        dst_qmp.wait_status("completed")
        qt.current = dst_qt
        assert dst_qmp.cmd("query-status")["return"]["status"] == "running"
        if stop == "before-notify":
            assert vq.used_idx() == 1, "nothing completed in transit"
            vq.kick()
            used = vq.wait_used()
        else:
            assert vq.used_idx() == 2, "drained on the source before RAM was copied"
            used = vq.get_used()
        assert used is not None and used.id == second and dst_qt.readb(segs[-1].addr) == B.S_OK
        vq.kick()
        vq.assert_idle(0.3)  # a second notification finds nothing new: completed exactly once
        assert vq.used_idx() == 2
        third, _ = _blk_request(vq, B.T_IN, 2, inlen=512)
        vq.kick()
        assert vq.wait_used().id == third and vq.read_back(third)[0] == b"B" * 512
        assert vq.used_idx() == 3, "indices go on from the source's"
    finally:
        for qmp in (src_qmp, dst_qmp):
            qmp.sock.close()
        src_qt.close()
        dst_qt.close()
    with open(disk, "rb") as f:
        assert f.read(3 * 512)[512:] == b"A" * 512 + b"B" * 512
