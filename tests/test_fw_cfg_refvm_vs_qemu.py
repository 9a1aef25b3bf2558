"""Differential: libqos-style fw_cfg reads and the CMOS bytes, on refvm (`-accel qtest`) and QEMU 7.2 (`-accel tcg
-S`), both started as libqtest starts QEMU (the VMM dials the test's qtest and QMP sockets).

Compared: signature, id, UUID, RAM size, nb_cpus, max_cpus, the files both must have (bootorder, etc/e820's RAM
entries, both SMBIOS files byte for byte), query-uuid, and CMOS bytes 0x0E-0x7F (the BIOS-left memory sizes and
the rest; the time registers run on different clocks). QEMU's directory has more files (SeaBIOS's ACPI
loader, option ROMs): refvm needs none of them, see the README's deliberate differences.
"""

from __future__ import annotations

import shutil
import struct

import pytest

from conformance.drivers.fw_cfg import ID, MAX_CPUS, NB_CPUS, RAM_SIZE, SIGNATURE, UUID, FwCfgPio
from conformance.drivers.libqtest import LibqtestSession
from conformance.targets import qemu_target, refvm_target
from tests.conftest import require

ARGS = [
    ["-m", "256", "-smp", "2"],
    ["-m", "5G", "-uuid", "1f8e6f7e-5a70-4780-89c1-464dc0e7f308",
     "-smbios", "type=1,manufacturer=OpenStack Foundation,product=OpenStack Nova,version=2014.1,serial=S1",
     "-smbios", "type=0,vendor=V,version=1.2,date=01/02/2003,release=1.2",
     "-smbios", "type=2,manufacturer=M2", "-smbios", "type=3,manufacturer=M3,sku=K3",
     "-smbios", "type=11,value=hello", "-smbios", "type=17,loc_pfx=SLOT,speed=1600"],
]  # fmt: skip


def _observe(target, args: list[str]) -> dict[str, object]:  # noqa: ANN001
    with LibqtestSession(name=target.name) as qt:
        qt.start(target, args)
        fw = FwCfgPio(qt)
        seen: dict[str, object] = {
            "signature": fw.get(SIGNATURE, 4),
            "id": fw.get_u32(ID),
            "uuid": fw.get(UUID, 16),
            "ram": fw.get_u64(RAM_SIZE),
            "nb_cpus": fw.get_u16(NB_CPUS),
            "max_cpus": fw.get_u16(MAX_CPUS),
            "query-uuid": qt.qmp.execute("query-uuid"),
        }
        for name in ("bootorder", "etc/smbios/smbios-anchor", "etc/smbios/smbios-tables"):
            seen[name] = fw.get_file(name)
        e820 = fw.get_file("etc/e820")
        seen["e820 ram"] = sorted(e[:2] for e in struct.iter_unpack("<QQI", e820) if e[2] == 1)
        cmos = []
        for index in range(0x0E, 0x80):
            qt.outb(0x70, index)
            cmos.append(qt.inb(0x71))
        seen["cmos"] = bytes(cmos)
        return seen


@pytest.mark.parametrize("args", ARGS, ids=["256M-2cpu", "5G-smbios"])
def test_fw_cfg_and_cmos_same_on_refvm_and_qemu(args: list[str]) -> None:
    require(shutil.which("qemu-system-x86_64") is not None, "qemu-system-x86_64 is not installed")
    refvm, qemu = _observe(refvm_target(), args), _observe(qemu_target(), args)
    assert {k: v for k, v in refvm.items() if refvm[k] != qemu[k]} == {}, {k: qemu[k] for k in qemu
                                                                           if refvm[k] != qemu[k]}  # fmt: skip
