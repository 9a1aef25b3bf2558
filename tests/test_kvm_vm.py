"""refvm.kvm against the real /dev/kvm: VM/vCPU lifecycle, exits, registers, MSRs, CPUID, errors.

Findings on kvm-pvm (the software KVM of the dev machine), pinned by the tests below:
- 16-bit real mode works (cs.base 0, rip 0x1000), including port I/O, MMIO exits and CPUID.
- 32-bit protected mode entered through KVM_SET_SREGS works; 64-bit long mode set up entirely through
  KVM_SET_SREGS (EFER.LME|LMA, CR0.PG, CR4.PAE, cs.l) works too — only a guest's *own* switch faults.
  But 1 GiB pages do not: kvm-pvm's KVM_GET_SUPPORTED_CPUID leaves out PDPE1GB (CPUID 0x80000001
  EDX bit 26) although the host CPU has it, and a PDPTE with PS=1 ends in a ShutdownExit (triple
  fault). Use 2 MiB pages for boot page tables.
- KVM_SET_CPUID2 is partly honoured: leaf 0 and hypervisor leaves come through as set, but leaf 1
  ECX/EDX are rewritten (KVM_GET_CPUID2 and the guest both see other feature bits) and leaf 0xD
  subleaves are appended. Also (as upstream KVM since 5.16) SET_CPUID2 after the first KVM_RUN is EINVAL
  unless the table is unchanged.
- Without the in-kernel irqchip HLT exits to userspace (HltExit); with it, it does not.
"""

from __future__ import annotations

import errno
import mmap
import os
import signal
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from refvm.kvm import CpuidEntry, Kvm, KvmError, Vcpu, Vm, caps, exits
from refvm.kvm._ffi import ffi
from refvm.kvm.ioctls import KVM_MEM_LOG_DIRTY_PAGES
from tests.conftest import require

MEM_SIZE = 0x20000
CODE = 0x1000

pytestmark = pytest.mark.kvm


@pytest.fixture
def kvm() -> Iterator[Kvm]:
    require(os.path.exists("/dev/kvm"), "/dev/kvm is missing: no KVM on this host")
    require(os.access("/dev/kvm", os.R_OK | os.W_OK), "/dev/kvm is not accessible to this user")
    k = Kvm()
    yield k
    k.close()


def host_addr(buf: mmap.mmap) -> int:
    return int(ffi.cast("uintptr_t", ffi.from_buffer(buf)))


class Guest:
    """One VM with one RAM slot at gpa 0 and one vCPU, in real mode with cs.base 0, rip CODE."""

    def __init__(self, kvm: Kvm, irqchip: bool = False) -> None:
        self.vm: Vm = kvm.create_vm()
        self.mem = mmap.mmap(-1, MEM_SIZE)
        self.vm.set_user_memory_region(0, 0, MEM_SIZE, host_addr(self.mem))
        if irqchip:
            self.vm.create_irqchip()
        self.cpu: Vcpu = self.vm.create_vcpu(0)

    def real_mode(self, code: bytes) -> None:
        self.mem[CODE : CODE + len(code)] = code
        s = self.cpu.get_sregs()
        s.cs.base, s.cs.selector = 0, 0
        self.cpu.set_sregs(s)
        r = self.cpu.get_regs()
        r.rip, r.rflags = CODE, 2
        self.cpu.set_regs(r)

    def close(self) -> None:
        self.vm.close()
        self.mem.close()


@pytest.fixture
def guest(kvm: Kvm) -> Iterator[Guest]:
    g = Guest(kvm)
    yield g
    g.close()


def test_api_version_and_mmap_size(kvm: Kvm) -> None:
    assert kvm.api_version == 12
    assert kvm.vcpu_mmap_size >= 4096 and kvm.vcpu_mmap_size % 4096 == 0


@pytest.mark.parametrize("cap", caps.REQUIRED, ids=caps.name)
def test_required_capability_present(kvm: Kvm, cap: int) -> None:
    assert kvm.check_extension(cap) > 0, f"{caps.name(cap)} missing"


def test_vcpu_limits(kvm: Kvm) -> None:
    assert kvm.check_extension(caps.KVM_CAP_NR_VCPUS) >= 1
    assert kvm.check_extension(caps.KVM_CAP_MAX_VCPUS) >= kvm.check_extension(caps.KVM_CAP_NR_VCPUS)


def test_open_missing_device_names_path() -> None:
    with pytest.raises(KvmError, match="open /nonexistent/kvm failed.*No such file"):
        Kvm("/nonexistent/kvm")


