"""-cpu flags: `+feat`, `-feat`, `feat=on|off`, QEMU's aliases, the filter through the host KVM with QEMU's
warning line, and `enforce`.

Only registers the host lets the guest see from the VMM's table are judged (conformance/cpu/host.py).
"""

from __future__ import annotations

import pytest

from conformance.cpu import host
from conformance.cpu.tables import FLAGS, LABELS, WORD_REGS
from conformance.verdicts import expect

pytestmark = [pytest.mark.kvm, pytest.mark.guest]


def flag_state(guest, name: str) -> bool:  # noqa: ANN001
    key, bit = FLAGS[name]
    leaf, sub, reg = WORD_REGS[key]
    if not host.honoured_mask(leaf, sub, reg) >> bit & 1:
        pytest.skip(f"kvm-pvm shows the guest the host CPU's {LABELS[key]}.{name}, not the VMM's table")
    return bool(guest.reg(leaf, sub, reg) >> bit & 1)


def host_has(name: str) -> bool:
    key, bit = FLAGS[name]
    leaf, sub, reg = WORD_REGS[key]
    return bool(host.supported(leaf, sub, reg) >> bit & 1) or name == "hypervisor"


@pytest.mark.clause("refvm-cpu", "flags/plus-minus")
@pytest.mark.parametrize(
    "cpu,flag,state",
    [
        ("qemu64,-lahf_lm", "lahf-lm", False),
        ("qemu64,lahf-lm=off", "lahf-lm", False),
        ("kvm64,+lahf_lm", "lahf-lm", True),
        ("kvm64,lahf_lm=on", "lahf-lm", True),
        ("qemu64,-lahf_lm,+lahf_lm", "lahf-lm", False),  # QEMU: every -feat wins over every +feat
        ("Haswell,-x2apic", "x2apic", False),
        ("qemu64,x2apic=off", "x2apic", False),
        ("qemu64,-hypervisor", "hypervisor", False),
        ("qemu64,+kvm-pv-unhalt", "kvm-pv-unhalt", True),
        ("qemu64,-kvm_steal_time", "kvm-steal-time", False),
        ("Nehalem,-nx", "nx", False),
    ],
)
def test_flag_reaches_guest(cpu_guest, cpu: str, flag: str, state: bool) -> None:
    if state and not host_has(flag):
        pytest.skip(f"the host KVM cannot give {flag}")
    guest = cpu_guest("-cpu", cpu)
    got = flag_state(guest, flag)
    expect(got == state, f"-cpu {cpu}: the guest reads {flag}={got}, want {state}")


@pytest.mark.clause("refvm-cpu", "flags/vendor")
def test_vendor_property_overrides_host_vendor(cpu_guest) -> None:
    _, b, c, d = cpu_guest("-cpu", "Haswell,vendor=GenuineIntel").cpuid(0)
    got = b"".join(r.to_bytes(4, "little") for r in (b, d, c))
    expect(got == b"GenuineIntel", f"CPUID.0 vendor {got!r} with vendor=GenuineIntel")


#: Features and the line QEMU prints when the host KVM cannot give them (name as QEMU spells it, whatever
#: alias was asked for).
FILTERED = [
    ("SandyBridge,+smx", "smx"),
    ("SandyBridge,+ds_cpl", "ds-cpl"),
    ("kvm64,+abm", "abm"),
    ("Nehalem,+pdpe1gb", "pdpe1gb"),
]


def warning_line(flag: str) -> str:
    key, bit = FLAGS[flag]
    return f"warning: host doesn't support requested feature: {LABELS[key]}.{flag} [bit {bit}]"


@pytest.mark.clause("refvm-cpu", "flags/filter")
@pytest.mark.parametrize("cpu,flag", FILTERED, ids=[f for _, f in FILTERED])
def test_unsupported_feature_is_filtered_with_a_warning(cpu_guest, cpu: str, flag: str) -> None:
    if host_has(flag):
        pytest.skip(f"the host KVM supports {flag}: nothing is filtered")
    guest = cpu_guest("-cpu", cpu)
    expect(warning_line(flag) in guest.log, f"no line '{warning_line(flag)}' in the target's output")
    key, bit = FLAGS[flag]
    leaf, sub, reg = WORD_REGS[key]
    if host.honoured_mask(leaf, sub, reg) >> bit & 1:
        expect(not guest.reg(leaf, sub, reg) >> bit & 1, f"{flag} reached the guest although the host lacks it")


@pytest.mark.clause("refvm-cpu", "flags/enforce")
def test_enforce_refuses_to_start_without_a_feature(start_cpu) -> None:
    if host_has("smx"):
        pytest.skip("the host KVM supports smx")
    con = start_cpu("-cpu", "SandyBridge,+smx,enforce")
    status = con.wait_exit(timeout=60)
    expect(status == 1, f"exit status {status} with enforce and a filtered feature, want 1")
    expect("Host doesn't support requested features" in con.transcript, "no enforce error line")
    expect(warning_line("smx") in con.transcript, "enforce did not name the missing feature")


@pytest.mark.clause("refvm-cpu", "flags/enforce")
def test_enforce_starts_when_everything_is_there(cpu_guest) -> None:
    """qemu64 without pni (which kvm-pvm lacks) asks only for what the host gives: enforce boots it."""
    wanted = {"1_ecx": 0x80202000, "1_edx": 0x078BFBFD, "x1_ecx": 0x1, "x1_edx": 0x20100800}
    missing = {k: v & ~host.supported(*WORD_REGS[k]) & ~(1 << 31) for k, v in wanted.items()}
    if any(missing.values()):
        pytest.skip(f"the host KVM lacks part of qemu64: {missing}")
    guest = cpu_guest("-cpu", "qemu64,-pni,enforce")
    expect("warning" not in guest.log.split("refvm probe guest")[0], "a warning although nothing was filtered")
