"""ACPI power on a booted probe guest: it finds the tables where ACPI says to search, powers off through S5,
and `system_powerdown` (the fixed-feature power button) powers it off end to end; with -no-shutdown the
process stays up in run state `shutdown`. The same guest code runs on refvm (tables written by the VMM) and
on QEMU (tables from SeaBIOS)."""

from __future__ import annotations

import re

import pytest

from conformance.drivers.qmp import QmpDriver

pytestmark = [pytest.mark.kvm, pytest.mark.guest]

ACPI_LINE = re.compile(
    r"rsdp=(?P<rsdp>0x[0-9a-f]+) rsdt=(?P<rsdt>0x[0-9a-f]+) fadt=(?P<fadt>0x[0-9a-f]+) madt=(?P<madt>0x[0-9a-f]+) "
    r"dsdt=(?P<dsdt>0x[0-9a-f]+) pm1a_evt=(?P<evt>0x[0-9a-f]+) pm1a_cnt=(?P<cnt>0x[0-9a-f]+) sci=(?P<sci>0x[0-9a-f]+) "
    r"s5=(?P<s5>\w+) lapics=(?P<lapics>\d+) ioapic=(?P<ioapic>0x[0-9a-f]+)"
)


def _acpi(con) -> dict[str, str]:  # noqa: ANN001
    line = con.command("acpi")
    match = ACPI_LINE.fullmatch(line.strip())
    assert match, f"unexpected `acpi` output: {line!r}"
    return match.groupdict()


def _boot_with_qmp(target, probe_kernel, consoles, tmp_path, extra: list[str]):  # noqa: ANN001
    sock = tmp_path / "qmp.sock"
    argv = target.probe_argv(probe_kernel, ["-qmp", f"unix:{sock},server=on,wait=off", *extra])
    con = consoles(argv, name=target.name)
    qmp = QmpDriver(sock)
    con.wait_prompt()
    return con, qmp


@pytest.fixture
def guest_with_qmp(target, probe_kernel, consoles, tmp_path):
    """The probe guest at its prompt, with a QMP socket: (console, qmp)."""
    con, qmp = _boot_with_qmp(target, probe_kernel, consoles, tmp_path, [])
    yield con, qmp
    qmp.close()


@pytest.fixture
def no_shutdown_guest(target, probe_kernel, consoles, tmp_path):
    """The same with -no-shutdown."""
    con, qmp = _boot_with_qmp(target, probe_kernel, consoles, tmp_path, ["-no-shutdown"])
    yield con, qmp
    qmp.close()


@pytest.mark.clause("refvm-platform", "acpi/rsdp-location")
@pytest.mark.clause("refvm-platform", "acpi/madt")
def test_guest_finds_acpi_tables_and_apics(target, probe_kernel, consoles) -> None:
    con = consoles(target.probe_argv(probe_kernel, ["-smp", "2"]), name=target.name)
    con.wait_prompt()
    info = _acpi(con)
    assert 0xE0000 <= int(info["rsdp"], 16) < 0x100000, "RSDP outside the 0xE0000-0xFFFFF search window"
    assert int(info["rsdt"], 16) and int(info["fadt"], 16) and int(info["madt"], 16), info
    assert info["lapics"] == "2", "MADT must list one enabled Local APIC per vCPU"
    assert info["ioapic"] == "0xfec00000"
    assert info["sci"] == "0x9"


@pytest.mark.clause("refvm-platform", "acpi/fadt-pm1a")
@pytest.mark.clause("refvm-platform", "acpi/s5-soft-off")
def test_s5_through_pm1a_cnt_powers_off(target, probe_kernel, consoles) -> None:
    con = consoles(target.probe_argv(probe_kernel), name=target.name)
    con.wait_prompt()
    info = _acpi(con)
    assert int(info["evt"], 16) and int(info["cnt"], 16), "FADT has no PM1a blocks"
    assert info["s5"] != "none", "the DSDT has no \\_S5 package"
    con.send("poweroff\r")
    assert con.wait_exit() == 0


@pytest.mark.clause("refvm-platform", "acpi/power-button")
@pytest.mark.clause("qmp", "power/system_powerdown")
def test_system_powerdown_powers_guest_off(guest_with_qmp) -> None:
    con, qmp = guest_with_qmp
    con.send("pwrbtn\r")
    con.expect("waiting for the power button")
    assert qmp.execute("system_powerdown") == {}
    qmp.wait_event("POWERDOWN")
    con.expect("power button pressed")
    event = qmp.wait_event("SHUTDOWN")
    assert event["data"] == {"guest": True, "reason": "guest-shutdown"}
    assert con.wait_exit() == 0


@pytest.mark.clause("refvm-platform", "acpi/power-button")
def test_power_button_ignored_by_guest_not_listening(guest_with_qmp) -> None:
    con, qmp = guest_with_qmp
    qmp.execute("system_powerdown")
    qmp.wait_event("POWERDOWN")
    assert con.command("echo still running") == "still running"


@pytest.mark.clause("qmp", "power/no-shutdown")
def test_no_shutdown_keeps_process_in_shutdown_state(no_shutdown_guest) -> None:
    con, qmp = no_shutdown_guest
    con.send("pwrbtn\r")
    con.expect("waiting for the power button")
    qmp.execute("system_powerdown")
    event = qmp.wait_event("SHUTDOWN")
    assert event["data"] == {"guest": True, "reason": "guest-shutdown"}
    qmp.wait_event("STOP")
    status = qmp.execute("query-status")
    assert status["status"] == "shutdown" and status["running"] is False
    assert con.child.isalive(), "with -no-shutdown the process must stay up after the guest powers off"
    qmp.execute("quit")
    assert con.wait_exit() == 0


@pytest.mark.clause("qmp", "power/system_wakeup")
def test_system_wakeup_refused_when_not_suspended(guest_with_qmp) -> None:
    from qemu.qmp import ExecuteError

    _, qmp = guest_with_qmp
    with pytest.raises(ExecuteError) as err:
        qmp.execute("system_wakeup")
    assert err.value.error.error.desc == "Unable to wake up: guest is not in suspended state"


@pytest.mark.clause("qmp", "power/no-shutdown")
def test_no_shutdown_then_system_reset_and_cont_boots_again(no_shutdown_guest) -> None:
    """What libvirt does for a guest-initiated reboot under -no-shutdown: system_reset, then cont."""
    con, qmp = no_shutdown_guest
    con.send("poweroff\r")
    qmp.wait_event("SHUTDOWN")
    qmp.wait_event("STOP")
    qmp.execute("system_reset")
    qmp.wait_event("RESET")
    assert qmp.execute("query-status")["status"] == "prelaunch", "after a reset from shutdown the VM waits for cont"
    qmp.execute("cont")
    assert "refvm probe guest" in con.wait_prompt(), "the guest boots again"
