"""ACPI tables (ACPI 6.4 chapter 5) for the pc machine: RSDP, RSDT, XSDT, FADT, FACS, DSDT and MADT.

Just enough for a guest OS to find its processors and interrupt controllers (MADT: one Local APIC per vCPU,
the I/O APIC at 0xFEC00000, QEMU's interrupt source overrides) and to power off (FADT PM1a blocks plus a DSDT
whose `\\_S5_` package gives SLP_TYP 0, the value QEMU's PIIX4 PM treats as soft-off). The AML is written out
byte by byte below. Everything lands in one blob at a fixed base inside 0xE0000-0xFFFFF, with the RSDP on a
16-byte boundary there, where ACPI 6.4 5.2.5.1 tells an OS to search.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["AcpiLayout", "build_acpi", "PM_BASE", "SCI_IRQ", "OEM_ID"]

OEM_ID = b"REFVM "
OEM_TABLE_ID = b"REFVMPC "
CREATOR_ID = b"RFVM"
#: PIIX4 PM I/O base (the value SeaBIOS programs into QEMU's PIIX4 PM) and the SCI's ISA IRQ.
PM_BASE = 0x600
SCI_IRQ = 9
IOAPIC_ADDRESS = 0xFEC0_0000
LAPIC_ADDRESS = 0xFEE0_0000


@dataclass(frozen=True)
class AcpiLayout:
    """Where the blob goes and where its RSDP sits in it."""

    base: int
    rsdp: int
    blob: bytes


def _checksum(data: bytes) -> int:
    return (-sum(data)) & 0xFF


def _sdt(signature: bytes, revision: int, body: bytes) -> bytes:
    """A System Description Table: the 36-byte header (ACPI 6.4 5.2.6) with its checksum, then ``body``."""
    header = struct.pack("<4sIBB6s8sI4sI", signature, 36 + len(body), revision, 0, OEM_ID, OEM_TABLE_ID, 1,
                         CREATOR_ID, 1)  # fmt: skip
    table = header + body
    return table[:9] + bytes([_checksum(table)]) + table[10:]


def _gas(space: int, bits: int, address: int, access: int = 0) -> bytes:
    """A Generic Address Structure (ACPI 6.4 5.2.3.2); space 1 = system I/O."""
    return struct.pack("<BBBBQ", space, bits, 0, access, address)


def _aml_pkglength(length_of_rest: int) -> bytes:
    """AML PkgLength (ACPI 6.4 20.2.4) for a package whose contents after PkgLength are ``length_of_rest``."""
    if length_of_rest + 1 <= 0x3F:
        return bytes([length_of_rest + 1])
    total = length_of_rest + 2
    return bytes([0x40 | (total & 0x0F), total >> 4])


def dsdt_aml() -> bytes:
    """The DSDT's AML: `Name (\\_S5, Package (4) {Zero, Zero, Zero, Zero})`.

    NameOp 0x08, a root-prefixed NameSeg, PackageOp 0x12, PkgLength, NumElements, ZeroOp x4.
    """
    elements = bytes([0x04, 0x00, 0x00, 0x00, 0x00])
    return b"\x08\\_S5_" + b"\x12" + _aml_pkglength(len(elements)) + elements


def _madt(apic_ids: list[int]) -> bytes:
    body = struct.pack("<II", LAPIC_ADDRESS, 1)  # flags: PCAT_COMPAT (dual 8259s present)
    for uid, apic_id in enumerate(apic_ids):
        body += struct.pack("<BBBBI", 0, 8, uid, apic_id, 1)  # Processor Local APIC, enabled
    body += struct.pack("<BBBBII", 1, 12, 0, 0, IOAPIC_ADDRESS, 0)  # I/O APIC id 0, GSI base 0
    # Interrupt source overrides as QEMU's pc: ISA IRQ 0 -> GSI 2; the SCI and PCI link IRQs level, active high
    body += struct.pack("<BBBBIH", 2, 10, 0, 0, 2, 0)
    for irq in (5, SCI_IRQ, 10, 11):
        body += struct.pack("<BBBBIH", 2, 10, 0, irq, irq, 0x000D)
    body += struct.pack("<BBBHB", 4, 6, 0xFF, 0, 1)  # Local APIC NMI: all processors, LINT1
    return _sdt(b"APIC", 1, body)


def _fadt(facs: int, dsdt: int) -> bytes:
    """FADT revision 3 (ACPI 2.0 layout, 244 bytes) with the PIIX4 PM blocks.

    SMI_CMD is 0: the machine has no legacy (SMM) mode, so ACPI is always on and SCI_EN reads 1.
    """
    pm1a_evt, pm1a_cnt, pm_tmr = PM_BASE, PM_BASE + 4, PM_BASE + 8
    body = struct.pack("<IIBBH", facs, dsdt, 0, 0, SCI_IRQ)  # preferred PM profile: unspecified
    body += struct.pack("<IBBBB", 0, 0, 0, 0, 0)  # SMI_CMD, ACPI_ENABLE, ACPI_DISABLE, S4BIOS_REQ, PSTATE_CNT
    body += struct.pack("<8I", pm1a_evt, 0, pm1a_cnt, 0, 0, pm_tmr, 0, 0)  # PM1a/b EVT, CNT, PM2, TMR, GPE0/1
    body += struct.pack("<8B", 4, 2, 0, 4, 0, 0, 0, 0)  # PM1_EVT_LEN, PM1_CNT_LEN, PM2, TMR_LEN, GPE lens, CST
    body += struct.pack("<HHHHBBBBB", 0xFFF, 0xFFF, 0, 0, 0, 0, 0, 0, 0x32)  # no C2/C3; CENTURY at CMOS 0x32
    body += struct.pack("<HB", 0, 0)  # IAPC_BOOT_ARCH (no legacy devices claimed), reserved
    # flags: WBINVD, PROC_C1, SLP_BUTTON (no sleep button), RTC_S4, RESET_REG_SUP
    body += struct.pack("<I", (1 << 0) | (1 << 2) | (1 << 5) | (1 << 7) | (1 << 10))
    body += _gas(1, 8, 0xCF9) + struct.pack("<B3s", 0x06, bytes(3))  # RESET_REG: 0xCF9 <- 6, as QEMU's pc
    body += struct.pack("<QQ", facs, dsdt)  # X_FIRMWARE_CTRL, X_DSDT
    body += _gas(1, 32, pm1a_evt) + _gas(0, 0, 0) + _gas(1, 16, pm1a_cnt) + _gas(0, 0, 0)
    body += _gas(0, 0, 0) + _gas(1, 32, pm_tmr) + _gas(0, 0, 0) + _gas(0, 0, 0)
    return _sdt(b"FACP", 3, body)


def _facs() -> bytes:
    return struct.pack("<4sIIIII", b"FACS", 64, 0, 0, 0, 0).ljust(64, b"\0")


def _align(blob: bytearray, boundary: int) -> None:
    blob.extend(bytes(-len(blob) % boundary))


def build_acpi(base: int, apic_ids: list[int]) -> AcpiLayout:
    """Lay out every table from ``base`` (16-byte aligned): RSDP first, then FACS (64-byte aligned) and the SDTs."""
    if base % 64:
        raise ValueError("ACPI tables need a 64-byte aligned base")
    blob = bytearray(64)  # the RSDP (36 bytes) goes at the start once the addresses are known
    facs = base + len(blob)
    blob += _facs()
    dsdt = base + len(blob)
    blob += _sdt(b"DSDT", 2, dsdt_aml())
    _align(blob, 16)
    fadt = base + len(blob)
    blob += _fadt(facs, dsdt)
    _align(blob, 16)
    madt = base + len(blob)
    blob += _madt(apic_ids)
    _align(blob, 16)
    rsdt = base + len(blob)
    blob += _sdt(b"RSDT", 1, struct.pack("<II", fadt, madt))
    _align(blob, 16)
    xsdt = base + len(blob)
    blob += _sdt(b"XSDT", 1, struct.pack("<QQ", fadt, madt))
    rsdp = struct.pack("<8sB6sBI", b"RSD PTR ", 0, OEM_ID, 2, rsdt)
    rsdp = rsdp[:8] + bytes([_checksum(rsdp)]) + rsdp[9:]
    ext = rsdp + struct.pack("<IQB3s", 36, xsdt, 0, bytes(3))
    ext = ext[:32] + bytes([_checksum(ext)]) + ext[33:]
    blob[0:36] = ext
    return AcpiLayout(base, base, bytes(blob))
