"""QMP run-state control of a booted probe guest: the same commands and events on every target."""

from __future__ import annotations

import pytest
from qemu.qmp import ExecuteError

from conformance.drivers.qmp import QmpDriver

#: These boot the probe guest: on refvm that needs /dev/kvm (qtest-only suites do not).
pytestmark = [pytest.mark.kvm, pytest.mark.guest]


@pytest.fixture
def paused_guest(target, probe_kernel, consoles, tmp_path):
    """A probe guest started with -S and a QMP socket: (console, qmp)."""
    sock = tmp_path / "qmp.sock"
    con = consoles(target.probe_argv(probe_kernel, ["-S", "-qmp", f"unix:{sock},server=on,wait=off"]), name=target.name)
    qmp = QmpDriver(sock)
    yield con, qmp
    qmp.close()


@pytest.mark.clause("qmp", "greeting/capabilities")
def test_greeting_carries_version_and_capabilities(paused_guest) -> None:
    _, qmp = paused_guest
    greeting = qmp.greeting["QMP"]
    assert set(greeting["version"]["qemu"]) == {"major", "minor", "micro"}
    assert isinstance(greeting["capabilities"], list)


@pytest.mark.clause("qmp", "runstate/query-status")
def test_prelaunch_until_cont(paused_guest) -> None:
    con, qmp = paused_guest
    status = qmp.execute("query-status")
    assert status["status"] == "prelaunch" and status["running"] is False
    qmp.execute("cont")
    qmp.wait_event("RESUME")
    assert "\nrefvm probe guest" in "\n" + con.wait_prompt().lstrip()  # CPU filter warnings may come first
    assert qmp.execute("query-status")["status"] == "running"


@pytest.mark.clause("qmp", "runstate/query-status")
def test_stop_and_cont(paused_guest) -> None:
    con, qmp = paused_guest
    qmp.execute("cont")
    con.wait_prompt()
    qmp.execute("stop")
    qmp.wait_event("STOP")
    assert qmp.execute("query-status") == {"status": "paused", "singlestep": False, "running": False}
    con.send("echo while paused\r")
    with pytest.raises(AssertionError):
        con.wait_prompt(timeout=0.5)  # a paused guest does not answer
    qmp.execute("cont")
    qmp.wait_event("RESUME")
    assert "while paused" in con.wait_prompt()


@pytest.mark.clause("qmp", "runstate/system-reset")
def test_system_reset_reboots_and_sends_reset_event(paused_guest) -> None:
    con, qmp = paused_guest
    qmp.execute("cont")
    con.wait_prompt()
    qmp.execute("system_reset")
    event = qmp.wait_event("RESET")
    assert event["data"]["guest"] is False
    assert "refvm probe guest" in con.wait_prompt()


@pytest.mark.clause("qmp", "runstate/quit")
def test_quit_exits_zero(paused_guest) -> None:
    con, qmp = paused_guest
    qmp.execute("quit")
    assert con.wait_exit() == 0


@pytest.mark.clause("qmp", "errors/command-not-found")
def test_unknown_command(paused_guest) -> None:
    _, qmp = paused_guest
    with pytest.raises(ExecuteError) as info:
        qmp.execute("no-such-command")
    assert info.value.error_class == "CommandNotFound"
