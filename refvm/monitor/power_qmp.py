"""QMP commands about power and identity: system_powerdown, system_wakeup, query-uuid (QEMU 7.2's shapes).

`system_powerdown` presses the ACPI power button and emits POWERDOWN (QEMU emits it whether or not the guest
listens); `system_wakeup` answers QEMU's error text unless the guest is suspended (S3).
"""

from __future__ import annotations

from typing import Any

from refvm.monitor.qmp import QmpError, QmpServer

__all__ = ["PowerCommands"]


class PowerCommands:
    """Registers the power commands of one machine on a QMP server."""

    def __init__(self, server: QmpServer, machine: Any) -> None:
        self.server = server
        self.machine = machine
        server.register("system_powerdown", self.system_powerdown)
        server.register("system_wakeup", self.system_wakeup)
        server.register("query-uuid", self.query_uuid)

    def system_powerdown(self, args: dict[str, Any]) -> dict[str, Any]:
        self.machine.power_down()
        self.server.emit_event("POWERDOWN")
        return {}

    def system_wakeup(self, args: dict[str, Any]) -> dict[str, Any]:
        if not self.machine.wakeup():
            raise QmpError("Unable to wake up: guest is not in suspended state")
        return {}

    def query_uuid(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"UUID": self.machine.firmware.uuid_text}
