"""The KVM fast path against the real /dev/kvm: ioeventfds on virtio-pci notify addresses (no exit to
userspace, handled on the IoThread, following the BAR), GSI routing with MSI + irqchip routes, and MSI-X
delivered through an irqfd into a 32-bit guest that takes the interrupt through its IDT.

The guests are flat 32-bit protected mode set up through KVM_SET_SREGS (works on kvm-pvm, see
tests/test_kvm_vm.py). No mocks: a real PciBus, a real VirtioPciFunction and a real VirtioDevice subclass
whose only addition is recording which thread delivered each notification.
"""

from __future__ import annotations

import mmap
import os
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from refvm.bus import MmioBus, PioBus
from refvm.devices.pci.bus import PciBus
from refvm.fastpath import FastPathStats, default_irqchip_routes
from refvm.fastpath.msi import FIRST_MSI_GSI, MsiRoutes
from refvm.fastpath.notify import NotifyEventfds, Registration
from refvm.iothread import IoThread
from refvm.kvm import Kvm, MsiRoute, caps, exits
from refvm.kvm._ffi import ffi
from refvm.virtio.device import VirtioDevice
from refvm.virtio.pci import VirtioPciFunction
from tests.conftest import require

pytestmark = pytest.mark.kvm

MEM_SIZE = 0x20000
GDT, IDT, CODE, HANDLER, STACK = 0x500, 0x600, 0x1000, 0x1800, 0x8000
BAR4, BAR4_MOVED, BAR1, BAR0 = 0xE000_0000, 0xE010_0000, 0xE020_0000, 0xC000
MSI_VECTOR = 0x41


class RecordingDevice(VirtioDevice):
    """A two-queue virtio device (rng's ID, so it is transitional) that records who notified it."""

    device_id = 4
    queue_max_sizes = (8, 8)

    def __init__(self, mem: object) -> None:
        super().__init__(mem)  # type: ignore[arg-type]
        self.notified: list[tuple[int, str]] = []

    def queue_notify(self, index: int, data: int | None = None) -> None:
        self.notified.append((index, threading.current_thread().name))
        super().queue_notify(index, data)

    def handle_queue(self, queue: object) -> None:  # never live in these tests
        raise AssertionError("not reached")


class Rig:
    """VM + flat protected-mode vCPU + a PCI bus with one virtio function decoding BAR0/BAR1/BAR4."""

    def __init__(self, kvm: Kvm) -> None:
        self.vm = kvm.create_vm()
        self.vm.create_irqchip()
        self.mem = mmap.mmap(-1, MEM_SIZE)
        self.vm.set_user_memory_region(0, 0, MEM_SIZE, int(ffi.cast("uintptr_t", ffi.from_buffer(self.mem))))
        self.cpu = self.vm.create_vcpu(0)
        self._flat_protected_mode()
        self.pio, self.mmio = PioBus(), MmioBus()
        self.bus = PciBus(self.pio, self.mmio, lambda a, d: self.vm.signal_msi(a, d), self.vm.irq_line)
        self.dev = RecordingDevice(None)
        self.fn = VirtioPciFunction(self.dev)
        self.bus.add(self.fn, slot=2)
        self.fn.config_write(0x10, 4, BAR0)
        self.fn.config_write(0x14, 4, BAR1)
        self.fn.config_write(0x20, 4, BAR4)
        self.fn.config_write(0x24, 4, 0)
        self.fn.config_write(0x04, 2, 0x7)  # I/O, memory, bus master
        self.stats = FastPathStats()

    def _flat_protected_mode(self) -> None:
        self.mem[GDT : GDT + 24] = struct.pack("<QQQ", 0, 0x00CF9A000000FFFF, 0x00CF92000000FFFF)
        s = self.cpu.get_sregs()
        for seg in (s.ds, s.es, s.fs, s.gs, s.ss):
            seg.base, seg.limit, seg.selector, seg.type, seg.db, seg.g = 0, 0xFFFFFFFF, 0x10, 3, 1, 1
        s.cs.base, s.cs.limit, s.cs.selector, s.cs.type, s.cs.db, s.cs.g = 0, 0xFFFFFFFF, 0x08, 11, 1, 1
        s.gdt.base, s.gdt.limit = GDT, 23
        s.idt.base, s.idt.limit = IDT, 256 * 8 - 1
        s.cr0 |= 1
        self.cpu.set_sregs(s)
        gate = struct.pack("<HHBBH", HANDLER & 0xFFFF, 0x08, 0, 0x8E, HANDLER >> 16)
        self.mem[IDT + 8 * MSI_VECTOR : IDT + 8 * MSI_VECTOR + 8] = gate

    def start(self, code: bytes) -> None:
        self.mem[CODE : CODE + len(code)] = code
        self.cpu.set_regs(type(self.cpu.get_regs())(rip=CODE, rsp=STACK, rflags=2))

    def run_until_port(self, ports: set[int], limit: int = 50) -> tuple[int, list[object]]:
        """Run; exits on other ports and MMIO are recorded (and not dispatched) until one of ``ports``."""
        seen: list[object] = []
        for _ in range(limit):
            e = self.cpu.run()
            if isinstance(e, exits.IoExit) and e.port in ports:
                return e.port, seen
            if isinstance(e, exits.IoExit):
                seen.append(("io", e.port, e.value if e.is_write else None))
            elif isinstance(e, exits.MmioExit):
                seen.append(("mmio", e.phys_addr, e.value if e.is_write else None))
            else:
                raise AssertionError(f"unexpected exit {e!r}")
        raise AssertionError(f"no exit on {ports} after {limit} exits: {seen}")

    def close(self) -> None:
        self.vm.close()
        self.mem.close()


