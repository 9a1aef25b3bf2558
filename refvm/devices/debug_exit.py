"""isa-debug-exit: a guest writes a value and the VMM exits with status ``(value << 1) | 1``.

Same semantics as QEMU's ``-device isa-debug-exit,iobase=0xf4,iosize=0x04``: the status is
always odd, so a test harness can tell "the guest asked to exit" (odd) from a normal VMM exit
(0). kvm-unit-tests and our probe guest report PASS/FAIL through it. The machine supplies the
``on_exit`` callback (it stops vCPUs and exits the process); the device only computes the code.

The status is passed unclipped; a process exit status keeps only its low 8 bits, so a write of
0x80 exits with 1 on both QEMU and refvm.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["DebugExit", "DEFAULT_IOBASE", "DEFAULT_IOSIZE"]

DEFAULT_IOBASE = 0xF4
DEFAULT_IOSIZE = 0x04


class DebugExit:
    """Bus device: any write of ``v`` calls ``on_exit((v << 1) | 1)``."""

    def __init__(self, on_exit: Callable[[int], None]) -> None:
        self.on_exit = on_exit
        self.last_status: int | None = None

    @staticmethod
    def status_for(value: int) -> int:
        """The process exit status QEMU would produce for a write of ``value``."""
        return (value << 1) | 1

    def read(self, offset: int, size: int) -> int:
        # QEMU 7.2's isa-debug-exit reads as 0 (observed by tests/test_probe_refvm_vs_qemu.py).
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        # The full written value is used (QEMU does the same), not just the byte at offset 0.
        value &= (1 << (8 * size)) - 1
        self.last_status = self.status_for(value)
        self.on_exit(self.last_status)
