"""Targets: the implementations a conformance run judges, each a process started from an argv.

A target is described only by how to start it (binary plus the arguments that select its accelerator), so
the same test drives refvm and QEMU. QEMU on this kind of machine runs guests under TCG: its KVM path goes
through SeaBIOS on a software KVM and is ~50x slower (see DESIGN.md §3).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from conformance.drivers.console import SerialConsole

#: Every guest run gets a hard limit, so a broken target can never hang the suite.
GUEST_WATCHDOG_SECONDS = 120

DEBUG_EXIT = ["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]


@dataclass
class Target:
    """One implementation under test."""

    name: str
    kind: str  # "refvm" | "qemu"
    binary: list[str]
    accel_args: list[str] = field(default_factory=list)
    #: Arguments added to every start of this target (from --targets-file), whatever the accelerator.
    extra_args: list[str] = field(default_factory=list)

    def argv(self, args: Sequence[str]) -> list[str]:
        return [*self.binary, *self.accel_args, *self.extra_args, *args]

    def probe_argv(self, kernel: str, extra: Sequence[str] = ()) -> list[str]:
        """Boot the probe guest with its serial port on stdio and the debug-exit device."""
        return self.argv(
            ["-nodefaults", "-display", "none", "-serial", "stdio", *DEBUG_EXIT, "-kernel", kernel, *extra]
        )

    def console(self, args: Sequence[str], timeout: float = 60.0) -> SerialConsole:
        return SerialConsole(self.argv(args), timeout=timeout, name=self.name)

    def qtest_argv(self, socket_path: str, extra: Sequence[str] = ()) -> list[str]:
        """Start the target with no vCPU running, driven over qtest; the test side listens on socket_path.

        QEMU's `-qtest unix:PATH` (no `server=on`) makes QEMU connect to PATH as a client, as libqtest does.
        Debian's QEMU has no qtest accelerator, so it runs TCG stopped (`-S`) instead (DESIGN.md §3).
        """
        common = ["-qtest", f"unix:{socket_path}"]
        if self.kind == "qemu":
            accel = self.accel_args or ["-accel", "tcg"]
            common = [*accel, "-S", *common, "-qtest-log", "/dev/null"]
        else:
            common = ["-accel", "qtest", *common]
        return [*self.binary, *common, *self.extra_args, "-nodefaults", "-display", "none", "-M", "pc", *extra]


def refvm_target(binary: str | None = None) -> Target:
    cmd = [binary] if binary else [sys.executable, "-m", "refvm"]
    return Target("refvm", "refvm", cmd, ["-accel", "kvm", "-watchdog-timeout", str(GUEST_WATCHDOG_SECONDS)])


def qemu_target(binary: str | None = None) -> Target:
    path = binary or shutil.which("qemu-system-x86_64") or "qemu-system-x86_64"
    return Target("qemu", "qemu", [path], ["-accel", "tcg"])


def qemu_available(target: Target) -> bool:
    exe = target.binary[0]
    return bool(shutil.which(exe)) or (os.path.isfile(exe) and os.access(exe, os.X_OK))


def libvirt_target(uri: str) -> Target:
    """A libvirt URI as a target: judged by the libvirt_api suite through libvirt-python, no process of ours.

    The report is named after the URI's driver (clauses-libvirt-test.md for test:///default).
    """
    scheme = uri.split(":", 1)[0].split("+", 1)[0] if ":" in uri else uri
    return Target(f"libvirt-{scheme}", "libvirt", [], extra_args=[uri])


#: The suite that judges libvirt drivers; every other suite judges a VMM process.
LIBVIRT_SUITE = "conformance/libvirt_api/"


def select_suites_for_target(config, items: list, kind: str) -> None:  # noqa: ANN001
    """A libvirt target runs only the libvirt_api suite, and a VMM target every suite but that one."""
    keep, drop = [], []
    for item in items:
        in_libvirt_suite = item.nodeid.startswith(LIBVIRT_SUITE)
        (keep if in_libvirt_suite == (kind == "libvirt") else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def make_target(kind: str, qemu_binary: str | None = None, refvm_binary: str | None = None) -> Target:
    if kind == "refvm":
        return refvm_target(refvm_binary)
    if kind == "qemu":
        return qemu_target(qemu_binary)
    raise ValueError(f"unknown target '{kind}' (expected refvm or qemu)")