@pytest.fixture
def rig() -> Iterator[Rig]:
    require(os.access("/dev/kvm", os.R_OK | os.W_OK), "/dev/kvm is missing or not accessible")
    kvm = Kvm()
    r = Rig(kvm)
    yield r
    r.close()
    kvm.close()


def mov_mem_eax(addr: int) -> bytes:
    return b"\xa3" + addr.to_bytes(4, "little")


def wait_for(cond, timeout: float = 2.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)


OUT_DX_AX = bytes.fromhex("66ef")
DONE = bytes.fromhex("e610f4")  # out 0x10,al; hlt


def test_ioeventfd_notify_without_exit_on_the_iothread(rig: Rig) -> None:
    """Modern (MMIO, any width) and legacy (PIO, datamatch on the queue) notifies are caught in the kernel."""
    io = IoThread("iothread")
    notify = NotifyEventfds(rig.vm, rig.bus, io, rig.stats, any_length=True)
    try:
        regs = notify.registrations()
        assert regs["virtio-rng-pci@02.0/q0"] == [
            Registration(BAR4 + 0x3000, 0, None, False), Registration(BAR0 + 0x10, 2, 0, True)
        ]  # fmt: skip
        code = (
            bytes.fromhex("b801000000") + mov_mem_eax(BAR4 + 0x3000)  # mov eax,1; mov [notify q0],eax
            + b"\x66" + mov_mem_eax(BAR4 + 0x3004)  # mov [notify q1],ax (16-bit)
            + bytes.fromhex("66ba10c0 66b80100") + OUT_DX_AX  # legacy: outw 0xc010, 1 (queue 1)
            + bytes.fromhex("66b80700") + OUT_DX_AX  # outw 0xc010, 7: no queue 7, no match -> exit
            + DONE
        )  # fmt: skip
        rig.start(code)
        port, seen = rig.run_until_port({0x10})
        assert seen == [("io", BAR0 + 0x10, 7)]  # the only exit before DONE: no MMIO exit at all
        wait_for(lambda: {0, 1} <= {q for q, _ in rig.dev.notified})
        assert {name for _, name in rig.dev.notified} == {"iothread"}
        assert rig.stats.ioeventfd_notifies >= 2
        assert rig.dev.ignored_notifications == len(rig.dev.notified)  # not live: same as the slow path

        # Move BAR4: the old address exits (slow path, nothing there), the new one is caught.
        rig.fn.config_write(0x20, 4, BAR4_MOVED)
        assert notify.registrations()["virtio-rng-pci@02.0/q0"][0] == Registration(BAR4_MOVED + 0x3000, 0, None, False)
        before = rig.stats.ioeventfd_notifies
        rig.start(mov_mem_eax(BAR4 + 0x3000) + mov_mem_eax(BAR4_MOVED + 0x3000) + DONE)
        _, seen = rig.run_until_port({0x10})
        assert [s[:2] for s in seen] == [("mmio", BAR4 + 0x3000)]
        wait_for(lambda: rig.stats.ioeventfd_notifies == before + 1)

        # Memory decoding off: nothing is registered, the write exits.
        rig.fn.config_write(0x04, 2, 0x5)
        assert all(r.pio for regs in notify.registrations().values() for r in regs)
        rig.start(mov_mem_eax(BAR4_MOVED + 0x3000) + DONE)
        _, seen = rig.run_until_port({0x10})
        assert [s[:2] for s in seen] == [("mmio", BAR4_MOVED + 0x3000)]
    finally:
        notify.close()
        io.close()
        notify.release()
    assert rig.stats.ioeventfd_assigned == rig.stats.ioeventfd_deassigned
    # Everything deassigned: the legacy write with a matching queue exits again.
    rig.start(bytes.fromhex("66ba10c0 66b80000") + OUT_DX_AX + DONE)
    _, seen = rig.run_until_port({0x10})
    assert seen == [("io", BAR0 + 0x10, 0)]