def test_real_mode_port_io_and_hlt(guest: Guest) -> None:
    # mov al,0x42; out 0x10,al; in al,0x11; out 0x12,al; hlt
    guest.real_mode(bytes.fromhex("b042 e610 e411 e612 f4"))
    e = guest.cpu.run()
    assert isinstance(e, exits.IoExit)
    assert (e.port, e.size, e.count, e.is_write, e.value) == (0x10, 1, 1, True, 0x42)
    assert bytes(e.data) == b"\x42"
    e = guest.cpu.run()
    assert isinstance(e, exits.IoExit)
    assert (e.port, e.size, e.is_write) == (0x11, 1, False)
    e.set_value(0x99)
    e = guest.cpu.run()
    assert isinstance(e, exits.IoExit)
    assert (e.port, e.is_write, e.value) == (0x12, True, 0x99)
    assert isinstance(guest.cpu.run(), exits.HltExit)
    assert guest.cpu.get_regs().rip == CODE + 9


def test_wide_and_string_io(guest: Guest) -> None:
    # mov ax,0xbeef; out 0x20,ax; mov si,0x800; mov cx,3; cld; rep outsw (port in dx=0x30); hlt
    guest.mem[0x800:0x806] = struct.pack("<3H", 1, 2, 3)
    guest.real_mode(bytes.fromhex("b8efbe e720 be0008 b90300 ba3000 fc f36f f4"))
    e = guest.cpu.run()
    assert isinstance(e, exits.IoExit) and (e.port, e.size, e.value) == (0x20, 2, 0xBEEF)
    seen: list[int] = []
    while isinstance(e := guest.cpu.run(), exits.IoExit):
        assert (e.port, e.size, e.is_write) == (0x30, 2, True)
        seen += e.values
    assert seen == [1, 2, 3]
    assert isinstance(e, exits.HltExit)


def test_mmio_exit_read_and_write(guest: Guest) -> None:
    # mov ax,0x3000; mov ds,ax; mov byte [0x10],0xab; mov al,[0x20]; out 0x12,al; hlt  (gpa 0x30000: no slot)
    guest.real_mode(bytes.fromhex("b80030 8ed8 c6061000ab a02000 e612 f4"))
    e = guest.cpu.run()
    assert isinstance(e, exits.MmioExit)
    assert (e.phys_addr, e.length, e.is_write, e.value) == (0x30010, 1, True, 0xAB)
    e = guest.cpu.run()
    assert isinstance(e, exits.MmioExit)
    assert (e.phys_addr, e.length, e.is_write) == (0x30020, 1, False)
    e.set_value(0x5C)
    e = guest.cpu.run()
    assert isinstance(e, exits.IoExit) and e.value == 0x5C


def test_protected_mode_32bit(guest: Guest) -> None:
    """Flat 32-bit protected mode set up through KVM_SET_SREGS (what the Multiboot loader does)."""
    code = bytes.fromhex("b878563412 e710 f4")  # mov eax,0x12345678; out 0x10,eax; hlt
    guest.mem[CODE : CODE + len(code)] = code
    s = guest.cpu.get_sregs()
    for seg in (s.ds, s.es, s.fs, s.gs, s.ss):
        seg.base, seg.limit, seg.selector, seg.type, seg.db, seg.g = 0, 0xFFFFFFFF, 0x10, 3, 1, 1
    s.cs.base, s.cs.limit, s.cs.selector, s.cs.type, s.cs.db, s.cs.g = 0, 0xFFFFFFFF, 0x08, 11, 1, 1
    s.cr0 |= 1
    guest.cpu.set_sregs(s)
    guest.cpu.set_regs(type(guest.cpu.get_regs())(rip=CODE, rflags=2))
    e = guest.cpu.run()
    assert isinstance(e, exits.IoExit) and (e.size, e.value) == (4, 0x12345678)
    assert isinstance(guest.cpu.run(), exits.HltExit)


