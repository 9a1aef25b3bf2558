"""Differential check: the probe guest gives the same answers on refvm and on QEMU.

The same binary, the same commands; only output that legitimately depends on the host (CPUID, firmware
leftovers in low memory, QEMU's firmware reserve at the top of RAM) is left out of the script.
"""

from __future__ import annotations

import shutil
import sys

import pytest

from conformance.drivers.console import SerialConsole
from conformance.drivers.guests import probe_elf
from tests.conftest import kvm_available, require

COMMON = ["-nodefaults", "-display", "none", "-serial", "stdio", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]

SCRIPT = [
    "help",
    "echo one  two three",
    "frobnicate",
    "poke 0x300000 0x12345678",
    "peek 0x300000",
    "peek 0x300001 1",
    "peek 0x300002 2",
    "peek 0x300000 3",
    "poke 0x300000",
    "memtest 0x400000 0x8000",
    "memtest 0x100000 0x1000",
    "peek 0x40000000",
    "inb 0x3fd",  # LSR: THRE|TEMT, no data
    "inb 0x3fb",  # LCR as the guest programmed it
    "inb 0x3fc",  # MCR
    "inb 0x3fa",  # IIR with the FIFO enabled
    "inb 0x3ff",  # scratch register
    "outb 0x3ff 0x5a",
    "inb 0x3ff",
    "inl 0xf4",  # isa-debug-exit reads
    "lspci",  # the chipset functions (host bridge, PIIX3 ISA/IDE, PIIX4 PM) with IDs, BARs, capabilities
    "pciassign",
    "pcicfg read 00:00.0 0x0",
    "pcicfg read 00:01.0 0xe",  # header type: multi-function
    "pcicfg read 00:1f.0 0x0",  # absent: all-ones
    "x" * 140,
]


def run_script(argv: list[str]) -> list[str]:
    with SerialConsole(argv, timeout=30) as con:
        con.wait_prompt()
        answers = [con.command(line) for line in SCRIPT]
        con.send("exit 9\r")
        answers.append(f"exit status {con.wait_exit()}")
    return answers


def test_same_answers_on_refvm_and_qemu() -> None:
    require(kvm_available(), "/dev/kvm is missing or not accessible")
    qemu = shutil.which("qemu-system-x86_64")
    require(qemu is not None, "qemu-system-x86_64 not installed (apt-get install qemu-system-x86)")
    kernel = str(probe_elf())
    ours = run_script([sys.executable, "-m", "refvm", "-watchdog-timeout", "60", *COMMON, "-kernel", kernel])
    theirs = run_script([qemu, "-accel", "tcg", *COMMON, "-kernel", kernel])
    diffs = [(cmd, a, b) for cmd, a, b in zip([*SCRIPT, "exit 9"], ours, theirs, strict=True) if a != b]
    assert not diffs, "\n".join(f"{cmd!r}:\n  refvm: {a!r}\n  qemu:  {b!r}" for cmd, a, b in diffs)


@pytest.mark.parametrize("leaf", ["0", "1"])
def test_cpuid_answers_are_well_formed_on_both(leaf: str) -> None:
    """CPUID differs by host; both must still answer in the same shape."""
    require(kvm_available(), "/dev/kvm is missing or not accessible")
    kernel = str(probe_elf())
    with SerialConsole([sys.executable, "-m", "refvm", *COMMON, "-kernel", kernel], timeout=30) as con:
        con.wait_prompt()
        out = con.command(f"cpuid {leaf}")
    assert out.count("=") == 4 and out.startswith("eax=")
