"""The KVM state ioctls on the real /dev/kvm: what a set writes, a get (or the guest) reads back.

Round trips (set then get gives the same bytes), a value changed through a set observed by a get of
another view (XSAVE against FPU) or by the guest itself (the in-kernel PIC's mask register, read by the
guest with `in`), and the MSR index list as a save/restore set that KVM_GET_MSRS accepts.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from test_kvm_vm import Guest, kvm  # noqa: F401 - the kvm fixture, and one-vCPU real-mode guests

from refvm.kvm import Kvm, exits
from refvm.kvm import ioctls as I
from refvm.kvm.state import StateSizeError, blob, view
from refvm.kvm.vcpu_state import LAPIC_TPR

pytestmark = pytest.mark.kvm

MSR_SYSENTER_CS, MSR_STAR = 0x174, 0xC0000081
XSAVE_XMM0 = 160  # the legacy region's XMM0, as in FXSAVE
XSTATE_BV = 512  # the XSAVE header's bitmap of components present (bit 1: SSE); a clear bit means "init state"


@pytest.fixture
def chip_guest(kvm: Kvm) -> Iterator[Guest]:  # noqa: F811
    """A guest with the in-kernel irqchip and PIT (LAPIC, PICs, IOAPIC, i8254 live in the kernel)."""
    g = Guest(kvm, irqchip=True)
    g.vm.create_pit2()
    yield g
    g.close()


@pytest.fixture
def guest(kvm: Kvm) -> Iterator[Guest]:  # noqa: F811
    g = Guest(kvm)
    yield g
    g.close()


def test_msr_index_list_is_readable(kvm: Kvm, guest: Guest) -> None:  # noqa: F811
    indices = kvm.msr_index_list()
    assert MSR_SYSENTER_CS in indices and MSR_STAR in indices and len(set(indices)) == len(indices)
    guest.cpu.set_msrs({MSR_SYSENTER_CS: 0x10})
    assert guest.cpu.get_msrs([MSR_SYSENTER_CS, MSR_STAR])[MSR_SYSENTER_CS] == 0x10


def test_xsave_round_trip_and_seen_by_fpu(guest: Guest) -> None:
    raw = bytearray(guest.cpu.get_xsave())
    assert len(raw) == 4096
    pattern = bytes(range(0x40, 0x50))
    raw[XSAVE_XMM0 : XSAVE_XMM0 + 16] = pattern
    raw[XSTATE_BV] |= 0x3  # x87 and SSE present: without it KVM restores SSE from its init state (zeroes)
    guest.cpu.set_xsave(bytes(raw))
    assert guest.cpu.get_xsave()[XSAVE_XMM0 : XSAVE_XMM0 + 16] == pattern
    fpu = view("struct kvm_fpu", guest.cpu.get_fpu())
    assert bytes(fpu.xmm[0]) == pattern, "XMM0 written through KVM_SET_XSAVE is not what KVM_GET_FPU reads"


def test_xcrs_round_trip(kvm: Kvm, guest: Guest) -> None:  # noqa: F811
    xcr0 = guest.cpu.get_xcrs()[0]
    assert xcr0 & 1, f"XCR0 {xcr0:#x} lacks x87, which is architecturally always on"
    guest.cpu.set_cpuid2(kvm.supported_cpuid())  # XCR0 may hold only what the guest's CPUID leaf 0xD offers
    guest.cpu.set_xcrs({0: 0x3})  # x87 | SSE
    assert guest.cpu.get_xcrs()[0] == 0x3
    with pytest.raises(ValueError, match="at most 16"):
        guest.cpu.set_xcrs({i: 1 for i in range(17)})


def test_lapic_round_trip(chip_guest: Guest) -> None:
    raw = bytearray(chip_guest.cpu.get_lapic())
    raw[LAPIC_TPR] = 0x20
    chip_guest.cpu.set_lapic(bytes(raw))
    assert chip_guest.cpu.get_lapic()[LAPIC_TPR] == 0x20
    with pytest.raises(StateSizeError, match="kvm_lapic_state: state is 1023 bytes, expected 1024"):
        chip_guest.cpu.set_lapic(bytes(raw[:-1]))


def test_vcpu_events_round_trip(chip_guest: Guest) -> None:
    ev = view("struct kvm_vcpu_events", chip_guest.cpu.get_vcpu_events())
    assert ev.nmi.masked == 0
    ev.nmi.masked = 1
    chip_guest.cpu.set_vcpu_events(blob(ev))
    assert view("struct kvm_vcpu_events", chip_guest.cpu.get_vcpu_events()).nmi.masked == 1
    ev.nmi.pending = 1  # applied only when flags say so (KVM never reports sipi_vector back: not tested)
    ev.flags = 0  # the get filled in the flags of what it reported
    chip_guest.cpu.set_vcpu_events(blob(ev))
    assert view("struct kvm_vcpu_events", chip_guest.cpu.get_vcpu_events()).nmi.pending == 0
    ev.flags = I.KVM_VCPUEVENT_VALID_NMI_PENDING
    chip_guest.cpu.set_vcpu_events(blob(ev))
    assert view("struct kvm_vcpu_events", chip_guest.cpu.get_vcpu_events()).nmi.pending == 1


def test_mp_state_round_trip(chip_guest: Guest) -> None:
    assert chip_guest.cpu.get_mp_state() == I.KVM_MP_STATE_RUNNABLE
    chip_guest.cpu.set_mp_state(I.KVM_MP_STATE_HALTED)
    assert chip_guest.cpu.get_mp_state() == I.KVM_MP_STATE_HALTED
    chip_guest.cpu.set_mp_state(I.KVM_MP_STATE_RUNNABLE)
    assert chip_guest.cpu.get_mp_state() == I.KVM_MP_STATE_RUNNABLE


def test_pic_mask_set_is_read_by_the_guest(chip_guest: Guest) -> None:
    """The master PIC's IMR restored with KVM_SET_IRQCHIP is what the guest reads from port 0x21."""
    pic = view("struct kvm_irqchip", chip_guest.vm.get_irqchip("pic-master"))
    assert pic.chip_id == I.KVM_IRQCHIP_PIC_MASTER
    pic.chip.pic.imr = 0xA5
    chip_guest.vm.set_irqchip(blob(pic))
    assert view("struct kvm_irqchip", chip_guest.vm.get_irqchip("pic-master")).chip.pic.imr == 0xA5
    chip_guest.real_mode(bytes.fromhex("e421 e610 f4"))  # in al,0x21; out 0x10,al; hlt
    e = chip_guest.cpu.run()
    assert isinstance(e, exits.IoExit) and (e.port, e.value) == (0x10, 0xA5)


