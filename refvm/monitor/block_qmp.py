"""QMP block commands: ``query-block`` and ``block_set_io_throttle``, shaped as QEMU 7.2 answers them.

Reply shapes were taken from QEMU 7.2 itself (``qemu-system-x86_64 -accel tcg -S -nodefaults
-drive if=none,... -device virtio-blk-pci,...`` and ``query-block``; ``tests/test_block_qmp.py``
repeats that comparison when QEMU is installed):

* one ``BlockInfo`` per drive, in creation order: ``device`` (the -drive id), ``locked`` false,
  ``type`` "unknown"; with a device attached: ``removable`` false, ``io-status`` "ok" and ``qdev``
  (the QOM path of the device's virtio backend: ``/machine/peripheral/ID/virtio-backend`` for
  ``-device ...,id=ID``, else ``/machine/peripheral-anon/device[N]/virtio-backend`` where N counts
  every ``-device`` without an id, of any type, in command-line order); without a device:
  ``removable`` true and neither ``qdev`` nor ``io-status``;
* ``inserted`` (``BlockDeviceInfo``): ``file``, ``node-name`` (``#blockNNN``), ``ro``, ``drv``,
  ``backing_file`` (if any), ``backing_file_depth``, ``encrypted`` false, ``detect_zeroes``,
  the throttle members (:meth:`ThrottleConfig.to_qmp_info`), ``image`` (``qemu-img info`` keys,
  with ``backing-image`` nested for each backing file), ``cache`` {writeback (the live WCE: a guest
  toggling it shows here), direct, no-flush} and ``write_threshold`` 0.

``block_set_io_throttle`` checks arguments as QAPI does (missing/wrong type/unexpected first), then
finds the drive -- by ``device`` (the -drive id) or by ``id``, a QOM path resolved like QEMU's
``find_device_state`` (absolute, or relative to ``/machine/peripheral``) that must name the device
holding the drive -- then validates the limits, and finally applies them through the machine's
:class:`~refvm.block.throttle_group.ThrottleGroups`. Error texts and classes are QEMU's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from refvm.block.drive import Drive
from refvm.block.throttle_config import QMP_FIELDS, ThrottleConfig, ThrottleConfigError
from refvm.block.throttle_group import ThrottleGroups
from refvm.devices.tree import DeviceTree
from refvm.monitor.qmp import QmpError, QmpServer

__all__ = ["BlockCommands", "qdev_paths", "image_info"]

#: Block-device front ends refvm has; their QOM backend child (virtio proxies hold the real device).
_BLOCK_DEVICE_TYPES = ("virtio-blk-pci", "virtio-blk-pci-transitional", "virtio-blk-pci-non-transitional",
                       "virtio-blk-device")
_CONTAINERS = ("", "machine", "machine/peripheral", "machine/peripheral-anon", "machine/unattached")


def qdev_paths(tree: DeviceTree) -> tuple[dict[str, str], dict[str, str | None]]:
    """QOM paths of the user's ``-device``s, from the machine's device tree (QEMU's names).

    Returns (drive id -> qdev path of the device using it, device QOM path -> drive id or None), paths
    without the leading '/'. The second map holds every device path (proxy and, for virtio, its
    ``virtio-backend`` child) so ``block_set_io_throttle id=`` can tell "not found" from "no block backend".
    """
    by_drive: dict[str, str] = {}
    objects: dict[str, str | None] = {}
    for node in tree.peripherals():
        drive = node.spec.props.get("drive") if node.type_name in _BLOCK_DEVICE_TYPES else None
        objects[node.path.lstrip("/")] = None
        objects[node.device_path.lstrip("/")] = drive
        if drive:
            by_drive.setdefault(drive, node.device_path)
    return by_drive, objects


def image_info(driver: Any) -> dict[str, Any]:
    """``ImageInfo`` of a driver and, nested as ``backing-image``, of each image below it."""
    info = dict(driver.info())
    backing = getattr(driver, "backing", None)
    if backing is not None:
        info["backing-image"] = image_info(backing)
    return info


class BlockCommands:
    """Registers ``query-block`` and ``block_set_io_throttle`` for one machine's drives."""

    def __init__(
        self,
        server: QmpServer,
        machine: Any,
        drives: Mapping[str, Drive],
        throttle_groups: ThrottleGroups,
        *,
        devices: DeviceTree | None = None,
    ) -> None:
        self.server = server
        self.machine = machine
        self.drives = drives
        self.throttle_groups = throttle_groups
        if devices is None:
            devices = machine.devices
        self._by_drive, self._objects = qdev_paths(devices)
        server.register("query-block", self.query_block)
        schema: dict[str, type | tuple[type, ...]] = {}
        for name, (qtype, mandatory) in QMP_FIELDS.items():
            schema[name if mandatory else "*" + name] = int if qtype == "int" else str
        server.register("block_set_io_throttle", self.block_set_io_throttle, args=schema)

    # --- query-block ------------------------------------------------------------------------------
    def query_block(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        return [self.block_info(drive) for drive in self.drives.values()]

    def block_info(self, drive: Drive) -> dict[str, Any]:
        qdev = self._by_drive.get(drive.id)
        out: dict[str, Any] = {"device": drive.device}
        if qdev is not None:
            out["qdev"] = qdev
            out["io-status"] = "ok"
        out.update({"locked": False, "removable": qdev is None, "type": "unknown"})
        out["inserted"] = self.inserted(drive)
        return out

    @staticmethod
    def inserted(drive: Drive) -> dict[str, Any]:
        """``BlockDeviceInfo`` of an open drive."""
        info = image_info(drive.driver)
        out: dict[str, Any] = {
            "file": drive.file,
            "node-name": drive.node_name,
            "ro": drive.readonly,
            "drv": drive.format,
        }
        if "backing-filename" in info:
            out["backing_file"] = info["backing-filename"]
        out["backing_file_depth"] = drive.backing_file_depth
        out["encrypted"] = False
        out["detect_zeroes"] = drive.detect_zeroes
        out.update(drive.throttle.query_info())
        out["image"] = info
        out["cache"] = drive.mode.qmp(drive.writeback)
        out["write_threshold"] = 0
        return out

    # --- block_set_io_throttle --------------------------------------------------------------------
    def _find(self, device: str | None, qdev_id: str | None) -> Drive:
        """QEMU's ``qmp_get_blk``: exactly one of device/id; texts and classes as QEMU 7.2's."""
        if (device is None) == (qdev_id is None):
            raise QmpError("Need exactly one of 'device' and 'id'")
        if device is not None:
            drive = self.drives.get(device)
            if drive is None:
                raise QmpError(f"Device '{device}' not found", "DeviceNotFound")
            return drive
        assert qdev_id is not None
        parts = [p for p in qdev_id.split("/") if p]
        rel = "/".join(parts) if qdev_id.startswith("/") else "/".join(["machine", "peripheral", *parts])
        if rel in _CONTAINERS:
            raise QmpError(f"{qdev_id} is not a hotpluggable device")
        if rel not in self._objects:
            raise QmpError(f"Device '{qdev_id}' not found", "DeviceNotFound")
        drive_id = self._objects[rel]
        drive = self.drives.get(drive_id) if drive_id else None
        if drive is None:
            raise QmpError("Device does not have a block device backend")
        return drive

    def block_set_io_throttle(self, args: dict[str, Any]) -> dict[str, Any]:
        pending: ThrottleConfigError | None = None
        config: ThrottleConfig | None = None
        try:
            config = ThrottleConfig.from_qmp(args)
        except ThrottleConfigError as exc:  # limits are validated only after the drive is found
            pending = exc
        drive = self._find(args.get("device"), args.get("id"))
        if pending is not None or config is None:
            raise QmpError(str(pending))
        default_group = args["device"] if "device" in args else args["id"]
        try:
            self.throttle_groups.set_io_throttle(drive.throttle, config, default_group)
        except ValueError as exc:
            raise QmpError(str(exc)) from None
        return {}
