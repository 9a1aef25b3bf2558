"""Each CPU model's CPUID, leaf by leaf, as the guest reads it: identity, brand string and feature words.

Expected values come from conformance/cpu/tables.py (the model) ANDed with the host KVM's
KVM_GET_SUPPORTED_CPUID (conformance/cpu/host.py): a VMM on KVM can give no more than that.
"""

from __future__ import annotations

import pytest

from conformance.cpu import host
from conformance.cpu.tables import HYPERVISOR, MODELS, WORD_REGS
from conformance.verdicts import expect

pytestmark = [pytest.mark.kvm, pytest.mark.guest]

#: The models the issue names first, then the usual others.
MODEL_NAMES = ["qemu64", "kvm64", "Nehalem", "SandyBridge", "Haswell", "EPYC", "qemu32", "Westmere", "IvyBridge",
               "Skylake-Client", "Opteron_G3"]


def _vendor_regs(vendor: str) -> tuple[int, int, int]:
    raw = vendor.encode()
    return tuple(int.from_bytes(raw[i : i + 4], "little") for i in (0, 4, 8))  # type: ignore[return-value]


@pytest.mark.clause("refvm-cpu", "model/identity")
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_vendor_and_highest_leaves(cpu_guest, name: str) -> None:
    """Under KVM the guest is told the host's vendor, whatever the model's (QEMU: syscall/sysenter in
    compatibility mode work only on their own vendor's CPUs); `vendor=` overrides it (test_flags)."""
    model = MODELS[name]
    guest = cpu_guest("-cpu", name)
    b, d, c = _vendor_regs(host.vendor())
    expect(guest.cpuid(0) == (model.level, b, c, d), f"CPUID.0 = {guest.cpuid(0)}: want level {model.level:#x}, "
           f"vendor {host.vendor()}")
    eax, *vendor = guest.cpuid(0x80000000)
    expect(eax == model.xlevel, f"CPUID.80000000H:EAX = {eax:#x}, want {model.xlevel:#x}")


@pytest.mark.clause("refvm-cpu", "model/identity")
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_family_model_stepping(cpu_guest, name: str) -> None:
    model = MODELS[name]
    guest = cpu_guest("-cpu", name)
    eax = guest.reg(1, 0, "eax")
    expect(eax == model.signature, f"CPUID.01H:EAX = {eax:#010x}, want {model.signature:#010x} (family "
           f"{model.family} model {model.model:#x} stepping {model.stepping})")
    if model.xlevel >= 0x80000001:
        ext = guest.reg(0x80000001, 0, "eax")
        expect(ext == model.signature, f"CPUID.80000001H:EAX = {ext:#010x}, want {model.signature:#010x}")


@pytest.mark.clause("refvm-cpu", "model/brand-string")
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_brand_string(cpu_guest, name: str) -> None:
    model = MODELS[name]
    guest = cpu_guest("-cpu", name)
    raw = b"".join(r.to_bytes(4, "little") for leaf in (0x80000002, 0x80000003, 0x80000004)
                   for r in guest.cpuid(leaf))
    expect(raw.rstrip(b"\0").decode("ascii", "replace") == model.brand, f"brand string {raw!r}, want {model.brand!r}")


@pytest.mark.clause("refvm-cpu", "model/leaf1-ebx")
@pytest.mark.parametrize("name", ["qemu64", "Haswell", "EPYC"])
def test_leaf1_ebx_of_single_cpu(cpu_guest, name: str) -> None:
    ebx = cpu_guest("-cpu", name).reg(1, 0, "ebx")
    expect(ebx >> 8 & 0xFF == 8, f"CPUID.01H:EBX[15:8] (CLFLUSH line size / 8) = {ebx >> 8 & 0xFF}, want 8")
    expect(ebx >> 24 == 0, f"CPUID.01H:EBX[31:24] (initial APIC id of the boot CPU) = {ebx >> 24}, want 0")
    expect(ebx >> 16 & 0xFF == 0, f"CPUID.01H:EBX[23:16] = {ebx >> 16 & 0xFF} with one logical processor")


def expected_word(name: str, key: str) -> int:
    leaf, sub, reg = WORD_REGS[key]
    model_bits = MODELS[name].word(key, host.vendor())
    value = model_bits & host.supported(leaf, sub, reg)
    if key == "1_ecx":
        value |= HYPERVISOR & model_bits
    return value


@pytest.mark.clause("refvm-cpu", "model/features")
@pytest.mark.parametrize("key", list(WORD_REGS))
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_feature_word(cpu_guest, name: str, key: str) -> None:
    leaf, sub, reg = WORD_REGS[key]
    model = MODELS[name]
    if leaf > 0x80000000 and leaf > model.xlevel or leaf < 0x40000000 and leaf > model.level:
        pytest.skip(f"{name} has no leaf {leaf:#x} (highest {model.level:#x}/{model.xlevel:#x})")
    mask = host.honoured_mask(leaf, sub, reg)
    if not mask:
        pytest.skip(f"kvm-pvm shows the guest the host CPU's CPUID.{leaf:02X}H:{reg.upper()}, not the VMM's table")
    got = cpu_guest("-cpu", name).reg(leaf, sub, reg) & mask
    want = expected_word(name, key) & mask
    expect(got == want, f"{name} CPUID.{leaf:02X}H.{sub}:{reg.upper()} & {mask:#x} = {got:#010x}, want "
           f"{want:#010x} (model & host KVM); extra {got & ~want:#x}, missing {want & ~got:#x}")