def test_long_mode_through_sregs(kvm: Kvm, guest: Guest) -> None:
    """64-bit mode entered directly via KVM_SET_SREGS (how refvm starts 64-bit kernels) works on kvm-pvm.

    With 2 MiB pages; 1 GiB pages triple-fault on kvm-pvm (see test_one_gib_pages_fault_on_kvm_pvm).
    """
    guest.cpu.set_cpuid2(kvm.supported_cpuid())
    pml4, pdpt, pd = 0x8000, 0x9000, 0xA000
    guest.mem[pml4 : pml4 + 8] = struct.pack("<Q", pdpt | 3)
    guest.mem[pdpt : pdpt + 8] = struct.pack("<Q", pd | 3)
    guest.mem[pd : pd + 8] = struct.pack("<Q", 0x83)  # 2 MiB page at 0 (PS|RW|P)
    # mov rax,0x1122334455667788; shr rax,32; out 0x10,eax; hlt
    code = bytes.fromhex("48b88877665544332211 48c1e820 e710 f4")
    guest.mem[CODE : CODE + len(code)] = code
    s = guest.cpu.get_sregs()
    for seg in (s.ds, s.es, s.fs, s.gs, s.ss):
        seg.base, seg.limit, seg.selector, seg.type, seg.db, seg.g = 0, 0xFFFFFFFF, 0x10, 3, 1, 1
    s.cs.base, s.cs.limit, s.cs.selector, s.cs.type, s.cs.g = 0, 0xFFFFFFFF, 0x08, 11, 1
    s.cs.l, s.cs.db = 1, 0
    s.cr3, s.cr4, s.cr0 = pml4, 0x20, 0x80000011
    s.efer = 0x500  # LME | LMA
    guest.cpu.set_sregs(s)
    guest.cpu.set_regs(type(guest.cpu.get_regs())(rip=CODE, rflags=2))
    e = guest.cpu.run()
    assert isinstance(e, exits.IoExit) and e.value == 0x11223344, e
    assert guest.cpu.get_sregs().efer & 0x500 == 0x500


def test_one_gib_pages_fault_on_kvm_pvm(kvm: Kvm, guest: Guest) -> None:
    """Pins the kvm-pvm quirk: identity map with a 1 GiB page -> ShutdownExit. On hardware KVM it runs."""
    from refvm.kvm.doctor import detect_pvm

    if not detect_pvm():
        pytest.skip("a kvm-pvm quirk; hardware KVM runs 1 GiB pages")
    guest.cpu.set_cpuid2(kvm.supported_cpuid())
    guest.mem[0x8000:0x8008] = struct.pack("<Q", 0x9003)
    guest.mem[0x9000:0x9008] = struct.pack("<Q", 0x83)  # PDPTE: 1 GiB page at 0
    guest.mem[CODE : CODE + 3] = bytes.fromhex("e710f4")
    s = guest.cpu.get_sregs()
    s.cs.base, s.cs.limit, s.cs.selector, s.cs.type, s.cs.g, s.cs.l, s.cs.db = 0, 0xFFFFFFFF, 8, 11, 1, 1, 0
    s.cr3, s.cr4, s.cr0, s.efer = 0x8000, 0x20, 0x80000011, 0x500
    guest.cpu.set_sregs(s)
    guest.cpu.set_regs(type(guest.cpu.get_regs())(rip=CODE, rflags=2))
    assert isinstance(guest.cpu.run(), exits.ShutdownExit)


def test_regs_round_trip(guest: Guest) -> None:
    r = guest.cpu.get_regs()
    r.rax, r.rbx, r.r15, r.rip, r.rflags = 1, 0xFFFF_FFFF_FFFF_FFFF, 0x1234_5678_9ABC_DEF0, 0x2000, 0x202
    guest.cpu.set_regs(r)
    assert guest.cpu.get_regs() == r


def test_sregs_round_trip(guest: Guest) -> None:
    s = guest.cpu.get_sregs()
    s.ds.base, s.ds.selector, s.ds.limit = 0x12340, 0x1234, 0xFFFF
    s.gdt.base, s.gdt.limit = 0x5000, 0x27
    s.idt.base, s.idt.limit = 0x6000, 0x3FF
    s.cr2 = 0xDEAD000
    guest.cpu.set_sregs(s)
    back = guest.cpu.get_sregs()
    assert (back.ds, back.gdt, back.idt, back.cr2) == (s.ds, s.gdt, s.idt, s.cr2)
    assert back.cs == s.cs and back.cr0 == s.cr0 and back.efer == s.efer


def test_msrs(guest: Guest) -> None:
    sysenter = {0x174: 8, 0x175: 0x1234, 0x176: 0x5678}  # IA32_SYSENTER_CS/ESP/EIP
    guest.cpu.set_msrs(sysenter)
    assert guest.cpu.get_msrs(list(sysenter)) == sysenter
    with pytest.raises(KvmError, match=r"KVM_GET_MSRS.*MSR 0xdeadbeef"):
        guest.cpu.get_msrs([0x174, 0xDEADBEEF])


