"""Boot the probe guest with a -cpu/-smp line and read CPUID through its `cpuid` shell command.

QEMU runs with `-accel kvm` here (not the suite's usual TCG): TCG filters a model through its own emulated
feature set, while refvm and QEMU-on-KVM both filter through this host's KVM, so only then do the two
targets owe the guest the same bits. Each distinct command line boots once per module.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence

import pytest

from conformance.drivers.console import SerialConsole
from conformance.plugin import require
from conformance.targets import DEBUG_EXIT, Target

_REGS = re.compile(r"eax=([0-9a-f]{8}) ebx=([0-9a-f]{8}) ecx=([0-9a-f]{8}) edx=([0-9a-f]{8})")


def cpu_argv(target: Target, kernel: str, args: Sequence[str]) -> list[str]:
    if target.kind == "qemu":
        base = [*target.binary, "-accel", "kvm", *target.extra_args]
        return [*base, "-nodefaults", "-display", "none", "-serial", "stdio", *DEBUG_EXIT, "-kernel", kernel, *args]
    return target.probe_argv(kernel, args)


class CpuGuest:
    """A booted probe guest; CPUID answers are cached (the guest's answer to a leaf never changes)."""

    def __init__(self, console: SerialConsole) -> None:
        self.console = console
        self._cache: dict[tuple[int, int], tuple[int, int, int, int]] = {}

    @property
    def log(self) -> str:
        return self.console.transcript

    def cpuid(self, leaf: int, subleaf: int = 0) -> tuple[int, int, int, int]:
        if (leaf, subleaf) not in self._cache:
            out = self.console.command(f"cpuid {leaf:#x} {subleaf:#x}")
            match = _REGS.search(out)
            assert match, f"unexpected answer to cpuid: {out!r}"
            self._cache[(leaf, subleaf)] = tuple(int(g, 16) for g in match.groups())  # type: ignore[assignment]
        return self._cache[(leaf, subleaf)]

    def reg(self, leaf: int, subleaf: int, name: str) -> int:
        return self.cpuid(leaf, subleaf)[("eax", "ebx", "ecx", "edx").index(name)]


@pytest.fixture(scope="module")
def cpu_guest(target: Target, probe_kernel: str) -> Iterator:
    """cpu_guest(*args): the probe guest booted with these extra arguments (once per module and line)."""
    if target.kind == "qemu":
        require(os.access("/dev/kvm", os.R_OK | os.W_OK), "QEMU -accel kvm needs /dev/kvm")
    booted: dict[tuple[str, ...], CpuGuest] = {}

    def boot(*args: str) -> CpuGuest:
        if args not in booted:
            con = SerialConsole(cpu_argv(target, probe_kernel, args), timeout=90, name=target.name)
            con.wait_prompt()
            booted[args] = CpuGuest(con)
        return booted[args]

    yield boot
    for guest in booted.values():
        guest.console.close()


@pytest.fixture
def start_cpu(target: Target, probe_kernel: str, consoles):  # noqa: ANN001, ANN201
    """Start (not wait for) a target with extra arguments; for lines that must fail."""
    return lambda *args: consoles(cpu_argv(target, probe_kernel, args), timeout=90, name=target.name)
