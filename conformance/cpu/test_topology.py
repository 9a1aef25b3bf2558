"""-smp topology as the guest reads it in CPUID: leaf 1 EBX/EDX.HTT, leaf 4 sharing fields, leaf 0xB levels
(Intel SDM vol. 2A CPUID; vol. 3A 8.9), and AMD's 0x80000008 ECX and 0x8000001E (AMD APM vol. 3 E.4.7, E.4.15).

The probe guest runs on the boot CPU, whose APIC id is 0; the APIC-id layout of the other CPUs is what the
shift counts of leaf 0xB (and leaf 4's fields) tell the guest.
"""

from __future__ import annotations

import pytest

from conformance.cpu.rules import TOPOLOGIES, Smp
from conformance.verdicts import expect

pytestmark = [pytest.mark.kvm, pytest.mark.guest]
IDS = [t.line for t in TOPOLOGIES]
#: Leaf 4 is Intel's (QEMU 7.2 leaves it empty for AMD guests): the Intel leaves are read with an Intel vendor
#: whatever the host's (under KVM the guest otherwise gets the host's vendor).
INTEL = ("-cpu", "Haswell,vendor=GenuineIntel")
HTT = 1 << 28


@pytest.mark.clause("refvm-cpu", "smp/leaf1")
@pytest.mark.parametrize("smp", TOPOLOGIES, ids=IDS)
def test_leaf1_logical_count_and_htt(cpu_guest, smp: Smp) -> None:
    eax, ebx, ecx, edx = cpu_guest(*INTEL, "-smp", smp.line).cpuid(1)
    count = ebx >> 16 & 0xFF
    want = smp.per_package if smp.per_package > 1 else 0
    expect(count == want, f"CPUID.01H:EBX[23:16] = {count}, want {want} logical processors per package")
    expect(ebx >> 24 == 0, f"boot CPU's initial APIC id {ebx >> 24}, want 0")


@pytest.mark.clause("refvm-cpu", "smp/leaf4")
@pytest.mark.parametrize("smp", TOPOLOGIES, ids=IDS)
def test_leaf4_cores_and_sharing(cpu_guest, smp: Smp) -> None:
    """EAX[31:26] = cores per package - 1; EAX[25:14] = logical processors sharing the cache - 1 (QEMU 7.2:
    1 for L1, the core's threads for L2, the package for L3); EAX[4:0] type, [7:5] level."""
    guest = cpu_guest(*INTEL, "-smp", smp.line)
    sharing = {1: 1, 2: smp.threads, 3: 1 << smp.package_shift}
    for sub, (ctype, level) in enumerate(((1, 1), (2, 1), (3, 2), (3, 3))):
        eax = guest.reg(4, sub, "eax")
        expect(eax & 0x1F == ctype and eax >> 5 & 7 == level, f"CPUID.04H.{sub}:EAX = {eax:#x}: type/level")
        cores = (eax >> 26) + 1
        expect(cores == smp.dies * smp.cores, f"CPUID.04H.{sub}:EAX[31:26]+1 = {cores}, want {smp.dies * smp.cores}")
        shared = (eax >> 14 & 0xFFF) + 1
        expect(shared == sharing[level], f"CPUID.04H.{sub}:EAX[25:14]+1 = {shared}, want {sharing[level]}")
    expect(guest.reg(4, 4, "eax") & 0x1F == 0, "CPUID.04H.4 must be the end of the list (type 0)")


@pytest.mark.clause("refvm-cpu", "smp/leaf-b")
@pytest.mark.parametrize("smp", TOPOLOGIES, ids=IDS)
def test_leafb_levels(cpu_guest, smp: Smp) -> None:
    guest = cpu_guest(*INTEL, "-smp", smp.line)
    want = {
        0: (smp.smt_shift, smp.threads, 0 | 1 << 8),
        1: (smp.package_shift, smp.per_package, 1 | 2 << 8),
        2: (0, 0, 2),
    }
    for sub, (shift, count, ecx) in want.items():
        eax, ebx, got_ecx, edx = guest.cpuid(0xB, sub)
        expect((eax & 0x1F, ebx & 0xFFFF, got_ecx & 0xFFFF) == (shift, count, ecx),
               f"CPUID.0BH.{sub} = eax {eax:#x} ebx {ebx:#x} ecx {got_ecx:#x}: want shift {shift}, "
               f"{count} logical processors, ecx {ecx:#x}")
        expect(edx == 0, f"CPUID.0BH.{sub}:EDX (x2APIC id of the boot CPU) = {edx}, want 0")


@pytest.mark.clause("refvm-cpu", "smp/amd")
@pytest.mark.parametrize("smp", TOPOLOGIES, ids=IDS)
def test_amd_core_count_and_topology_extensions(cpu_guest, smp: Smp) -> None:
    guest = cpu_guest("-cpu", "EPYC", "-smp", smp.line)
    nc = guest.reg(0x80000008, 0, "ecx") & 0xFF
    want = smp.per_package - 1
    expect(nc == want, f"CPUID.80000008H:ECX[7:0] (NC) = {nc}, want {want}")
    eax, ebx, ecx, edx = guest.cpuid(0x8000001E)
    expect(eax == 0, f"CPUID.8000001EH:EAX (extended APIC id of the boot CPU) = {eax}, want 0")
    expect(ebx >> 8 & 0xFF == smp.threads - 1, f"CPUID.8000001EH:EBX[15:8] (threads per core - 1) = "
           f"{ebx >> 8 & 0xFF}, want {smp.threads - 1}")
    expect(ebx & 0xFF == 0, f"CPUID.8000001EH:EBX[7:0] (core id of the boot CPU) = {ebx & 0xFF}, want 0")
