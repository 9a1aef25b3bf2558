"""vCPU, irqchip, PIT and clock state as data (refvm/migration/cpu_state.py, irqchip_state.py) on the real /dev/kvm.

A state saved from one VM, encoded as a stream section and decoded again, loads into a second VM, which then
holds the same state and (for the PIC) shows it to its guest; every bad field is one line naming it; a state
that KVM itself refuses is one line naming the section, the instance and the ioctl.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from test_kvm_vm import Guest, kvm  # noqa: F401 - the kvm fixture, and one-vCPU real-mode guests

from refvm.kvm import Kvm, caps, exits
from refvm.kvm.state import blob, view
from refvm.migration import kvm_sections
from refvm.migration.cpu_state import MSRS, ApicState, CpuState, KvmApic, KvmCpu
from refvm.migration.irqchip_state import (
    IoapicState,
    KvmClock,
    KvmclockState,
    KvmIoapic,
    KvmPic,
    KvmPit,
    PicState,
    PitState,
)
from refvm.migration.state import StateError

pytestmark = pytest.mark.kvm
MSR_SYSENTER_CS, MSR_TSC = 0x174, 0x10


@pytest.fixture
def pair(kvm: Kvm) -> Iterator[tuple[Guest, Guest]]:  # noqa: F811
    guests = []
    for _ in range(2):
        g = Guest(kvm, irqchip=True)
        g.vm.create_pit2()
        g.cpu.set_cpuid2(kvm.supported_cpuid())
        guests.append(g)
    yield guests[0], guests[1]
    for g in guests:
        g.close()


def _devices(kvm: Kvm, g: Guest) -> list:  # noqa: F811
    msrs = set(kvm.msr_index_list())
    return [KvmCpu(g.cpu, msrs, bool(kvm.check_extension(caps.KVM_CAP_XSAVE))), KvmApic(g.cpu), KvmPic(g.vm, 0),
            KvmPic(g.vm, 1), KvmIoapic(g.vm), KvmPit(g.vm), KvmClock(g.vm)]


def _through_stream(state):  # noqa: ANN001, ANN202
    """As a destination gets it: the section payload, decoded and validated."""
    return type(state).decode(state.encode(), state.VERSION)


def test_state_moves_to_a_second_vm(kvm: Kvm, pair: tuple[Guest, Guest]) -> None:  # noqa: F811
    src, dst = pair
    src.real_mode(bytes.fromhex("e421 e610 f4"))  # in al,0x21; out 0x10,al; hlt
    regs = src.cpu.get_regs()
    regs.rbx, regs.r15 = 0x1122334455667788, 0xFEEDFACE
    src.cpu.set_regs(regs)
    src.cpu.set_msrs({MSR_SYSENTER_CS: 0x10})
    src.cpu.set_debugregs({"dr0": 0x7000, "dr1": 0, "dr2": 0, "dr3": 0xFFFF_8000_0000_1000, "dr6": 0xFFFF0FF1,
                           "dr7": 0x0000_0403})  # a breakpoint armed by the guest's debugger
    ev = view("struct kvm_vcpu_events", src.cpu.get_vcpu_events())
    ev.nmi.masked = 1
    src.cpu.set_vcpu_events(blob(ev))
    lapic = bytearray(src.cpu.get_lapic())
    lapic[0x80] = 0x20  # TPR
    src.cpu.set_lapic(bytes(lapic))
    pic = view("struct kvm_irqchip", src.vm.get_irqchip("pic-master"))
    pic.chip.pic.imr = 0xA5
    src.vm.set_irqchip(blob(pic))
    src.vm.set_clock(5 * 10**12)

    saved = [dev.save() for dev in _devices(kvm, src)]
    cpu_state = saved[0]
    assert cpu_state.msrs_present >> [n for n, _ in MSRS].index("tsc") & 1, "the TSC was not saved"
    dst_devices = _devices(kvm, dst)
    dst_devices[0].load(_through_stream(cpu_state))
    dst_devices[1].load(_through_stream(saved[1]))
    dst_devices[0].load_late(_through_stream(cpu_state))
    for dev, state in zip(dst_devices[2:], saved[2:], strict=True):
        dev.load(_through_stream(state))

    again = [dev.save() for dev in _devices(kvm, dst)]
    moving = {"msr_tsc"}  # the TSC runs on
    assert {k: v for k, v in dataclasses.asdict(again[0]).items() if k not in moving} == \
        {k: v for k, v in dataclasses.asdict(cpu_state).items() if k not in moving}
    assert again[0].msr_tsc >= cpu_state.msr_tsc
    assert (again[0].dr3, again[0].dr7) == (0xFFFF_8000_0000_1000, 0x403)
    assert again[0].tsc_khz == cpu_state.tsc_khz > 0
    assert again[1:5] == saved[1:5]  # LAPIC page, both PICs, IOAPIC
    assert again[5].ch2_count == saved[5].ch2_count and again[5].flags == saved[5].flags
    assert 5 * 10**12 <= again[6].clock < 5 * 10**12 + 10 * 10**9
    dst.mem[:] = src.mem[:]  # what the RAM section carries
    e = dst.cpu.run()  # the guest on the second VM reads the PIC mask the first one had
    assert isinstance(e, exits.IoExit) and (e.port, e.value) == (0x10, 0xA5)


BAD_FIELDS = [
    (CpuState, "cs_attr", 0x100, "field 'cs_attr': 256 is not VMX access rights"),
    (CpuState, "mp_state", 9, "field 'mp_state': 9 is not an x86 KVM_MP_STATE"),
    (CpuState, "rflags", 0, "field 'rflags': 0 is not with bit 1 set"),
    (CpuState, "fpu", b"\0" * 100, "field 'fpu': .* is not a kvm_fpu"),
    (CpuState, "msrs_present", 1 << 63, "field 'msrs_present'"),
    (CpuState, "dr7", 1 << 32, "field 'dr7': 4294967296 is not a 32-bit value"),
    (CpuState, "nmi_pending", 2, "field 'nmi_pending': 2 is not a bool"),
    (ApicState, "regs", b"\0" * 1023, "section 'apic': field 'regs'"),
    (PicState, "irq_base", 0x23, "section 'i8259': field 'irq_base': 35 is not a multiple of 8"),
    (IoapicState, "base_address", 0, "section 'ioapic': field 'base_address'"),
    (PitState, "ch1_count", 0x10001, "section 'i8254': field 'ch1_count'"),
    (PitState, "ch0_elapsed_ns", 1 << 63, "field 'ch0_elapsed_ns'"),
    (KvmclockState, "clock", -1, "section 'kvmclock': field 'clock'"),
]


@pytest.mark.parametrize("cls,field,value,message", BAD_FIELDS, ids=[f"{c.VMSD_NAME}-{f}" for c, f, _, _ in BAD_FIELDS])
def test_bad_field_is_one_line_naming_it(cls, field: str, value, message: str) -> None:  # noqa: ANN001
    state = dataclasses.replace(cls(fpu=bytes(4096)) if cls is CpuState else cls(), **{field: value})
    with pytest.raises(StateError, match=message.replace("(", r"\(")) as err:
        state.validate()
    assert "\n" not in str(err.value)


def test_truncated_cpu_section_names_field() -> None:
    payload = CpuState(fpu=bytes(4096)).encode()
    with pytest.raises(StateError, match=r"section 'cpu': field '\w+'"):
        CpuState.decode(payload[:300], 1)


def test_state_kvm_refuses_is_one_line(kvm: Kvm, pair: tuple[Guest, Guest]) -> None:  # noqa: F811
    src, dst = pair
    state = dataclasses.replace(_devices(kvm, src)[0].save(), cr0=0x80000000)  # paging without protection
    with pytest.raises(StateError, match=r"section 'cpu' instance 0: KVM refused the state: KVM_SET_SREGS failed"):
        _devices(kvm, dst)[0].load(state)


def test_a_tsc_frequency_kvm_cannot_give_is_a_warning_as_in_qemu(
        kvm: Kvm, pair: tuple[Guest, Guest], capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    """A source whose TSC ran slower than this host's, with no TSC scaling here (kvm-pvm has none): QEMU warns and
    the guest goes on at the host's frequency; so does refvm (the rest of the state loads)."""
    from refvm.kvm import caps

    if kvm.check_extension(caps.KVM_CAP_TSC_CONTROL):
        pytest.skip("this host's KVM scales the TSC: any source frequency is taken")
    src, dst = pair
    saved = _devices(kvm, src)[0].save()
    slower = dataclasses.replace(saved, tsc_khz=saved.tsc_khz // 2)
    _devices(kvm, dst)[0].load(slower)
    err = capsys.readouterr().err
    assert f"warning: TSC frequency mismatch between VM ({saved.tsc_khz // 2} kHz) and host ({saved.tsc_khz} kHz)" \
        ", and TSC scaling unavailable" in err
    assert dst.cpu.get_regs().rip == saved.rip


def _machine(accel: str, smp: int = 1) -> SimpleNamespace:
    """take_sections reads only the machine's configuration: accelerator and vCPU count."""
    return SimpleNamespace(config=SimpleNamespace(accel=accel, smp=smp))


def _section(idstr: str, instance: int, state) -> SimpleNamespace:  # noqa: ANN001
    return SimpleNamespace(idstr=idstr, instance_id=instance, version_id=1, payload=state.encode())


def test_stream_must_match_the_machine() -> None:
    cpu = _section("cpu", 0, CpuState(fpu=bytes(4096)))
    with pytest.raises(StateError, match="section 'cpu' instance 0: field 'instance id': this machine runs no KVM"):
        kvm_sections.take_sections(_machine("qtest"), [cpu])
    with pytest.raises(StateError, match="section 'cpu' instance 1: field 'instance id': no such instance here"):
        kvm_sections.take_sections(_machine("kvm"), [_section("cpu", 1, CpuState(fpu=bytes(4096)))])
    with pytest.raises(StateError, match="section 'apic' instance 0: field 'idstr': missing"):
        kvm_sections.take_sections(_machine("kvm"), [cpu])
    other = SimpleNamespace(idstr="serial@0x3f8", instance_id=0, version_id=1, payload=b"")
    states, rest = kvm_sections.take_sections(_machine("qtest"), [other])
    assert states == {} and rest == [other]
