"""QMP commands about a machine's devices: balloon, query-balloon, query-pci.

Kept apart from the run-state commands (refvm.monitor.qmp) because these need the device models; names,
argument checks and reply shapes follow QEMU 7.2's qapi schema (qapi/machine.json, qapi/pci.json).
"""

from __future__ import annotations

from typing import Any

from refvm.devices.pci.query import query_pci_tree
from refvm.monitor.qmp import QmpError, QmpServer

PAGE = 4096


class DeviceCommands:
    """Registers the device-facing commands of one machine on a QMP server."""

    def __init__(self, server: QmpServer, machine: Any) -> None:
        self.server = server
        self.machine = machine
        server.register("balloon", self.balloon, args={"value": int})
        server.register("query-balloon", self.query_balloon)
        server.register("query-pci", self.query_pci)
        for balloon in self._balloons():
            balloon.on_actual_change = self._balloon_changed

    def _balloons(self) -> list[Any]:
        from refvm.virtio.devices import VirtioBalloon

        return self.machine.devices.fronts(VirtioBalloon)

    def _balloon(self) -> Any:
        balloons = self._balloons()
        if not balloons:
            raise QmpError("No balloon device has been activated", "DeviceNotActive")
        return balloons[0]

    def _guest_bytes(self, balloon: Any) -> int:
        return self.machine.config.memory_bytes - balloon.actual * PAGE

    def balloon(self, args: dict[str, Any]) -> dict[str, Any]:
        """Set the guest's target size in bytes; the balloon holds the rest (QEMU clamps to RAM size)."""
        balloon = self._balloon()
        value = args["value"]
        if value <= 0:
            raise QmpError("Parameter 'target' expects a size")
        ram = self.machine.config.memory_bytes
        balloon.set_target_pages((ram - min(value, ram)) // PAGE)
        return {}

    def query_balloon(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"actual": self._guest_bytes(self._balloon())}

    def _balloon_changed(self, actual_pages: int) -> None:
        self.server.emit_event("BALLOON_CHANGE", {"actual": self.machine.config.memory_bytes - actual_pages * PAGE})

    def query_pci(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        return query_pci_tree(self.machine.devices)
