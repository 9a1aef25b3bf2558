"""QMP ``qom-get`` for the QOM objects refvm models, with QEMU 7.2's path resolution and errors.

Objects (as QEMU names them): each ``-device TYPE,id=X`` of a virtio-pci type is the proxy
``/machine/peripheral/X`` (type TYPE) with its device as child ``/machine/peripheral/X/virtio-backend``
(type ``virtio-<kind>-device``); the containers ``/machine/peripheral``, ``/machine/peripheral-anon``
and ``/machine/unattached`` are of type ``container``.

Paths resolve like ``object_resolve_path``: an absolute path must name an object exactly; a partial
path (no leading '/') matches every object whose path ends with its components and must match exactly
one. Anything else is ``DeviceNotFound`` "Device 'PATH' not found"; an unknown property is
GenericError "Property 'TYPE.NAME' not found" (texts taken from QEMU 7.2 with ``-qmp stdio``).

Properties: ``type`` on every object; on a virtio-balloon (proxy or backend) ``guest-stats`` --
``{"stats": {"stat-...": N, ...}, "last-update": SECONDS}``, the last statistics the driver posted on
the stats queue (VIRTIO 1.2 5.5.6.3), 2**64-1 (QEMU's -1 as uint64) for a tag it did not send, and
``last-update`` 0 until it sent any -- and ``guest-stats-polling-interval`` (0: refvm does not poll).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from refvm.devices.tree import CONTAINERS
from refvm.monitor.qmp import QmpError, QmpServer

__all__ = ["QomCommands", "balloon_guest_stats"]

#: QEMU's "-1" for a statistic the guest never reported (the QAPI member is a uint64).
STAT_ABSENT = (1 << 64) - 1
#: The order in which QEMU 7.2 lists the ``guest-stats`` members (its QDict's iteration order).
GUEST_STATS_ORDER = (
    "stat-htlb-pgalloc", "stat-swap-out", "stat-available-memory", "stat-htlb-pgfail", "stat-free-memory",
    "stat-minor-faults", "stat-major-faults", "stat-total-memory", "stat-swap-in", "stat-disk-caches",
)  # fmt: skip


def balloon_guest_stats(balloon: Any) -> dict[str, Any]:
    """QEMU's ``balloon_stats_get_all``: every known statistic (absent ones as 2**64-1) and the time."""
    with balloon.lock:
        reported = dict(balloon.stats)
        last = int(balloon.stats_last_update)
    stats = {name: int(reported.get(name, STAT_ABSENT)) & STAT_ABSENT for name in GUEST_STATS_ORDER}
    return {"stats": stats, "last-update": last}


class _Object:
    """One QOM object: its type name, its readable properties, their QOM type names (for qom-list; "str" when
    not given) and the writable ones' setters (qom-set)."""

    def __init__(self, type_name: str, props: dict[str, Callable[[], Any]] | None = None,
                 types: dict[str, str] | None = None, setters: dict[str, Callable[[Any], None]] | None = None) -> None:
        self.type_name = type_name
        self.props: dict[str, Callable[[], Any]] = {"type": lambda: type_name, **(props or {})}
        self.types: dict[str, str] = {"type": "string", **(types or {})}
        self.setters: dict[str, Callable[[Any], None]] = dict(setters or {})


class QomCommands:
    """Registers ``qom-get`` for one machine (its device tree is walked at each call)."""

    def __init__(self, server: QmpServer, machine: Any) -> None:
        self.server = server
        self.machine = machine
        server.register("qom-get", self.qom_get, args={"path": str, "property": str})

    # ---- the object tree ---------------------------------------------------------------------------
    def objects(self) -> dict[str, _Object]:
        """Absolute path -> object, for the containers and every virtio-pci ``-device`` with an id (from the
        machine's device tree, in PCI slot order)."""
        from refvm.virtio.devices import VirtioBalloon
        from refvm.virtio.pci import VirtioPciFunction

        out = {path: _Object("container") for path in CONTAINERS}
        tree = getattr(self.machine, "devices", None)
        peripherals = tree.peripherals() if tree is not None else []
        nodes = [n for n in peripherals if n.qdev_id and isinstance(n.transport, VirtioPciFunction)]
        for node in sorted(nodes, key=lambda n: (n.transport.slot, n.transport.function)):
            fn, vdev = node.transport, node.front
            props: dict[str, Callable[[], Any]] = {}
            if isinstance(vdev, VirtioBalloon):
                props["guest-stats"] = lambda b=vdev: balloon_guest_stats(b)
                props["guest-stats-polling-interval"] = lambda: 0
            out[node.path] = _Object(fn.type_name, props)
            kind = fn.type_name.removesuffix("-non-transitional").removesuffix("-transitional")
            backend_type = kind.removesuffix("-pci") + "-device"
            out[node.device_path] = _Object(backend_type, props)
            if isinstance(vdev, VirtioBalloon):  # qom_qmp makes the polling interval writable
                out[node.path].balloon = out[node.device_path].balloon = vdev  # type: ignore[attr-defined]
        return out

    def resolve(self, path: str) -> _Object | None:
        """QEMU's ``object_resolve_path``: exact for absolute paths, a unique suffix match otherwise."""
        objects = self.objects()
        if path.startswith("/"):
            parts = [p for p in path.split("/") if p]
            return objects.get("/" + "/".join(parts))
        want = [p for p in path.split("/") if p]
        if not want:
            return None
        hits = [obj for name, obj in objects.items() if name.split("/")[-len(want):] == want]
        return hits[0] if len(hits) == 1 else None

    # ---- qom-get -----------------------------------------------------------------------------------
    def qom_get(self, args: dict[str, Any]) -> Any:
        path, prop = args["path"], args["property"]
        obj = self.resolve(path)
        if obj is None:
            raise QmpError(f"Device '{path}' not found", "DeviceNotFound")
        getter = obj.props.get(prop)
        if getter is None:
            raise QmpError(f"Property '{obj.type_name}.{prop}' not found")
        return getter()