def test_gsi_routing_with_msi_and_irqchip_routes_accepted(rig: Rig) -> None:
    require(rig.vm.check_extension(caps.KVM_CAP_IRQ_ROUTING) > 0, "no KVM_CAP_IRQ_ROUTING")
    table = default_irqchip_routes()
    assert len(table) == 24 + 16
    rig.vm.set_gsi_routing([*table, MsiRoute(FIRST_MSI_GSI, 0xFEE00000, 0x41), MsiRoute(25, 0xFEE00000, 0x42)])
    efd = os.eventfd(0, os.EFD_CLOEXEC)
    try:
        rig.vm.irqfd(efd, FIRST_MSI_GSI)
        os.eventfd_write(efd, 1)  # accepted (delivery itself is observed in the guest test below)
        rig.vm.irqfd(efd, FIRST_MSI_GSI, deassign=True)
        rig.vm.irq_line(4, 1)  # the irqchip pins are still routed
        rig.vm.irq_line(4, 0)
    finally:
        os.close(efd)
    rig.vm.set_gsi_routing(table)


def program_vector(fn: VirtioPciFunction, vector: int, data: int, masked: bool) -> None:
    msix = fn.msix
    assert msix is not None
    base = 16 * vector
    msix.table_write(base, 4, 0xFEE00000)
    msix.table_write(base + 4, 4, 0)
    msix.table_write(base + 8, 4, data)
    msix.table_write(base + 12, 4, int(masked))


def test_msix_through_irqfd_reaches_the_guest_idt(rig: Rig) -> None:
    """Msix decides (mask, pending); the last step is an irqfd write; the guest's handler runs."""
    require(rig.vm.check_extension(caps.KVM_CAP_IRQFD) > 0, "no KVM_CAP_IRQFD")
    msix = rig.fn.msix
    assert msix is not None
    routes = MsiRoutes(rig.vm, rig.bus, rig.stats)
    try:
        program_vector(rig.fn, 0, MSI_VECTOR, masked=False)
        program_vector(rig.fn, 1, MSI_VECTOR, masked=True)
        assert routes.routes() == {}  # MSI-X not enabled yet
        rig.fn.config_write(msix.cap_offset + 2, 2, 0x8000)  # MSI-X enable
        assert routes.routes() == {(0xFEE00000, MSI_VECTOR): FIRST_MSI_GSI}
        # Guest: enable the local APIC (SVR), sti, report ready, then spin a bounded while; the handler
        # reports on port 0x11, sends EOI and goes back to spinning. (Not iret: kvm-pvm fails to emulate
        # it here with KVM_EXIT_INTERNAL_ERROR.)
        spin = CODE + 13
        handler = bytes.fromhex("e611 c705b000e0fe00000000 fb b8") + spin.to_bytes(4, "little") + b"\xff\xe0"
        rig.mem[HANDLER : HANDLER + len(handler)] = handler
        rig.start(
            bytes.fromhex("c705f000e0feff010000 fb e610")  # [SVR] = 0x1ff; sti; out 0x10
            + bytes.fromhex("b900000800 e2fe e612 f4")  # mov ecx,0x80000; loop $; out 0x12; hlt
        )
        assert rig.run_until_port({0x10})[0] == 0x10
        msix.notify(0)
        assert (rig.stats.irqfd_msis, rig.stats.msi_fallbacks) == (1, 0)
        assert rig.run_until_port({0x11, 0x12})[0] == 0x11, "MSI via irqfd not taken by the guest"

        # Masked: the pending bit is set, nothing is sent; the route goes away with the last live vector.
        msix.table_write(12, 4, 1)
        assert routes.routes() == {}
        msix.notify(0)
        assert msix.pending(0) and rig.stats.irqfd_msis == 1
        # Unmask: the route comes back before the pending message goes out, so it takes the irqfd too.
        msix.table_write(12, 4, 0)
        assert not msix.pending(0)
        assert (rig.stats.irqfd_msis, rig.stats.msi_fallbacks) == (2, 0)
        assert rig.run_until_port({0x11, 0x12})[0] == 0x11
        # Outside the MSI window a message is a DMA write: never routed, goes to the machine's sink.
        assert rig.stats.route_updates >= 3
    finally:
        routes.close()
    assert rig.bus.msi_sink != routes.deliver
    msix.notify(0)  # back on the plain sink (KVM_SIGNAL_MSI)
    assert rig.stats.irqfd_msis == 2
