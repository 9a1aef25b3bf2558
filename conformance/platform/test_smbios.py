"""SMBIOS structures (DMTF DSP0134) from `-smbios`, read from fw_cfg's etc/smbios files as firmware reads them.

The expected structures follow from the options given (QEMU's field names); the defaults a VMM fills in are
QEMU 7.2's, so refvm and QEMU must give the same strings."""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass

import pytest

from conformance.drivers.fw_cfg import FwCfgPio

UUID_TEXT = "1f8e6f7e-5a70-4780-89c1-464dc0e7f308"
NOVA = (
    f"type=1,manufacturer=OpenStack Foundation,product=OpenStack Nova,version=2014.1,"
    f"serial=80590690-87d2-e311-b1b0-a0481cabdfb4,uuid={UUID_TEXT}"
)


@dataclass
class Structure:
    type: int
    handle: int
    formatted: bytes
    strings: list[str]

    def string(self, offset: int) -> str | None:
        """The string a formatted-area byte at ``offset`` (from the structure start) refers to."""
        index = self.formatted[offset]
        return self.strings[index - 1] if index else None


def parse(table: bytes) -> list[Structure]:
    out, i = [], 0
    while i < len(table):
        kind, length, handle = struct.unpack_from("<BBH", table, i)
        assert length >= 4 and i + length <= len(table), f"bad structure header at {i}"
        end = table.index(b"\0\0", i + length)
        strings = table[i + length : end].split(b"\0") if end > i + length else []
        out.append(Structure(kind, handle, table[i : i + length], [s.decode() for s in strings]))
        i = end + 2
        if kind == 127:
            break
    return out


def by_type(structs: list[Structure], kind: int) -> list[Structure]:
    return [s for s in structs if s.type == kind]


@pytest.mark.clause("smbios", "type1")
@pytest.mark.clause("smbios", "entry-point")
def test_nova_type1_and_anchor(libqtest) -> None:
    fw = FwCfgPio(libqtest("-smbios", NOVA))
    table = fw.get_file("etc/smbios/smbios-tables")
    structs = parse(table)
    (t1,) = by_type(structs, 1)
    assert t1.handle == 0x100
    assert [t1.string(4), t1.string(5), t1.string(6), t1.string(7)] == [
        "OpenStack Foundation", "OpenStack Nova", "2014.1", "80590690-87d2-e311-b1b0-a0481cabdfb4",
    ]  # fmt: skip
    assert t1.formatted[8:24] == uuid.UUID(UUID_TEXT).bytes_le, "UUID in SMBIOS byte order (DSP0134 7.2.1)"
    assert structs[-1].type == 127
    anchor = fw.get_file("etc/smbios/smbios-anchor")
    assert anchor[:4] == b"_SM_" and anchor[16:21] == b"_DMI_"
    assert (anchor[6], anchor[7]) == (2, 8), "SMBIOS 2.8 entry point"
    table_len, _addr, count = struct.unpack_from("<HIH", anchor, 22)
    assert table_len == len(table) and count == len(structs)


@pytest.mark.clause("smbios", "type1")
def test_smbios_uuid_is_the_machine_uuid(libqtest) -> None:
    session = libqtest("-smbios", f"type=1,uuid={UUID_TEXT}")
    assert session.qmp.execute("query-uuid") == {"UUID": UUID_TEXT}


@pytest.mark.clause("smbios", "defaults")
def test_default_structures(libqtest) -> None:
    structs = parse(FwCfgPio(libqtest("-m", "256")).get_file("etc/smbios/smbios-tables"))
    assert [s.type for s in structs] == [1, 3, 4, 16, 17, 19, 32, 127]
    (t1,) = by_type(structs, 1)
    assert t1.strings == ["QEMU", "Standard PC (i440FX + PIIX, 1996)", "pc-i440fx-7.2"]
    (t17,) = by_type(structs, 17)
    assert struct.unpack_from("<H", t17.formatted, 12)[0] == 256, "type 17 size in MiB"
    (t19,) = by_type(structs, 19)
    assert struct.unpack_from("<II", t19.formatted, 4) == (0, 256 * 1024 - 1), "type 19 range in KiB"


@pytest.mark.clause("smbios", "types")
def test_every_option_type(libqtest) -> None:
    args = [
        "-smbios", "type=0,vendor=V0,version=1.2.3,date=01/02/2003,release=4.5",
        "-smbios", "type=2,manufacturer=M2,product=P2,version=V2,serial=S2,asset=A2,location=L2",
        "-smbios", "type=3,manufacturer=M3,version=V3,serial=S3,asset=A3,sku=K3",
        "-smbios", "type=4,sock_pfx=SOCK,manufacturer=M4,max-speed=3000,current-speed=2500",
        "-smbios", "type=11,value=hello,value=world",
        "-smbios", "type=17,loc_pfx=SLOT,bank=B,manufacturer=M17,serial=S17,asset=A17,part=P17,speed=1600",
    ]  # fmt: skip
    structs = parse(FwCfgPio(libqtest(*args)).get_file("etc/smbios/smbios-tables"))
    (t0,) = by_type(structs, 0)
    assert [t0.string(4), t0.string(5), t0.string(8)] == ["V0", "1.2.3", "01/02/2003"]
    assert (t0.formatted[20], t0.formatted[21]) == (4, 5), "release=4.5: BIOS major/minor release"
    (t2,) = by_type(structs, 2)
    assert t2.strings == ["M2", "P2", "V2", "S2", "A2", "L2"]
    (t3,) = by_type(structs, 3)
    assert t3.strings == ["M3", "V3", "S3", "A3", "K3"]
    (t4,) = by_type(structs, 4)
    assert t4.string(4) == "SOCK 0" and t4.string(7) == "M4"
    assert struct.unpack_from("<HH", t4.formatted, 20) == (3000, 2500)
    (t11,) = by_type(structs, 11)
    assert t11.formatted[4] == 2 and t11.strings == ["hello", "world"]
    (t17,) = by_type(structs, 17)
    assert t17.strings == ["SLOT 0", "B", "M17", "S17", "A17", "P17"]
    assert struct.unpack_from("<H", t17.formatted, 0x15)[0] == 1600