def test_pic_slave_and_ioapic_round_trip(chip_guest: Guest) -> None:
    slave = view("struct kvm_irqchip", chip_guest.vm.get_irqchip("pic-slave"))
    slave.chip.pic.irq_base = 0x70
    chip_guest.vm.set_irqchip(blob(slave))
    assert view("struct kvm_irqchip", chip_guest.vm.get_irqchip("pic-slave")).chip.pic.irq_base == 0x70
    ioapic = view("struct kvm_irqchip", chip_guest.vm.get_irqchip("ioapic"))
    assert ioapic.chip.ioapic.base_address == 0xFEC00000
    ioapic.chip.ioapic.redirtbl[3] = 0x31  # vector 0x31, fixed, unmasked
    chip_guest.vm.set_irqchip(blob(ioapic))
    assert view("struct kvm_irqchip", chip_guest.vm.get_irqchip("ioapic")).chip.ioapic.redirtbl[3] == 0x31
    with pytest.raises(ValueError, match="unknown chip 'pic-third'"):
        chip_guest.vm.get_irqchip("pic-third")
    bad = view("struct kvm_irqchip")
    bad.chip_id = 7
    with pytest.raises(ValueError, match="chip_id 7 is not a PIC or the IOAPIC"):
        chip_guest.vm.set_irqchip(blob(bad))


def test_pit2_round_trip(chip_guest: Guest) -> None:
    pit = view("struct kvm_pit_state2", chip_guest.vm.get_pit2())
    ch = pit.channels[2]
    ch.count, ch.mode, ch.rw_mode, ch.gate = 0x1234, 3, 3, 0
    chip_guest.vm.set_pit2(blob(pit))
    back = view("struct kvm_pit_state2", chip_guest.vm.get_pit2()).channels[2]
    assert (back.count, back.mode, back.rw_mode, back.gate) == (0x1234, 3, 3, 0)


def test_clock_set_then_get(chip_guest: Guest) -> None:
    start = 10**12  # 1000 s of guest time
    chip_guest.vm.set_clock(start)
    now = chip_guest.vm.get_clock().clock
    assert start <= now < start + 10 * 10**9, f"kvmclock {now} after setting {start}"
