"""Power through Linux: `poweroff` ends the machine through ACPI S5, `reboot` resets it and Linux boots
again. One small machine (no devices) for both, reboot first: poweroff ends it."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from conformance.drivers.console import SerialConsole
from conformance.drivers.linux import LinuxGuest
from conformance.drivers.qmp import QmpDriver
from conformance.guest_linux.conftest import boot, clause

pytestmark = pytest.mark.hw_kvm


@pytest.fixture(scope="module")
def power_vm(target, linux_image) -> Iterator[tuple[LinuxGuest, QmpDriver]]:  # noqa: ANN001
    with tempfile.TemporaryDirectory(prefix="refvm-guest-power-") as tmp:
        qmp_path = Path(tmp) / "qmp.sock"
        argv = target.argv(LinuxGuest.argv(linux_image, ["-qmp", f"unix:{qmp_path},server=on,wait=off"], "128"))
        console = SerialConsole(argv, prompt=linux_image.prompt, timeout=180, name=f"{target.name} linux-power")
        qmp = None
        try:
            guest = boot(console, linux_image)
            qmp = QmpDriver(qmp_path)
            yield guest, qmp
        finally:
            if qmp is not None:
                qmp.close()
            console.close()


@pytest.fixture
def pvm(power_vm, request: pytest.FixtureRequest) -> tuple[LinuxGuest, QmpDriver]:  # noqa: ANN001
    request.node._linux_consoles = [power_vm[0].console]
    return power_vm


@clause("power/reboot")
def test_reboot_resets_and_linux_boots_again(pvm) -> None:  # noqa: ANN001
    guest, qmp = pvm
    guest.check("echo marker > /tmp/before-reboot")
    guest.send_line("reboot -f")
    event = qmp.wait_event("RESET", timeout=60)
    assert event["data"]["reason"] == "guest-reset"
    guest.wait_ready()
    assert guest.run("test -e /tmp/before-reboot").status == 1, "the initramfs survived the reset"


@clause("power/poweroff-acpi-s5")
def test_poweroff_ends_the_machine_through_acpi(pvm) -> None:  # noqa: ANN001
    guest, qmp = pvm
    assert guest.check("ls /sys/firmware/acpi/tables") != "", "Linux found no ACPI tables"
    guest.send_line("poweroff -f")
    event = qmp.wait_event("SHUTDOWN", timeout=30)
    assert event["data"] == {"guest": True, "reason": "guest-shutdown"}
    assert guest.console.wait_exit(30) == 0
