"""`-cpu host` (and `max`, the same under KVM): the host's identity and every feature its KVM supports."""

from __future__ import annotations

import pytest

from conformance.cpu import host
from conformance.cpu.tables import FLAGS, WORD_REGS
from conformance.drivers.console import ConsoleError
from conformance.verdicts import Known, expect, known

pytestmark = [pytest.mark.kvm, pytest.mark.guest]

QEMU_HOST_ABORTS = Known(
    target="qemu", kind="policy", behaviour="qemu-cpu-host-aborts-on-kvm-pvm",
    sentence="refvm-cpu model/host: -cpu host starts the guest with the host's identity and its KVM's features",
    reason="QEMU 7.2 aborts at start on kvm-pvm: it writes MSR 0x10a (IA32_ARCH_CAPABILITIES), which kvm-pvm "
           "refuses (DESIGN.md 3)",
    component="host KVM (kvm-pvm)")


@pytest.mark.clause("refvm-cpu", "model/host")
@pytest.mark.parametrize("model", ["host", "max"])
def test_host_model_is_the_host(request, target, cpu_guest, model: str) -> None:  # noqa: ANN001
    if host.is_kvm_pvm():
        known(request, target, QEMU_HOST_ABORTS)
    try:
        guest = cpu_guest("-cpu", model)
    except ConsoleError as err:
        expect(False, f"-cpu {model} did not boot: {str(err).splitlines()[0]}")
    level, *_ = guest.cpuid(0)
    expect(level == host.supported(0, 0, "eax"), f"CPUID.0:EAX {level:#x}, host KVM {host.supported(0, 0, 'eax'):#x}")
    expect(guest.reg(1, 0, "eax") == host.supported(1, 0, "eax"), "CPUID.1:EAX is not the host's signature")
    for name, (key, bit) in FLAGS.items():
        leaf, sub, reg = WORD_REGS[key]
        if host.honoured_mask(leaf, sub, reg) >> bit & 1:
            want = bool(host.supported(leaf, sub, reg) >> bit & 1) or name == "hypervisor"
            got = bool(guest.reg(leaf, sub, reg) >> bit & 1)
            expect(got == want, f"-cpu {model}: {name} is {got}, the host KVM {'has' if want else 'lacks'} it")
