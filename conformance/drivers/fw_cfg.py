"""libqos-style fw_cfg reads over qtest (QEMU's docs/specs/fw_cfg.txt): the selector at 0x510, the data
byte at 0x511, the file directory at selector 0x19, and the DMA interface at 0x514."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from conformance.drivers.qtest import QtestSession

SELECTOR, DATA, DMA = 0x510, 0x511, 0x514
SIGNATURE, ID, UUID, RAM_SIZE, NOGRAPHIC, NB_CPUS = 0x00, 0x01, 0x02, 0x03, 0x04, 0x05
NUMA, BOOT_MENU, MAX_CPUS, FILE_DIR = 0x0D, 0x0E, 0x0F, 0x19
DMA_ERROR, DMA_READ, DMA_SKIP, DMA_SELECT, DMA_WRITE = 0x01, 0x02, 0x04, 0x08, 0x10


@dataclass(frozen=True)
class FwCfgFile:
    name: str
    select: int
    size: int


class FwCfgPio:
    """The I/O port interface, as libqos's qfw_cfg_* helpers use it."""

    def __init__(self, qtest: QtestSession) -> None:
        self.qtest = qtest

    def select(self, key: int) -> None:
        self.qtest.outw(SELECTOR, key)

    def read(self, count: int) -> bytes:
        return bytes(self.qtest.inb(DATA) for _ in range(count))

    def get(self, key: int, count: int) -> bytes:
        self.select(key)
        return self.read(count)

    def get_u16(self, key: int) -> int:
        return struct.unpack("<H", self.get(key, 2))[0]

    def get_u32(self, key: int) -> int:
        return struct.unpack("<I", self.get(key, 4))[0]

    def get_u64(self, key: int) -> int:
        return struct.unpack("<Q", self.get(key, 8))[0]

    def files(self) -> list[FwCfgFile]:
        self.select(FILE_DIR)
        count = struct.unpack(">I", self.read(4))[0]
        assert count < 4096, f"implausible file count {count}"
        out = []
        for _ in range(count):
            entry = self.read(64)
            size, select, _reserved = struct.unpack(">IHH", entry[:8])
            out.append(FwCfgFile(entry[8:].split(b"\0", 1)[0].decode(), select, size))
        return out

    def get_file(self, name: str) -> bytes:
        for f in self.files():
            if f.name == name:
                return self.get(f.select, f.size)
        raise KeyError(f"fw_cfg has no file '{name}'")


def dma_transfer(qtest: QtestSession, desc_addr: int, control: int, length: int, address: int) -> int:
    """Write a FWCfgDmaAccess at ``desc_addr`` (guest RAM), start it, and return the control word after."""
    qtest.write(desc_addr, struct.pack(">IIQ", control, length, address))
    # The register is big endian: the guest puts the address's bytes on the bus most significant first.
    qtest.outl(DMA, int.from_bytes(struct.pack(">I", desc_addr >> 32), "little"))
    qtest.outl(DMA + 4, int.from_bytes(struct.pack(">I", desc_addr & 0xFFFF_FFFF), "little"))
    return struct.unpack(">I", qtest.read(desc_addr, 4))[0]
