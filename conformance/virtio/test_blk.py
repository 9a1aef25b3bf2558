"""Block device (VIRTIO 1.2 §5.2): requests against a host raw image the test reads and writes directly."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from conformance.drivers.virtio import VirtioPciDevice
from conformance.drivers.virtqueue import Virtqueue
from conformance.targets import Target
from conformance.verdicts import expect, known
from conformance.virtio.conftest import DISK_SECTORS, Machine, blk_args, clause
from conformance.virtio.devices import (
    BLK_CAPACITY,
    BLK_F_CONFIG_WCE,
    BLK_F_DISCARD,
    BLK_F_FLUSH,
    BLK_F_LIFETIME,
    BLK_F_RO,
    BLK_F_SECURE_ERASE,
    BLK_F_WRITE_ZEROES,
    BLK_MAX_DISCARD_SECTORS,
    BLK_MAX_DISCARD_SEG,
    BLK_MAX_WZ_SECTORS,
    BLK_MAX_WZ_SEG,
    BLK_UNUSED0,
    BLK_UNUSED1,
    BLK_WRITEBACK,
    ID_BYTES,
    S_IOERR,
    S_OK,
    S_UNSUPP,
    SECTOR,
    T_DISCARD,
    T_FLUSH,
    T_GET_ID,
    T_IN,
    T_OUT,
    T_SECURE_ERASE,
    T_WRITE_ZEROES,
    WRITE_ZEROES_F_UNMAP,
    blk_header,
    blk_segment,
)
from conformance.virtio.known import BLK_CONFIG_UNUSED1, BLK_WRITEBACK_WITHOUT_FLUSH

INIT = "Device Types / Block Device / Device Initialization"
OPER = "Device Types / Block Device / Device Operation"
CONFIG = "Basic Facilities of a Virtio Device / Device Configuration Space"


def _file(disk: str, sector: int, count: int = 1) -> bytes:
    with open(disk, "rb") as f:
        f.seek(sector * SECTOR)
        return f.read(count * SECTOR)


def _status(vq: Virtqueue, out: list[bytes], data_in: int = 0) -> tuple[int, bytes]:
    c = vq.transact(out, [data_in, 1] if data_in else [1])
    return c.data[-1][0], (c.data[0] if data_in else b"")


def _offered(dev: VirtioPciDevice, bit: int) -> bool:
    return bool(dev.device_features() >> bit & 1)


@clause(OPER, CONFIG)
def test_capacity_and_reads_match_image(blk: Machine, disk: str) -> None:
    dev, (vq,) = blk.ready("blk")
    assert dev.config_read(BLK_CAPACITY, 8) == DISK_SECTORS == os.path.getsize(disk) // SECTOR
    for sector, count in ((0, 1), (17, 4), (DISK_SECTORS - 2, 2)):
        status, data = _status(vq, [blk_header(T_IN, sector)], count * SECTOR)
        assert status == S_OK and data == _file(disk, sector, count)


@clause(OPER)
def test_writes_reach_the_image(blk: Machine, disk: str) -> None:
    dev, (vq,) = blk.ready("blk")
    payload = bytes((i * 7) & 0xFF for i in range(3 * SECTOR))
    assert _status(vq, [blk_header(T_OUT, 100), payload])[0] == S_OK
    assert _file(disk, 100, 3) == payload
    assert _file(disk, 103)[:8] == b"sect0103", "write spilled past its sectors"


@clause(OPER)
def test_stable_write_without_flush_negotiated(blk: Machine, disk: str) -> None:
    """Neither CONFIG_WCE nor FLUSH negotiated while FLUSH is offered: a completed write is stable, so the
    backend file holds it when the completion is seen."""
    dev = blk.device("blk")
    if not _offered(dev, BLK_F_FLUSH):
        pytest.skip("FLUSH not offered: write stability is not required")
    dev, (vq,) = blk.ready("blk", drop=1 << BLK_F_FLUSH | 1 << BLK_F_CONFIG_WCE)
    assert _status(vq, [blk_header(T_OUT, 200), b"S" * SECTOR])[0] == S_OK
    assert _file(disk, 200) == b"S" * SECTOR


@clause(OPER)
def test_flush(blk: Machine, disk: str) -> None:
    dev, (vq,) = blk.ready("blk", want=1 << BLK_F_FLUSH)
    assert dev.features >> BLK_F_FLUSH & 1, "FLUSH should be offered"
    assert _status(vq, [blk_header(T_OUT, 201), b"f" * SECTOR])[0] == S_OK
    assert _status(vq, [blk_header(T_FLUSH)])[0] == S_OK
    assert _file(disk, 201) == b"f" * SECTOR


@clause(OPER)
def test_get_id_returns_serial(vm: Callable[..., Machine], disk: str) -> None:
    machine = vm(*blk_args(disk, "serial=0123456789abcdefghij"))
    dev, (vq,) = machine.ready("blk")
    status, data = _status(vq, [blk_header(T_GET_ID)], ID_BYTES)
    assert status == S_OK and data == b"0123456789abcdefghij"


@clause(OPER)
def test_read_only_device(vm: Callable[..., Machine], disk: str) -> None:
    machine = vm(*blk_args(disk, drive_opts="readonly=on"))
    dev = machine.device("blk")
    assert _offered(dev, BLK_F_RO), "readonly drive but VIRTIO_BLK_F_RO not offered"
    dev, (vq,) = machine.ready("blk", want=1 << BLK_F_RO)
    before = _file(disk, 300, 2)
    assert _status(vq, [blk_header(T_OUT, 300), b"X" * 2 * SECTOR])[0] == S_IOERR
    assert _file(disk, 300, 2) == before, "a write to a read-only device changed data"
    assert _status(vq, [blk_header(T_IN, 300)], SECTOR)[0] == S_OK


@clause(OPER)
def test_unknown_request_type_is_unsupp(blk: Machine) -> None:
    """§5.2.6: UNSUPP for a request the device does not support. (Types 2/3 are legacy SCSI commands and
    may fail as malformed instead, so only never-defined types are used.)"""
    dev, (vq,) = blk.ready("blk")
    for req_type in (0x77, 0x1234, 0x7FFF_FFFF):
        assert _status(vq, [blk_header(req_type)])[0] == S_UNSUPP, f"type {req_type:#x}"


@clause(OPER)
def test_out_of_range_sectors_are_ioerr(blk: Machine, disk: str) -> None:
    dev, (vq,) = blk.ready("blk")
    assert _status(vq, [blk_header(T_IN, DISK_SECTORS)], SECTOR)[0] == S_IOERR
    assert _status(vq, [blk_header(T_IN, DISK_SECTORS - 1)], 2 * SECTOR)[0] == S_IOERR
    assert _status(vq, [blk_header(T_OUT, DISK_SECTORS), b"o" * SECTOR])[0] == S_IOERR
    assert os.path.getsize(disk) == DISK_SECTORS * SECTOR, "an out-of-range write grew the image"


@clause(OPER, CONFIG)
def test_write_zeroes_reads_back_zeroes(blk: Machine, disk: str) -> None:
    dev = blk.device("blk")
    if not _offered(dev, BLK_F_WRITE_ZEROES):
        pytest.skip("WRITE_ZEROES not offered")
    assert dev.config_read(BLK_MAX_WZ_SECTORS, 4) > 0 and dev.config_read(BLK_MAX_WZ_SEG, 4) > 0
    dev, (vq,) = blk.ready("blk", want=1 << BLK_F_WRITE_ZEROES)
    for flags, sector in ((0, 400), (WRITE_ZEROES_F_UNMAP, 410)):
        assert _status(vq, [blk_header(T_WRITE_ZEROES), blk_segment(sector, 4, flags)])[0] == S_OK
        status, data = _status(vq, [blk_header(T_IN, sector)], 4 * SECTOR)
        assert status == S_OK and data == bytes(4 * SECTOR), f"flags {flags}: not zero after WRITE_ZEROES"
        assert _file(disk, sector + 4)[:8] == b"sect%04d" % (sector + 4)


@clause(OPER)
def test_discard_and_write_zeroes_flag_checks(blk: Machine) -> None:
    dev = blk.device("blk")
    want = 1 << BLK_F_DISCARD | 1 << BLK_F_WRITE_ZEROES | 1 << BLK_F_SECURE_ERASE
    offered = dev.device_features() & want
    if not offered:
        pytest.skip("neither DISCARD, WRITE_ZEROES nor SECURE_ERASE offered")
    dev, (vq,) = blk.ready("blk", want=want)
    cases = []
    if offered >> BLK_F_DISCARD & 1:
        assert dev.config_read(BLK_MAX_DISCARD_SECTORS, 4) > 0 and dev.config_read(BLK_MAX_DISCARD_SEG, 4) > 0
        cases += [(T_DISCARD, WRITE_ZEROES_F_UNMAP), (T_DISCARD, 2), (T_DISCARD, 1 << 31)]
    if offered >> BLK_F_WRITE_ZEROES & 1:
        cases += [(T_WRITE_ZEROES, 2), (T_WRITE_ZEROES, 1 << 31)]
    if offered >> BLK_F_SECURE_ERASE & 1:
        cases += [(T_SECURE_ERASE, 1), (T_SECURE_ERASE, 2)]
    for req_type, flags in cases:
        status = _status(vq, [blk_header(req_type), blk_segment(500, 1, flags)])[0]
        assert status == S_UNSUPP, f"type {req_type} with flags {flags:#x}: status {status}"
    if offered >> BLK_F_DISCARD & 1:
        assert _status(vq, [blk_header(T_DISCARD), blk_segment(500, 8, 0)])[0] == S_OK


@clause(INIT)
def test_initial_configuration(blk: Machine) -> None:
    dev = blk.device("blk")
    offered = dev.device_features()
    assert offered >> BLK_F_FLUSH & 1, "devices SHOULD always offer VIRTIO_BLK_F_FLUSH"
    if offered >> BLK_F_CONFIG_WCE & 1:
        assert offered >> BLK_F_FLUSH & 1, "CONFIG_WCE offered without FLUSH"
    assert dev.config_read(BLK_UNUSED0, 1) == 0, "unused0 padding is not 0"


@clause(INIT)
def test_unused1_padding_is_zero(blk: Machine, target: Target, request) -> None:  # noqa: ANN001
    dev = blk.device("blk")
    if not _offered(dev, BLK_F_WRITE_ZEROES):
        pytest.skip("unused1 follows write_zeroes_may_unmap, which exists only with WRITE_ZEROES")
    known(request, target, BLK_CONFIG_UNUSED1)
    expect(dev.config_bytes(BLK_UNUSED1, 3) == bytes(3), "unused1 padding is not 0")


@clause(INIT)
def test_writeback_zero_with_config_wce_but_no_flush(blk: Machine, target: Target, request) -> None:  # noqa: ANN001
    dev = blk.device("blk")
    if not _offered(dev, BLK_F_CONFIG_WCE):
        pytest.skip("CONFIG_WCE not offered")
    known(request, target, BLK_WRITEBACK_WITHOUT_FLUSH)
    dev.acknowledge()
    assert dev.negotiate((1 << 32) | (1 << BLK_F_CONFIG_WCE))
    expect(dev.config_read(BLK_WRITEBACK, 1) == 0, "writeback must start at 0 when FLUSH is not negotiated")


@clause(OPER)
def test_lifetime_not_offered_for_plain_file(blk: Machine) -> None:
    """A raw image on a host filesystem has no eMMC/UFS lifetime metrics: LIFETIME MUST NOT be offered."""
    assert not _offered(blk.device("blk"), BLK_F_LIFETIME)
