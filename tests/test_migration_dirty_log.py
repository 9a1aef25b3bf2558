"""KVM's dirty page log (refvm/migration/dirty_log.py) on the real /dev/kvm: a page a vCPU writes shows up once
per write, again after the log re-protected it, and a write through the host mapping (a device model's) never
does, which is why a pre-copy needs GuestMemory's own bitmap as well."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_kvm_vm import CODE, MEM_SIZE, Guest, host_addr, kvm  # noqa: F401 - the kvm fixture

from refvm.kvm import Kvm, exits
from refvm.migration.dirty_log import KvmDirtyLog, Slot, pages_of

pytestmark = pytest.mark.kvm
WRITE_0x3000 = bytes.fromhex("c606003001 f4")  # mov byte [0x3000], 1; hlt (real mode, ds = 0)


@pytest.fixture
def logged(kvm: Kvm) -> Iterator[tuple[Guest, KvmDirtyLog]]:  # noqa: F811
    g = Guest(kvm)
    log = KvmDirtyLog(g.vm, [Slot(0, 0, MEM_SIZE, host_addr(g.mem))])
    log.start()
    yield g, log
    log.stop()
    g.close()


def _run(g: Guest) -> None:
    g.real_mode(WRITE_0x3000)
    assert isinstance(g.cpu.run(), exits.HltExit)


def test_vcpu_writes_are_logged_once_each(logged: tuple[Guest, KvmDirtyLog]) -> None:
    g, log = logged
    log.sync()  # from here on only new writes count
    _run(g)
    assert log.sync() == [0x3000]
    assert log.sync() == [], "a page stays dirty after it was reported"
    _run(g)
    assert log.sync() == [0x3000], "a page written again after its report is not reported again"


def test_host_writes_are_not_in_kvms_log(logged: tuple[Guest, KvmDirtyLog]) -> None:
    g, log = logged
    log.sync()
    g.mem[0x5000] = 0xAA  # as a device model writes guest RAM
    assert log.sync() == []


def test_guest_memory_logs_device_writes() -> None:
    from refvm.memory import GuestMemory

    mem = GuestMemory()
    mem.add_ram(0, 0x10000)
    mem.write(0x1000, b"before")  # not logging yet
    assert not mem.dirty_logging
    mem.start_dirty_log()
    assert mem.dirty_logging
    mem.write(0x2FFE, b"span")  # crosses into the next page
    mem.fill(0x5000, 0x10, 0xAA)
    mem.write_u32(0x7004, 1)
    assert mem.take_dirty() == {0x2000, 0x3000, 0x5000, 0x7000}
    assert mem.take_dirty() == set()
    mem.view(0x8000, 16)[0] = 1  # a write through a view is logged only when its holder marks it
    assert mem.take_dirty() == set()
    mem.mark_dirty(0x8000, 1)
    assert mem.take_dirty() == {0x8000}
    mem.stop_dirty_log()
    mem.write(0x9000, b"after")
    mem.mark_dirty(0x9000, 1)
    assert mem.take_dirty() == set() and not mem.dirty_logging
    mem.close()


@given(st.binary(min_size=1, max_size=64), st.integers(0, 1 << 20))
def test_bitmap_words_give_the_pages_bit_by_bit(bitmap: bytes, first_page: int) -> None:
    """The word-at-a-time scan (zero words skipped, full words as one range) finds what a bit walk finds."""
    gpa = first_page * 4096
    expected = [gpa + (i * 8 + bit) * 4096 for i, byte in enumerate(bitmap) for bit in range(8) if byte >> bit & 1]
    assert pages_of(bitmap, gpa) == expected
    assert pages_of(b"\xff" * 8 + bitmap, gpa)[:64] == [gpa + i * 4096 for i in range(64)]
