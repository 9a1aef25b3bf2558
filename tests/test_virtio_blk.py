"""virtio-blk (VIRTIO 1.2 section 5.2) against a real raw file; the test is the driver.

Config bytes and features are QEMU 7.2's, read from ``virtio-blk-pci,disable-legacy=on`` over qtest
with an 8 MiB raw image.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from test_virtio_helpers import MODERN, SplitDriver, bring_up, make_mem

from refvm.block import RawFile
from refvm.virtio import status as S
from refvm.virtio.devices import blk as B
from refvm.virtio.devices.blk import VirtioBlk

DISK = 8 << 20
QEMU_CONFIG = bytes.fromhex(
    "004000000000000000000000fe0000001000103f00020000000000000000000001000100"
    "ffff3f000100000001000000ffff3f000100000001"
)
HDR, DATA, STATUS, SEG = 0x1000, 0x2000, 0x9000, 0x9100
FEATS = MODERN | (1 << B.VIRTIO_BLK_F_FLUSH) | (1 << B.VIRTIO_BLK_F_CONFIG_WCE) | (1 << B.VIRTIO_BLK_F_DISCARD)
FEATS |= 1 << B.VIRTIO_BLK_F_WRITE_ZEROES


@pytest.fixture
def image(tmp_path: Path) -> Path:
    p = tmp_path / "disk.img"
    with open(p, "wb") as f:
        f.write(bytes((i * 7 + 3) & 0xFF for i in range(64 * 1024)))
        f.truncate(DISK)
    return p


class Rig:
    def __init__(self, path: Path, readonly: bool = False, features: int = FEATS, **props: str) -> None:
        self.mem = make_mem()
        self.backend = RawFile(str(path), readonly=readonly)
        self.dev = VirtioBlk.create(self.mem, {"drive": "d0", **props}, drives={"d0": self.backend})
        self.drv = SplitDriver(self.mem, 8)
        self.head = 0
        assert bring_up(self.dev, features, configure=self.drv.configure)

    def request(self, rtype: int, sector: int = 0, out: bytes = b"", inlen: int = 0,
                status_len: int = 1) -> tuple[int, int]:
        """Header, optional out data, optional in buffer, status; returns (status, used len)."""
        self.mem.write(HDR, struct.pack("<IIQ", rtype, 0, sector))
        elems = [(HDR, 16, False)]
        if out:
            self.mem.write(DATA, out)
            elems.append((DATA, len(out), False))
        if inlen:
            elems.append((DATA, inlen, True))
        self.mem.write_u8(STATUS, 0xEE)
        if status_len:
            elems.append((STATUS, status_len, True))
        head = self.head
        self.head = (self.head + len(elems)) % 8
        self.drv.chain(head, elems)
        self.drv.publish(head)
        self.dev.queue_notify(0)
        used = self.drv.used_elem(self.drv.used_idx() - 1)
        return self.mem.read_u8(STATUS + status_len - 1), used[1]


def test_config_features_and_queues_match_qemu(image: Path) -> None:
    r = Rig(image)
    # QEMU's 57 bytes, then the unused1 padding QEMU leaves out (5.2.5: the device MUST initialize it to 0).
    assert bytes(r.dev.config) == QEMU_CONFIG + bytes(3)
    assert r.dev.device_id == 2 and r.dev.queue_max_sizes == (256,)
    assert r.dev.device_feature_word(0) == 0x30006E54  # QEMU 7.2 default (RING_RESET is the core's)
    assert r.dev.config_read(0, 8) == DISK // 512 and r.dev.config_read(12, 4) == 254


def test_read_write_flush_roundtrip(image: Path) -> None:
    r = Rig(image)
    st, used = r.request(B.T_IN, 0, inlen=512)
    assert (st, used) == (B.S_OK, 513)
    assert r.mem.read(DATA, 512) == image.read_bytes()[:512]
    payload = bytes(range(256)) * 4
    assert r.request(B.T_OUT, 100, out=payload) == (B.S_OK, 1)
    assert r.request(B.T_FLUSH) == (B.S_OK, 1)
    assert r.request(5) == (B.S_OK, 1)  # FLUSH_OUT is FLUSH (QEMU masks the OUT bit)
    with open(image, "rb") as f:
        f.seek(100 * 512)
        assert f.read(1024) == payload
    r.mem.fill(DATA, 1024)
    assert r.request(B.T_IN | B.T_BARRIER, 100, inlen=1024) == (B.S_OK, 1025)
    assert r.mem.read(DATA, 1024) == payload


def test_out_of_range_and_partial_sector_are_ioerr(image: Path) -> None:
    r = Rig(image)
    last = DISK // 512 - 1
    assert r.request(B.T_IN, last, inlen=512)[0] == B.S_OK
    assert r.request(B.T_IN, last, inlen=1024) == (B.S_IOERR, 1)
    assert r.request(B.T_IN, 1 << 62, inlen=512)[0] == B.S_IOERR
    assert r.request(B.T_OUT, last + 1, out=b"x" * 512)[0] == B.S_IOERR
    assert r.request(B.T_IN, 0, inlen=100)[0] == B.S_IOERR  # not a multiple of 512
    assert os.path.getsize(image) == DISK


def test_read_only_drive(image: Path) -> None:
    before = image.read_bytes()
    r = Rig(image, readonly=True)
    assert r.dev.features & (1 << B.VIRTIO_BLK_F_RO)
    assert r.request(B.T_OUT, 0, out=b"\xff" * 512) == (B.S_IOERR, 1)
    assert r.request(B.T_WRITE_ZEROES, out=struct.pack("<QII", 0, 8, 0))[0] == B.S_IOERR
    assert r.request(B.T_DISCARD, out=struct.pack("<QII", 0, 8, 0))[0] == B.S_IOERR
    assert r.request(B.T_IN, 0, inlen=512)[0] == B.S_OK
    assert image.read_bytes() == before


def test_get_id(image: Path) -> None:
    r = Rig(image, serial="refvm-disk-0")
    r.mem.fill(DATA, 64, 0xAA)
    assert r.request(B.T_GET_ID, inlen=20) == (B.S_OK, 21)
    assert r.mem.read(DATA, 21) == b"refvm-disk-0".ljust(20, b"\0") + b"\xaa"
    r2 = Rig(image, serial="0123456789abcdefghijKLMN")  # 20 bytes, no NUL (5.2.6)
    assert r2.request(B.T_GET_ID, inlen=20)[0] == B.S_OK
    assert r2.mem.read(DATA, 20) == b"0123456789abcdefghij"
    r2.mem.fill(DATA, 64, 0xAA)
    assert r2.request(B.T_GET_ID, inlen=8) == (B.S_OK, 9)  # never beyond the buffer
    assert r2.mem.read(DATA, 9) == b"01234567\xaa"


def test_unsupported_types(image: Path) -> None:
    r = Rig(image)
    for t in (2, 3, 6, 0x20, 14):
        assert r.request(t)[0] == B.S_UNSUPP, t


def test_discard_and_write_zeroes(image: Path) -> None:
    r = Rig(image)
    assert r.request(B.T_WRITE_ZEROES, out=struct.pack("<QII", 0, 8, 0)) == (B.S_OK, 1)
    assert image.read_bytes()[:4096] == bytes(4096)
    assert r.request(B.T_WRITE_ZEROES, out=struct.pack("<QII", 8, 8, B.WRITE_ZEROES_FLAG_UNMAP))[0] == B.S_OK
    assert image.read_bytes()[4096:8192] == bytes(4096)
    assert r.request(B.T_DISCARD, out=struct.pack("<QII", 16, 8, 0))[0] == B.S_OK
    # 5.2.6.2: unmap on discard and unknown flags are UNSUPP
    assert r.request(B.T_DISCARD, out=struct.pack("<QII", 16, 8, 1))[0] == B.S_UNSUPP
    assert r.request(B.T_WRITE_ZEROES, out=struct.pack("<QII", 16, 8, 2))[0] == B.S_UNSUPP
    # two segments exceed max_*_seg = 1 (QEMU: UNSUPP); beyond capacity or the sector limit: IOERR
    assert r.request(B.T_DISCARD, out=struct.pack("<QII", 0, 1, 0) * 2)[0] == B.S_UNSUPP
    assert r.request(B.T_DISCARD, out=struct.pack("<QII", DISK // 512, 1, 0))[0] == B.S_IOERR
    assert r.request(B.T_WRITE_ZEROES, out=struct.pack("<QII", 0, B.MAX_REQUEST_SECTORS + 1, 0))[0] == B.S_IOERR
    assert os.path.getsize(image) == DISK


def test_discard_off_property(image: Path) -> None:
    r = Rig(image, features=MODERN, discard="off", **{"write-zeroes": "off"})
    assert not r.dev.features & ((1 << B.VIRTIO_BLK_F_DISCARD) | (1 << B.VIRTIO_BLK_F_WRITE_ZEROES))
    assert r.request(B.T_DISCARD, out=struct.pack("<QII", 0, 1, 0))[0] == B.S_UNSUPP
    assert r.dev.config_read(36, 4) == 0


@pytest.mark.parametrize("layout", ["short_header", "no_status", "readable_status"])
def test_malformed_request_needs_reset(image: Path, layout: str) -> None:
    r = Rig(image)
    cfg_irqs: list[int] = []
    r.dev.on_config_change = lambda: cfg_irqs.append(1)
    r.mem.write(HDR, struct.pack("<IIQ", B.T_IN, 0, 0))
    if layout == "short_header":
        elems = [(HDR, 12, False), (STATUS, 1, True)]
    elif layout == "no_status":
        elems = [(HDR, 16, False)]
    else:
        elems = [(HDR, 16, False), (STATUS, 1, False)]
    r.drv.chain(0, elems)
    r.drv.publish(0)
    r.dev.queue_notify(0)
    assert r.dev.status & S.DEVICE_NEEDS_RESET and cfg_irqs == [1]
    assert r.drv.used_idx() == 0


def test_writeback_config_byte(image: Path) -> None:
    r = Rig(image)
    assert r.dev.config_read(32, 1) == 1
    r.dev.config_write(32, 1, 0)
    assert r.dev.config_read(32, 1) == 0 and not r.dev.writeback
    assert r.request(B.T_OUT, 0, out=b"w" * 512)[0] == B.S_OK
    # without CONFIG_WCE the byte is read-only and caching follows FLUSH (QEMU)
    r2 = Rig(image, features=MODERN)
    r2.dev.config_write(32, 1, 1)
    assert r2.dev.config_read(32, 1) == 0 and r2.dev.violations


def test_create_errors(image: Path) -> None:
    mem = make_mem()
    with RawFile(str(image)) as be:
        with pytest.raises(ValueError, match=r"Property 'virtio-blk-pci.drive' can't find value 'x'"):
            VirtioBlk.create(mem, {"drive": "x"}, drives={"d0": be})
        with pytest.raises(ValueError, match="drive property not set"):
            VirtioBlk.create(mem, {}, drives={"d0": be})
        with pytest.raises(ValueError, match=r"'virtio-blk-pci.bogus' not found"):
            VirtioBlk.create(mem, {"drive": "d0", "bogus": "1"}, drives={"d0": be})
        with pytest.raises(ValueError, match="discard"):
            VirtioBlk.create(mem, {"drive": "d0", "discard": "maybe"}, drives={"d0": be})
        with pytest.raises(ValueError, match="queue-size"):
            VirtioBlk.create(mem, {"drive": "d0", "queue-size": "100"}, drives={"d0": be})
        dev = VirtioBlk.create(mem, {"drive": "d0", "queue-size": "128", "addr": "04.0"}, drives={"d0": be})
        assert dev.queue_max_sizes == (128,) and dev.config_read(12, 4) == 126
