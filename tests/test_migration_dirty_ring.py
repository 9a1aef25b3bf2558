"""KVM's dirty ring (refvm/migration/dirty_ring.py) on the real /dev/kvm, and `-accel kvm,dirty-ring-size=N`.

A real-mode guest writes one byte into each of 222 pages, four times over; with a 256-entry ring (the smallest
KVM takes) the vCPU leaves KVM_RUN with KVM_EXIT_DIRTY_RING_FULL on the way, the ring is harvested and the vCPU
goes on, and every page the guest wrote comes out of sync() exactly once per run.  The option's errors are
QEMU's lines; a KVM without the ring refuses the option by name (checked with a VM object whose
KVM_CHECK_EXTENSION answers 0: this host's kvm-pvm has the ring, and no other KVM exists here).
"""
from __future__ import annotations

import mmap
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_kvm_vm import host_addr, kvm  # noqa: F401 - the kvm fixture

from refvm.kvm import Kvm, caps, exits
from refvm.migration import dirty_ring
from refvm.migration.dirty_log import Slot

pytestmark = pytest.mark.kvm
ROOT = Path(__file__).resolve().parent.parent
MEM = 1 << 20
CODE = 0x1000
PAGES, FIRST = 222, 0x20000  # pages FIRST, FIRST + 4 KiB, ... (the last at 0xFD000, under 1 MiB)
# mov cx, PAGES; mov ax, FIRST >> 4; loop: mov ds, ax; mov byte [0], 1; add ax, 0x100; dec cx; jnz loop; hlt
WRITE_PAGES = bytes([0xB9, PAGES, 0, 0xB8, 0x00, 0x20, 0x8E, 0xD8, 0xC6, 0x06, 0, 0, 1, 0x05, 0x00, 0x01,
                     0x49, 0x75, 0xF3, 0xF4])
ENTRIES = 256


@pytest.fixture
def ringed(kvm: Kvm) -> Iterator[tuple]:  # noqa: F811
    vm = kvm.create_vm()
    mem = mmap.mmap(-1, MEM)
    vm.set_user_memory_region(0, 0, MEM, host_addr(mem))
    dirty_ring.enable_for(vm, SimpleNamespace(dirty_ring_size=ENTRIES, accel_text="kvm"))
    cpu = vm.create_vcpu(0)
    ring = dirty_ring.KvmDirtyRing(vm, [Slot(0, 0, MEM, host_addr(mem))], [cpu], ENTRIES)
    mem[CODE : CODE + len(WRITE_PAGES)] = WRITE_PAGES
    s = cpu.get_sregs()
    s.cs.base, s.cs.selector = 0, 0
    cpu.set_sregs(s)
    yield vm, cpu, ring
    ring.stop()
    ring.close()
    cpu.close()
    vm.close()
    mem.close()


def _run_to_hlt(cpu, ring) -> int:  # noqa: ANN001
    """Run the guest from CODE to its hlt, harvesting on ring-full exits as vcpu_runner does; returns how many."""
    r = cpu.get_regs()
    r.rip, r.rflags = CODE, 2
    cpu.set_regs(r)
    full = 0
    for _ in range(100):
        ex = cpu.run()
        if isinstance(ex, exits.HltExit):
            return full
        assert isinstance(ex, exits.DirtyRingFullExit), ex
        full += 1
        ring.harvest()
    pytest.fail("the guest never halted")


def test_ring_full_exit_is_harvested_and_every_page_comes_out_once(ringed: tuple) -> None:
    _vm, cpu, ring = ringed
    ring.start()
    assert ring.sync() == [], "nothing written yet"
    want = [FIRST + 0x1000 * i for i in range(PAGES)]
    full = 0
    for _ in range(4):  # each run writes the 222 pages again: re-protected by the sync before it
        full += _run_to_hlt(cpu, ring)
        assert [p for p in ring.sync() if p != CODE] == want
        assert ring.sync() == [], "a harvested page is reported once"
    # KVM asks for the exit at its next guest entry once the ring is past its soft limit; 4 x 222 entries
    # through a 256-entry ring cannot all fit between entries.
    assert full >= 1, f"{4 * PAGES} pages never filled a {ENTRIES}-entry ring"


def test_get_dirty_log_is_refused_with_a_ring(ringed: tuple) -> None:
    """Why pre-copy must use the ring once it is enabled: KVM refuses the bitmap (ENXIO)."""
    from refvm.kvm import KvmError

    vm, _cpu, ring = ringed
    ring.start()
    with pytest.raises(KvmError):
        vm.get_dirty_log(0, MEM // 4096)


def test_kvm_without_ring_refuses_the_option() -> None:
    class NoRingVm:  # a stand-in for a KVM without KVM_CAP_DIRTY_LOG_RING (this host's has it)
        def check_extension(self, cap: int) -> int:
            assert cap in (caps.KVM_CAP_DIRTY_LOG_RING, caps.KVM_CAP_DIRTY_LOG_RING_ACQ_REL)
            return 0

    cfg = SimpleNamespace(dirty_ring_size=4096, accel_text="kvm,dirty-ring-size=4096")
    with pytest.raises(ValueError) as err:
        dirty_ring.enable_for(NoRingVm(), cfg)
    assert str(err.value) == ("-accel kvm,dirty-ring-size=4096: this KVM has no dirty ring "
                              "(KVM_CAP_DIRTY_LOG_RING)")


@pytest.mark.parametrize(("accel", "line"), [
    ("kvm,dirty-ring-size=1000", "refvm: -accel kvm,dirty-ring-size=1000: dirty-ring-size must be a power of two."),
    ("kvm,dirty-ring-size=x", "refvm: -accel kvm,dirty-ring-size=x: Parameter 'dirty-ring-size' expects uint64"),
    ("kvm,dirty-ring-sizes=1", "refvm: -accel kvm,dirty-ring-sizes=1: Property 'kvm-accel.dirty-ring-sizes' not found"),
    ("kvm,dirty-ring-size=131072", "refvm: -accel kvm,dirty-ring-size=131072: KVM dirty ring size 131072 too big "
                                   "(maximum is 65536).  Please use a smaller value."),
])  # fmt: skip
def test_option_errors_are_one_line(accel: str, line: str) -> None:
    kvm_host = Kvm()
    max_entries = kvm_host.check_extension(caps.KVM_CAP_DIRTY_LOG_RING) // 16
    kvm_host.close()
    if "131072" in accel and max_entries != 65536:
        line = line.replace("65536", str(max_entries))
    proc = subprocess.run([sys.executable, "-m", "refvm", "-kernel", str(ROOT / "guests/probe/build/probe.elf"),
                           "-accel", accel, "-display", "none", "-watchdog-timeout", "30"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == line
