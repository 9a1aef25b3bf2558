"""The probe guest boots on the target and its serial shell behaves as on real hardware.

These checks run the same guest binary and the same commands on every target; what they assert is what the
Multiboot spec, the 16550 UART and isa-debug-exit promise a guest.
"""

from __future__ import annotations

import re

import pytest

MIB = 1024 * 1024

#: These boot the probe guest: on refvm that needs /dev/kvm (qtest-only suites do not).
pytestmark = [pytest.mark.kvm, pytest.mark.guest]


@pytest.mark.clause("refvm-platform", "multiboot/entry-state")
def test_banner_reports_multiboot_memory(probe) -> None:
    banner = probe.banner
    assert "refvm probe guest" in banner
    match = re.search(r"mem_lower=(\d+)K mem_upper=(\d+)K", banner)
    assert match, banner
    lower, upper = map(int, match.groups())
    assert 600 <= lower <= 640, "lower memory is the conventional 640 KiB less the EBDA"
    # The default machine has 128 MiB; Multiboot's mem_upper counts from 1 MiB. Firmware may keep a little
    # at the top for itself (QEMU reserves 128 KiB there), but never more than 1 MiB.
    assert 126 * 1024 <= upper <= 127 * 1024


@pytest.mark.clause("refvm-platform", "multiboot/cmdline")
def test_cmdline_reaches_guest(target, probe_kernel, consoles) -> None:
    con = consoles(target.probe_argv(probe_kernel, ["-append", "hello=world quiet"]), name=target.name)
    con.wait_prompt()
    out = con.command("info")
    assert "hello=world quiet" in out


@pytest.mark.clause("refvm-platform", "serial/console-io")
def test_echo_round_trip(probe) -> None:
    assert probe.command("echo alpha  beta gamma") == "alpha beta gamma"


@pytest.mark.clause("refvm-platform", "serial/console-io")
def test_typed_burst_is_not_lost(probe) -> None:
    """A line typed in one burst (longer than the 16-byte FIFO) arrives whole."""
    words = " ".join(f"w{i:02d}" for i in range(25))
    assert probe.command(f"echo {words}") == words


@pytest.mark.clause("refvm-platform", "serial/console-io")
def test_unknown_command_is_an_error(probe) -> None:
    out = probe.command("frobnicate")
    assert out.startswith("error: unknown command 'frobnicate'")


@pytest.mark.clause("refvm-platform", "ram/read-write")
@pytest.mark.parametrize("width,value", [(1, 0x5A), (2, 0xBEEF), (4, 0xDEADBEEF)])
def test_poke_then_peek(probe, width: int, value: int) -> None:
    addr = 0x200000
    assert probe.command(f"poke {addr:#x} {value:#x} {width}") == "ok"
    out = probe.command(f"peek {addr:#x} {width}")
    assert int(out.rsplit("0x", 1)[1], 16) == value, out


@pytest.mark.clause("refvm-platform", "ram/read-write")
def test_memtest_over_upper_memory(probe) -> None:
    out = probe.command("memtest 0x400000 0x10000")
    assert out == "memtest: 65536 bytes ok"


@pytest.mark.clause("refvm-platform", "ram/read-write")
def test_peek_outside_ram_is_refused(probe) -> None:
    assert probe.command("peek 0x20000000").startswith("error:")


@pytest.mark.clause("refvm-platform", "isa-debug-exit/status")
@pytest.mark.parametrize("code", [0, 3, 127])
def test_debug_exit_status(target, probe_kernel, consoles, code: int) -> None:
    con = consoles(target.probe_argv(probe_kernel), name=target.name)
    con.wait_prompt()
    con.send(f"exit {code}\r")
    assert con.wait_exit() == ((code << 1) | 1) & 0xFF
