"""QMP ``block_resize``, as QEMU 7.2 runs it (``qmp_block_resize`` in blockdev.c).

Arguments: ``device`` (a -drive id / BlockBackend name) and/or ``node-name``, and ``size`` in bytes.
The order of checks and the texts were taken from QEMU 7.2 itself (``-qmp stdio``):

* the node is looked up first (``bdrv_lookup_bs``): ``device`` wins when it names a drive, else
  ``node-name`` is tried; neither -> GenericError "Cannot find device='D' nor node-name='N'" (an
  absent member shows as '');
* then ``size < 0`` -> "Parameter 'size' expects a >0 size" (0 itself is accepted);
* then the image is truncated (:meth:`refvm.block.drive.Drive.resize`: "Image is read-only", qcow2's
  "The new size must be a multiple of 512", ...);
* finally every virtio-blk device on the drive re-reads its length: ``capacity`` changes and the
  driver gets a configuration change (VIRTIO 1.2 5.2.6.2 / 2.5.1, QEMU's virtio_blk_resize).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from refvm.block.drive import Drive
from refvm.monitor.qmp import QmpError, QmpServer

__all__ = ["BlockResizeCommands"]


class BlockResizeCommands:
    """Registers ``block_resize`` for one machine's drives."""

    def __init__(self, server: QmpServer, machine: Any, drives: Mapping[str, Drive]) -> None:
        self.server = server
        self.machine = machine
        self.drives = drives
        server.register("block_resize", self.block_resize, args={"*device": str, "*node-name": str, "size": int})

    def _lookup(self, device: str | None, node_name: str | None) -> Drive:
        """QEMU's ``bdrv_lookup_bs``: the BlockBackend name first, then the node name."""
        if device is not None and device in self.drives:
            return self.drives[device]
        if node_name is not None:
            for drive in self.drives.values():
                if drive.node_name == node_name:
                    return drive
        raise QmpError(f"Cannot find device='{device or ''}' nor node-name='{node_name or ''}'")

    def _frontends(self, drive: Drive) -> list[Any]:
        """The device models whose block backend is ``drive`` (those with a :meth:`capacity_changed`)."""
        return [m for m in self.machine.devices.fronts()
                if getattr(m, "backend", None) is drive and hasattr(m, "capacity_changed")]

    def block_resize(self, args: dict[str, Any]) -> dict[str, Any]:
        drive = self._lookup(args.get("device"), args.get("node-name"))
        size = args["size"]
        if size < 0:
            raise QmpError("Parameter 'size' expects a >0 size")
        frontends = self._frontends(drive)
        # QEMU drains the node around the truncate: hold the devices' locks so no request runs meanwhile.
        for model in frontends:
            model.lock.acquire()
        try:
            try:
                drive.resize(size)
            except ValueError as exc:
                raise QmpError(str(exc)) from None
            for model in frontends:
                model.capacity_changed()
        finally:
            for model in reversed(frontends):
                model.lock.release()
        return {}
