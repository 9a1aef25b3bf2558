"""refvm's ACPI tables read back by ACPICA's disassembler (iasl -d, the reference ACPI implementation's
parser): an independent check that each table's layout is what the spec says, not what our code assumes."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from refvm.devices.acpi.tables import build_acpi
from tests.conftest import require


def _tables(apic_ids: list[int]) -> dict[str, bytes]:
    layout = build_acpi(0xE0000, apic_ids)
    blob, base = layout.blob, layout.base

    def table(addr: int) -> bytes:
        off = addr - base
        return blob[off : off + struct.unpack_from("<I", blob, off + 4)[0]]

    rsdt = table(struct.unpack_from("<I", blob, 16)[0])
    fadt, madt = (table(a) for a in struct.unpack_from("<II", rsdt, 36))
    return {"rsdt": rsdt, "xsdt": table(struct.unpack_from("<Q", blob, 24)[0]), "facp": fadt, "apic": madt,
            "dsdt": table(struct.unpack_from("<I", fadt, 40)[0])}  # fmt: skip


@pytest.fixture(scope="module")
def disassembled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    require(shutil.which("iasl") is not None, "iasl (apt: acpica-tools) is not installed")
    out = tmp_path_factory.mktemp("acpi")
    texts = {}
    for name, data in _tables([0, 1, 2]).items():
        path = Path(out, f"{name}.dat")
        path.write_bytes(data)
        proc = subprocess.run(["iasl", "-d", str(path)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        texts[name] = path.with_suffix(".dsl").read_text()
    return texts


def test_no_table_draws_a_complaint(disassembled: dict[str, str]) -> None:
    for name, text in disassembled.items():
        assert not re.search(r"\*\*\*\*|Invalid|Incorrect checksum", text), f"{name}: {text[:3000]}"


def test_madt_as_acpica_reads_it(disassembled: dict[str, str]) -> None:
    text = disassembled["apic"]
    assert text.count("[Processor Local APIC]") == 3
    assert re.search(r"Local Apic ID : 02", text)
    assert "[I/O APIC]" in text and re.search(r"Address : FEC00000", text)


def test_fadt_and_dsdt_as_acpica_reads_them(disassembled: dict[str, str]) -> None:
    fadt = disassembled["facp"]
    assert re.search(r"PM1A Event Block Address : 00000600", fadt)
    assert re.search(r"PM1A Control Block Address : 00000604", fadt)
    assert re.search(r"SCI Interrupt : 0009", fadt)
    assert re.search(r"Name \(\\_S5, Package \(0x04\)", disassembled["dsdt"])
