"""`-device isa-serial`: COM1-COM4 at the PC's ports and IRQs, and iobase=/irq= overrides, judged over qtest.

Each port is probed the way a PC OS finds a 16550 (the scratch register keeps what is written), a byte written
to THR must reach the port's chardev, and with OUT2 and the THR-empty interrupt enabled the port raises its ISA
IRQ at the I/O APIC. The expected ports and IRQs are the PC's legacy COM assignment (0x3f8/4, 0x2f8/3,
0x3e8/4, 0x2e8/3), which QEMU's isa-serial index= follows.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from conformance.drivers.qtest import QtestSession

COM = {0: (0x3F8, 4), 1: (0x2F8, 3), 2: (0x3E8, 4), 3: (0x2E8, 3)}
THR, IER, MCR, SCR = 0, 1, 4, 7
IER_THRE, MCR_OUT2 = 0x02, 0x08


def check_port(qt: QtestSession, base: int, irq: int, log: Path) -> None:
    qt.outb(base + SCR, 0x5A)
    assert qt.inb(base + SCR) == 0x5A, f"no 16550 scratch register at {base:#x}"
    qt.outb(base + THR, ord("Q"))
    deadline = time.monotonic() + 5
    while (not log.exists() or b"Q" not in log.read_bytes()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert log.read_bytes().endswith(b"Q"), f"THR write at {base:#x} did not reach the chardev"
    qt.outb(base + MCR, MCR_OUT2)
    qt.outb(base + IER, IER_THRE)
    qt.inb(base + IER)  # a command round trip, so an IRQ line sent meanwhile has arrived
    assert qt.irq_level.get(irq) or any(e.line == irq and e.raised for e in qt.poll_irqs(1.0)), \
        f"THR-empty interrupt of the port at {base:#x} did not raise IRQ {irq}"


@pytest.mark.clause("refvm-platform", "isa-serial/com-ports")
@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_index_selects_the_com_port_and_irq(libqtest, tmp_path: Path, index: int) -> None:
    log = tmp_path / "com.log"
    qt = libqtest("-chardev", f"file,id=c0,path={log}", "-device", f"isa-serial,chardev=c0,index={index}")
    qt.irq_intercept_in("ioapic")
    check_port(qt, *COM[index], log)


@pytest.mark.clause("refvm-platform", "isa-serial/overrides")
def test_iobase_and_irq_override_the_defaults(libqtest, tmp_path: Path) -> None:
    log = tmp_path / "com.log"
    qt = libqtest("-chardev", f"file,id=c0,path={log}", "-device", "isa-serial,chardev=c0,iobase=0x3e0,irq=5")
    qt.irq_intercept_in("ioapic")
    check_port(qt, 0x3E0, 5, log)
    assert qt.inb(0x3F8 + SCR) == 0xFF, "COM1's ports must stay unclaimed when the only port moved"