def test_cpuid(kvm: Kvm, guest: Guest) -> None:
    supported = kvm.supported_cpuid()
    assert supported and supported[0].function == 0 and supported[0].eax >= 1
    vendor = struct.pack("<3I", supported[0].ebx, supported[0].edx, supported[0].ecx)
    assert vendor in (b"GenuineIntel", b"AuthenticAMD", b"HygonGenuine", b"CentaurHauls")
    table = [CpuidEntry(0, eax=5, ebx=0x11223344, ecx=1, edx=2), CpuidEntry(0x40000000, eax=0x40000000,
             ebx=0x76666572)]  # fmt: skip
    guest.cpu.set_cpuid2(table)
    back = {(e.function, e.index): e for e in guest.cpu.get_cpuid2()}
    assert back[(0, 0)] == table[0] and back[(0x40000000, 0)] == table[1]
    # xor eax,eax; cpuid; out 0x10,eax; mov eax,ebx; out 0x10,eax; hlt -> the guest sees our leaf 0
    guest.real_mode(bytes.fromhex("6631c0 0fa2 66e710 6689d8 66e710 f4"))
    seen = []
    for _ in range(2):
        e = guest.cpu.run()  # read each value before the next run(): data lives in the kvm_run page
        assert isinstance(e, exits.IoExit)
        seen.append(e.value)
    assert seen == [5, 0x11223344]


def test_immediate_exit(guest: Guest) -> None:
    guest.real_mode(bytes.fromhex("e610 f4"))
    guest.cpu.immediate_exit = 1
    assert guest.cpu.immediate_exit == 1
    assert isinstance(guest.cpu.run(), exits.InterruptedExit)
    assert guest.cpu.get_regs().rip == CODE  # nothing ran
    guest.cpu.immediate_exit = 0
    assert isinstance(guest.cpu.run(), exits.IoExit)


def test_signal_interrupts_run(guest: Guest) -> None:
    """EINTR from KVM_RUN (a signal while the guest spins) is an InterruptedExit, not an exception."""
    guest.real_mode(bytes.fromhex("ebfe"))  # jmp $
    old = signal.signal(signal.SIGALRM, lambda *_: None)
    signal.setitimer(signal.ITIMER_REAL, 0.02, 0.02)
    try:
        assert isinstance(guest.cpu.run(), exits.InterruptedExit)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_kick_from_another_thread(guest: Guest) -> None:
    """The Machine's stop pattern: set immediate_exit, then pthread_kill the vCPU thread out of KVM_RUN."""
    guest.real_mode(bytes.fromhex("ebfe"))  # jmp $
    result: list[object] = []
    started = threading.Event()

    def vcpu_thread() -> None:
        started.set()
        while not result:
            e = guest.cpu.run()
            if isinstance(e, exits.InterruptedExit):
                result.append(e)

    old = signal.signal(signal.SIGUSR1, lambda *_: None)
    t = threading.Thread(target=vcpu_thread, daemon=True)
    try:
        t.start()
        started.wait(5)
        deadline = time.monotonic() + 5
        while t.is_alive() and time.monotonic() < deadline:
            guest.cpu.immediate_exit = 1
            signal.pthread_kill(t.ident or 0, signal.SIGUSR1)
            t.join(0.05)
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert not t.is_alive() and isinstance(result[0], exits.InterruptedExit)


def test_error_messages_name_the_ioctl(kvm: Kvm, guest: Guest) -> None:
    with pytest.raises(KvmError) as ei:
        guest.vm.set_user_memory_region(1, 0x8000, 0x10000, host_addr(guest.mem))
    assert ei.value.errno == errno.EEXIST
    assert "KVM_SET_USER_MEMORY_REGION failed: File exists" in str(ei.value) and "slot 1" in str(ei.value)
    with pytest.raises(KvmError, match=r"KVM_CREATE_VCPU failed: Invalid argument.*vcpu id 100000"):
        guest.vm.create_vcpu(100000)


