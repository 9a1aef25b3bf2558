"""PIIX4-style ACPI PM registers driven over qtest + QMP (ACPI 6.4 4.8.3): the power button, the SCI on IRQ 9
and S5. QEMU's PM block only decodes once firmware programs its base, so the test first does what SeaBIOS
does (PIIX4 function 00:01.3: PMBA = 0x600, PMIOSE); refvm's block is fixed at 0x600 and the write goes to a
function that does not exist there, which changes nothing."""

from __future__ import annotations

import time

import pytest

PM_BASE = 0x600
PM1_STS, PM1_EN, PM1_CNT = PM_BASE, PM_BASE + 2, PM_BASE + 4
PWRBTN = 1 << 8
SLP_EN = 1 << 13
SCI = 9


def _program_pm_base(qt) -> None:  # noqa: ANN001
    def cfg_write(reg: int, value: int) -> None:
        qt.outl(0xCF8, 0x8000_0000 | (1 << 11) | (3 << 8) | reg)
        qt.outl(0xCFC, value)

    cfg_write(0x40, PM_BASE | 1)  # PMBA
    cfg_write(0x80, 1)  # PMREGMISC.PMIOSE: PM I/O space enabled


def _wait_event(session, name: str, timeout: float = 5.0) -> dict:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in session.qmp.events:
            if event["event"] == name:
                return event
        session.qmp.request("query-status")  # reads whatever events arrived meanwhile
        time.sleep(0.02)
    raise AssertionError(f"no {name} event within {timeout} s; got {session.qmp.events}")


@pytest.mark.clause("refvm-platform", "acpi/power-button")
def test_power_button_sets_status_and_raises_sci(libqtest) -> None:
    qt = libqtest()
    _program_pm_base(qt)
    qt.irq_intercept_in("ioapic")
    qt.outw(PM1_EN, PWRBTN)
    assert qt.qmp.execute("system_powerdown") == {}
    _wait_event(qt, "POWERDOWN")
    assert qt.inw(PM1_STS) & PWRBTN, "a press sets PWRBTN_STS"
    qt.poll_irqs(0.2)
    assert qt.irq_level.get(SCI), "PWRBTN_STS with PWRBTN_EN raises the SCI (IRQ 9)"
    qt.outw(PM1_STS, PWRBTN)  # write 1 to clear
    assert not qt.inw(PM1_STS) & PWRBTN
    qt.poll_irqs(0.2)
    assert not qt.irq_level.get(SCI), "clearing the status lowers the SCI"


@pytest.mark.clause("refvm-platform", "acpi/s5-soft-off")
@pytest.mark.clause("qmp", "power/no-shutdown")
def test_s5_with_no_shutdown_leaves_shutdown_state(libqtest) -> None:
    qt = libqtest("-no-shutdown")
    _program_pm_base(qt)
    before = qt.qmp.execute("query-status")["status"]
    qt.outw(PM1_CNT, SLP_EN)  # SLP_TYP 0: \_S5 on both
    event = _wait_event(qt, "SHUTDOWN")
    assert event["data"] == {"guest": True, "reason": "guest-shutdown"}
    # A running machine stops in state shutdown; QEMU under -S (prelaunch, never ran) keeps its state.
    expected = "shutdown" if before == "running" else before
    assert qt.qmp.execute("query-status")["status"] == expected


@pytest.mark.clause("qmp", "power/system_wakeup")
def test_s3_suspend_and_system_wakeup(libqtest) -> None:
    qt = libqtest()
    if qt.qmp.execute("query-status")["status"] != "running":
        # QEMU without a qtest accelerator runs -S: S3 from prelaunch aborts it ("invalid runstate transition").
        pytest.skip("the target's qtest machine is not running (QEMU under -S), and S3 needs a running machine")
    _program_pm_base(qt)
    qt.outw(PM1_CNT, SLP_EN | (1 << 10))  # SLP_TYP 1: QEMU's PIIX4 S3
    _wait_event(qt, "SUSPEND")
    assert qt.qmp.execute("query-status")["status"] == "suspended"
    assert qt.qmp.execute("system_wakeup") == {}
    _wait_event(qt, "WAKEUP")
    assert qt.inw(PM1_STS) & (1 << 15), "WAK_STS tells the OS it woke"
