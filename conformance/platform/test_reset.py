"""Guest-initiated resets: the machine comes back to the start, or exits under -no-reboot."""

from __future__ import annotations

import pytest

#: These boot the probe guest: on refvm that needs /dev/kvm (qtest-only suites do not).
pytestmark = [pytest.mark.kvm, pytest.mark.guest]

@pytest.mark.clause("refvm-platform", "reset/control-register")
def test_cf9_reset_reboots_guest(target, probe_kernel, consoles) -> None:
    con = consoles(target.probe_argv(probe_kernel), name=target.name)
    con.wait_prompt()
    con.send("outb 0xcf9 0x06\r")
    assert "refvm probe guest" in con.wait_prompt(), "the guest did not boot again after the reset"
    assert con.command("echo after reset") == "after reset"


@pytest.mark.clause("refvm-platform", "reset/control-register")
def test_cf9_reset_with_no_reboot_exits_zero(target, probe_kernel, consoles) -> None:
    con = consoles(target.probe_argv(probe_kernel, ["-no-reboot"]), name=target.name)
    con.wait_prompt()
    con.send("outb 0xcf9 0x06\r")
    assert con.wait_exit() == 0


@pytest.mark.clause("refvm-platform", "reset/keyboard-controller")
def test_i8042_reset_with_no_reboot_exits_zero(target, probe_kernel, consoles) -> None:
    con = consoles(target.probe_argv(probe_kernel, ["-no-reboot"]), name=target.name)
    con.wait_prompt()
    con.send("outb 0x64 0xfe\r")
    assert con.wait_exit() == 0


@pytest.mark.clause("refvm-platform", "reset/control-register")
def test_cf9_without_reset_bit_does_nothing(probe) -> None:
    assert probe.command("outb 0xcf9 0x02") == "ok"
    assert probe.command("echo still here") == "still here"