def test_irqchip_pit_msi_irqfd_ioeventfd(kvm: Kvm) -> None:
    g = Guest(kvm, irqchip=True)
    try:
        g.vm.create_pit2()
        g.vm.irq_line(4, 1)
        g.vm.irq_line(4, 0)
        assert g.vm.signal_msi(0xFEE00000, 0x30) >= 0
        ev, res = os.eventfd(0, os.EFD_CLOEXEC), os.eventfd(0, os.EFD_CLOEXEC)
        try:
            g.vm.irqfd(ev, 5)
            g.vm.irqfd(ev, 5, deassign=True)
            g.vm.irqfd(ev, 10, resample_fd=res)
            g.vm.irqfd(ev, 10, deassign=True)
            # out 0x10,al twice: caught in the kernel by the ioeventfd, so the first exit we see is port 0x11
            g.vm.ioeventfd(ev, 0x10, 1, pio=True)
            g.real_mode(bytes.fromhex("b007 e610 e610 e611 ebfe"))
            e = g.cpu.run()
            assert isinstance(e, exits.IoExit) and e.port == 0x11
            assert os.eventfd_read(ev) == 2
            g.vm.ioeventfd(ev, 0x10, 1, pio=True, deassign=True)
            with pytest.raises(KvmError, match="KVM_IOEVENTFD"):
                g.vm.ioeventfd(ev, 0x10, 1, pio=True, deassign=True)
        finally:
            os.close(ev)
            os.close(res)
    finally:
        g.close()


def test_dirty_log(kvm: Kvm) -> None:
    vm = kvm.create_vm()
    mem = mmap.mmap(-1, MEM_SIZE)
    try:
        vm.set_user_memory_region(0, 0, MEM_SIZE, host_addr(mem), KVM_MEM_LOG_DIRTY_PAGES)
        cpu = vm.create_vcpu(0)
        # mov ax,0x500; mov ds,ax; mov byte [0],1 (gpa 0x5000, page 5); hlt
        code = bytes.fromhex("b80005 8ed8 c606000001 f4")
        mem[CODE : CODE + len(code)] = code
        s = cpu.get_sregs()
        s.cs.base, s.cs.selector = 0, 0
        cpu.set_sregs(s)
        cpu.set_regs(type(cpu.get_regs())(rip=CODE, rflags=2))
        vm.get_dirty_log(0, MEM_SIZE // 4096)  # clear
        assert isinstance(cpu.run(), exits.HltExit)
        bitmap = vm.get_dirty_log(0, MEM_SIZE // 4096)
        assert len(bitmap) == MEM_SIZE // 4096 // 8
        assert bitmap[0] & (1 << 5)
    finally:
        vm.close()
        mem.close()


def test_exit_decoders_agree_with_cdef(guest: Guest) -> None:
    """The hot path decodes kvm_run with hand-written struct formats; check them against the cffi
    layout (itself checked against <linux/kvm.h>) for exits a tiny guest cannot easily produce."""
    run = guest.cpu.kvm_run
    decode = guest.cpu._decode_other
    run.internal.suberror, run.internal.ndata = 1, 3
    run.internal.data[0:3] = [7, 8, 9]
    e = decode(exits.KVM_EXIT_INTERNAL_ERROR)
    assert isinstance(e, exits.InternalErrorExit) and (e.suberror, e.data) == (1, (7, 8, 9))
    run.fail_entry.hardware_entry_failure_reason, run.fail_entry.cpu = 0x80000021, 1
    e = decode(exits.KVM_EXIT_FAIL_ENTRY)
    assert isinstance(e, exits.FailEntryExit) and (e.hardware_entry_failure_reason, e.cpu) == (0x80000021, 1)
    run.system_event.type, run.system_event.ndata, run.system_event.data[0] = 2, 1, 5
    e = decode(exits.KVM_EXIT_SYSTEM_EVENT)
    assert isinstance(e, exits.SystemEventExit) and (e.type, e.flags) == (2, 5)
    run.debug.arch.exception, run.debug.arch.pc, run.debug.arch.dr6, run.debug.arch.dr7 = 3, 0x1000, 6, 7
    e = decode(exits.KVM_EXIT_DEBUG)
    assert isinstance(e, exits.DebugExit) and (e.exception, e.pc, e.dr6, e.dr7) == (3, 0x1000, 6, 7)
    run.mmio.phys_addr, run.mmio.len, run.mmio.is_write = 0xFED00000, 4, 1
    run.mmio.data[0:4] = [1, 2, 3, 4]
    e = decode(exits.KVM_EXIT_MMIO)
    assert isinstance(e, exits.MmioExit) and (e.phys_addr, e.length, e.is_write) == (0xFED00000, 4, True)
    assert e.value == 0x04030201
    run.hw.hardware_exit_reason = 42
    e = decode(99)
    assert isinstance(e, exits.UnknownExit) and (e.exit_reason, e.hardware_exit_reason) == (99, 42)
    for reason, cls in ((exits.KVM_EXIT_HLT, exits.HltExit), (exits.KVM_EXIT_SHUTDOWN, exits.ShutdownExit)):
        assert isinstance(decode(reason), cls)
