"""QEMU's fw_cfg device (docs/specs/fw_cfg.txt) read the way libqos reads it, on a machine started the way
libqtest starts one. Expected values come from the command line, so refvm and QEMU must give the same."""

from __future__ import annotations

import struct
import uuid

import pytest

from conformance.drivers.fw_cfg import (
    BOOT_MENU,
    DMA,
    DMA_ERROR,
    DMA_READ,
    DMA_SELECT,
    DMA_SKIP,
    ID,
    MAX_CPUS,
    NB_CPUS,
    NOGRAPHIC,
    RAM_SIZE,
    SIGNATURE,
    UUID,
    FwCfgPio,
    dma_transfer,
)

UUID_TEXT = "1f8e6f7e-5a70-4780-89c1-464dc0e7f308"
MIB = 1 << 20
GIB = 1 << 30


@pytest.mark.clause("refvm-platform", "libqtest/startup")
def test_libqtest_startup_serves_qtest_and_qmp(libqtest) -> None:
    session = libqtest("-uuid", UUID_TEXT)
    assert session.qmp.greeting["QMP"]["version"]["qemu"]["major"] >= 7
    assert session.qmp.execute("query-uuid") == {"UUID": UUID_TEXT}
    assert FwCfgPio(session).get(SIGNATURE, 4) == b"QEMU", "the qtest connection must reach the same machine"


@pytest.mark.clause("fw_cfg", "signature")
@pytest.mark.clause("fw_cfg", "id")
def test_signature_and_id(libqtest) -> None:
    fw = FwCfgPio(libqtest())
    assert fw.get(SIGNATURE, 4) == b"QEMU"
    features = fw.get_u32(ID)
    assert features & 0x01, "bit 0 (traditional interface) must be set"
    assert features & 0x02, "bit 1 (DMA interface) must be set when the DMA registers exist"


@pytest.mark.clause("fw_cfg", "items")
@pytest.mark.parametrize(("mem", "smp", "ram"), [("256", "2", 256 * MIB), ("5G", "1", 5 * GIB)])
def test_ram_size_and_cpus(libqtest, mem: str, smp: str, ram: int) -> None:
    fw = FwCfgPio(libqtest("-m", mem, "-smp", smp))
    assert fw.get_u64(RAM_SIZE) == ram
    assert fw.get_u16(NB_CPUS) == int(smp)
    assert fw.get_u16(MAX_CPUS) == int(smp)
    assert fw.get_u16(NOGRAPHIC) == 0
    assert fw.get_u16(BOOT_MENU) == 0


@pytest.mark.clause("fw_cfg", "items")
def test_uuid_item_and_query_uuid(libqtest) -> None:
    session = libqtest("-uuid", UUID_TEXT)
    assert FwCfgPio(session).get(UUID, 16) == uuid.UUID(UUID_TEXT).bytes  # big endian, as given
    default = libqtest()
    assert FwCfgPio(default).get(UUID, 16) == bytes(16)
    assert default.qmp.execute("query-uuid") == {"UUID": "00000000-0000-0000-0000-000000000000"}


@pytest.mark.clause("fw_cfg", "data-register")
def test_reads_past_the_end_and_unknown_items_give_zeros(libqtest) -> None:
    fw = FwCfgPio(libqtest())
    assert fw.get(SIGNATURE, 8) == b"QEMU" + bytes(4)
    assert fw.get(0x1234, 4) == bytes(4)
    fw.select(SIGNATURE)
    fw.read(2)
    fw.select(SIGNATURE)  # selecting resets the offset
    assert fw.read(4) == b"QEMU"


@pytest.mark.clause("fw_cfg", "file-directory")
def test_file_directory(libqtest) -> None:
    files = FwCfgPio(libqtest()).files()
    names = [f.name for f in files]
    for required in ("bootorder", "etc/e820", "etc/smbios/smbios-anchor", "etc/smbios/smbios-tables"):
        assert required in names
    assert names == sorted(names), "QEMU lists files sorted by name"
    assert [f.select for f in files] == list(range(0x20, 0x20 + len(files)))


@pytest.mark.clause("fw_cfg", "file-directory")
@pytest.mark.parametrize(("mem", "ram"), [("256", [(0, 256 * MIB)]), ("5G", [(0, 3 * GIB), (4 * GIB, 2 * GIB)])])
def test_e820_file_lists_ram(libqtest, mem: str, ram: list[tuple[int, int]]) -> None:
    data = FwCfgPio(libqtest("-m", mem)).get_file("etc/e820")
    assert len(data) % 20 == 0
    entries = [struct.unpack_from("<QQI", data, i) for i in range(0, len(data), 20)]
    assert sorted((addr, size) for addr, size, kind in entries if kind == 1) == ram


@pytest.mark.clause("fw_cfg", "dma")
def test_dma_read_select_and_skip(libqtest) -> None:
    session = libqtest()
    assert session.inl(DMA) == int.from_bytes(b"QEMU", "little")  # "QEMU CFG": detects the DMA interface
    assert session.inl(DMA + 4) == int.from_bytes(b" CFG", "little")
    control = dma_transfer(session, 0x1000, (SIGNATURE << 16) | DMA_SELECT | DMA_READ, 4, 0x2000)
    assert control == 0, "a completed transfer clears the control field"
    assert session.read(0x2000, 4) == b"QEMU"
    control = dma_transfer(session, 0x1000, (UUID << 16) | DMA_SELECT | DMA_SKIP, 0, 0)
    assert control == 0
    assert dma_transfer(session, 0x1000, DMA_READ, 2, 0x2000) == 0


@pytest.mark.clause("fw_cfg", "dma")
def test_dma_to_an_address_outside_ram_sets_error(libqtest) -> None:
    session = libqtest("-m", "128")
    control = dma_transfer(session, 0x1000, (SIGNATURE << 16) | DMA_SELECT | DMA_READ, 4, 0xFFFF_FFF0_0000)
    assert control & DMA_ERROR
