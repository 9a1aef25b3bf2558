"""QMP queries about the machine's accelerator, character devices and I/O threads: query-kvm, query-chardev,
query-iothreads, with QEMU 7.2's reply shapes.

query-chardev lists the chardevs refvm opened (serial ports' and -chardev's); the QMP monitor's own socket is
not a chardev in refvm, so unlike QEMU it is not listed. refvm has no ``-object iothread``, so query-iothreads
is always empty (its virtio notify thread is internal, as QEMU's main loop is not listed either).
"""

from __future__ import annotations

import os
from typing import Any

from refvm.monitor.qmp import QmpServer

__all__ = ["InfoCommands", "chardev_filename"]


def chardev_filename(dev: Any) -> str:
    """QEMU's ``filename`` for a chardev: stdio, null, file, pty:/dev/pts/N, [disconnected:]unix:PATH,server=on."""
    kind = type(dev).__name__
    if kind == "PtyChardev":
        return f"pty:{dev.path}"
    if kind == "SocketChardev":
        text = dev._describe()
        return text.removeprefix("disconnected:") if getattr(dev, "connected", False) else text
    return {"NullChardev": "null", "FileChardev": "file", "StdioChardev": "stdio"}.get(kind, kind)


class InfoCommands:
    """Registers query-kvm, query-chardev and query-iothreads for one machine."""

    def __init__(self, server: QmpServer, machine: Any) -> None:
        self.machine = machine
        server.register("query-kvm", self.query_kvm)
        server.register("query-chardev", self.query_chardev)
        server.register("query-iothreads", lambda args: [])

    def query_kvm(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"enabled": self.machine.config.accel == "kvm", "present": os.path.exists("/dev/kvm")}

    def chardevs(self) -> list[tuple[str, Any, bool]]:
        """(label, chardev, has a frontend) for every chardev the machine opened."""
        out = []
        for index, dev in enumerate(getattr(self.machine, "chardevs", [])):
            if dev is not None:
                out.append((dev.label or f"serial{index}", dev, True))
        backends = getattr(self.machine, "backends", None)
        for label, dev in (getattr(backends, "chardevs", None) or {}).items():
            out.append((label, dev, getattr(dev, "_receiver", None) is not None))
        return out

    def query_chardev(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"frontend-open": frontend, "filename": chardev_filename(dev), "label": label}
                for label, dev, frontend in self.chardevs()]  # fmt: skip
