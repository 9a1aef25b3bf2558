"""What refvm writes into guest memory in place of a BIOS: the SMBIOS entry point and the RSDP where a guest
scans for them, consistent with fw_cfg's copies."""

from __future__ import annotations

import struct

import pytest

from refvm.clock import VirtualClock
from refvm.config import MachineConfig
from refvm.devices.firmware import PcFirmware
from refvm.devices.irq import IrqLine
from refvm.devices.smbios import SmbiosOptions, parse_smbios
from refvm.memory import GuestMemory

MIB = 1 << 20


@pytest.fixture
def installed():
    memory = GuestMemory()
    memory.add_ram(0, 64 * MIB)
    cfg = MachineConfig(memory_bytes=64 * MIB, smp=2, uuid="1f8e6f7e-5a70-4780-89c1-464dc0e7f308")
    cfg.smbios = SmbiosOptions()
    parse_smbios("type=1,manufacturer=Acme", cfg.smbios)
    fw = PcFirmware(cfg, memory, [(0, 64 * MIB)], lambda irq: IrqLine(lambda i, lv: None, irq), VirtualClock(),
                    lambda t: None)  # fmt: skip
    fw.install()
    yield fw, memory
    memory.close()


def _scan(memory: GuestMemory, magic: bytes, start: int, end: int) -> list[int]:
    window = memory.read(start, end - start)
    return [start + i for i in range(0, len(window), 16) if window[i : i + len(magic)] == magic]


def test_smbios_entry_point_in_f_segment(installed) -> None:
    fw, memory = installed
    (at,) = _scan(memory, b"_SM_", 0xF0000, 0x100000)
    anchor = memory.read(at, 31)
    assert sum(anchor) % 256 == 0 and sum(anchor[16:31]) % 256 == 0, "both entry point checksums"
    length, address, count = struct.unpack_from("<HIH", anchor, 22)
    table = fw.fw_cfg.item(fw.fw_cfg.file_selectors()["etc/smbios/smbios-tables"])
    assert memory.read(address, length) == table and count == fw.smbios_count
    assert b"Acme" in table


def test_rsdp_in_e_segment(installed) -> None:
    _, memory = installed
    (at,) = _scan(memory, b"RSD PTR ", 0xE0000, 0x100000)
    assert sum(memory.read(at, 20)) % 256 == 0 and sum(memory.read(at, 36)) % 256 == 0
