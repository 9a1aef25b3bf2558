"""QMP's QOM and type introspection for the objects refvm has: qom-list, qom-set, qom-list-types,
device-list-properties and query-machines (QEMU 7.2's names, reply shapes, error classes and texts).

The object tree is :class:`refvm.monitor.qom.QomCommands`'s plus ``/machine`` (type ``<machine type>-machine``
with the -machine properties refvm records: usb, dump-guest-core, mem-merge, vmport, read-only here; QEMU lets
them be set after start, where they change nothing). ``guest-stats-polling-interval`` of a virtio-balloon is
writable as in QEMU: N > 0 seconds hands the driver its stats buffer back every N seconds so it posts fresh
statistics (VIRTIO 1.2 5.5.6.3), 0 stops.

Types: refvm's own device models and machine types, each with QEMU's parent type name, so that
``qom-list-types implements=X`` answers what a management tool asks ("is there a virtio-net-pci?").
"""

from __future__ import annotations

import threading
from typing import Any

from refvm import machine_types
from refvm.monitor.qmp import QmpError, QmpServer
from refvm.monitor.qom import QomCommands, _Object

__all__ = ["QomQmpCommands", "TYPE_PARENTS"]

#: refvm's QOM types -> QEMU's parent type; None for the roots. Abstract types are in ABSTRACT.
TYPE_PARENTS: dict[str, str | None] = {
    "object": None, "device": "object", "machine": "object", "container": "object",
    "x86-machine": "machine", "generic-pc-machine": "x86-machine",
    "isa-device": "device", "pci-device": "device", "virtio-pci": "pci-device",
    "isa-serial": "isa-device", "isa-debug-exit": "isa-device",
    "virtio-blk-pci": "virtio-blk-pci-base", "virtio-blk-pci-base": "virtio-pci",
    "virtio-net-pci": "virtio-net-pci-base", "virtio-net-pci-base": "virtio-pci",
    "virtio-rng-pci": "virtio-rng-pci-base", "virtio-rng-pci-base": "virtio-pci",
    "virtio-balloon-pci": "virtio-balloon-pci-base", "virtio-balloon-pci-base": "virtio-pci",
    "virtio-serial-pci": "virtio-serial-pci-base", "virtio-serial-pci-base": "virtio-pci",
    "virtconsole": "virtserialport", "virtserialport": "virtio-serial-port", "virtio-serial-port": "device",
    **{mt.qom_type: "generic-pc-machine" for mt in machine_types.MACHINE_TYPES.values()},
}  # fmt: skip
ABSTRACT = {"object", "device", "machine", "x86-machine", "generic-pc-machine", "isa-device", "pci-device",
            "virtio-pci", "virtio-serial-port", *(t for t in TYPE_PARENTS if t.endswith("-pci-base"))}  # fmt: skip
#: QOM type names of device properties (QEMU's); any other property is a "str".
PROP_TYPES = {
    "addr": "int32", "multifunction": "bool", "vectors": "uint32", "disable-legacy": "OnOffAuto",
    "disable-modern": "bool", "indirect_desc": "bool", "event_idx": "bool", "packed": "bool",
    "iobase": "uint32", "irq": "uint32", "index": "uint32", "iosize": "uint32", "wakeup": "bool",
    "num-queues": "uint16", "queue-size": "uint16", "max_ports": "uint32", "nr": "uint32", "mq": "bool",
    "rx_queue_size": "uint16", "tx_queue_size": "uint16", "deflate-on-oom": "bool", "bootindex": "int32",
    "x-fastpath": "bool",
}  # fmt: skip
#: Properties refvm has and QEMU does not: experimental ("x-") switches of refvm's own implementation, listed by
#: device-list-properties like QEMU lists its own x- properties, so a management tool can discover them.
REFVM_EXTENSION_PROPS = frozenset({"x-fastpath"})
MAX_POLL_INTERVAL = (1 << 32) - 1


def _ancestors(name: str) -> list[str]:
    chain = []
    while name is not None:
        chain.append(name)
        name = TYPE_PARENTS.get(name)  # type: ignore[assignment]
    return chain


def device_properties(typename: str) -> list[str]:
    """The -device properties refvm accepts for ``typename`` (empty list: not a device it has)."""
    from refvm.cli import DEVICE_PROPS, pci_device_models
    from refvm.virtio.devices import COMMON_PCI_PROPS, COMMON_VIRTIO_PROPS

    if typename in DEVICE_PROPS:
        return [p for p in DEVICE_PROPS[typename] if p != "id"]
    model = pci_device_models().get(typename)
    if model is None:
        return []
    own = list(getattr(model, "PROPERTIES", ()))
    common = [*COMMON_PCI_PROPS, *COMMON_VIRTIO_PROPS] if typename.endswith("-pci") else []
    boot = ["bootindex"] if typename in ("virtio-blk-pci", "virtio-net-pci") else []  # QEMU's bootable devices
    return [p for p in dict.fromkeys([*own, *common, *boot]) if p not in ("id", "bus")]


def boot_configuration(boot: dict[str, str]) -> dict[str, Any]:
    """QEMU's BootConfiguration (qom-get /machine boot) from the -boot options, in QEMU's member order."""
    out: dict[str, Any] = {"order": boot.get("order", "cad")}
    if "once" in boot:
        out["once"] = boot["once"]
    for key in ("menu", "strict", "splash"):
        if key in boot:
            out[key] = boot[key] in ("on", "yes", "true") if key != "splash" else boot[key]
    for key in ("reboot-timeout", "splash-time"):
        if key in boot:
            out[key] = int(boot[key])
    return out


class _Poller:
    """Hands a balloon's stats buffer back to the driver every ``interval`` seconds (0: never)."""

    def __init__(self, balloon: Any) -> None:
        self.balloon = balloon
        self.interval = 0
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def set(self, value: Any) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            raise QmpError("Invalid parameter type for 'guest-stats-polling-interval', expected: integer")
        if value < 0:
            raise QmpError("timer value must be greater than zero")
        if value > MAX_POLL_INTERVAL:
            raise QmpError("timer value is too big")
        self.interval = value
        self._wake.set()
        if value and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="balloon-stats", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            self._wake.clear()
            if self._wake.wait(self.interval or None):
                continue  # the interval changed: start counting again
            self.balloon.request_stats()


class QomQmpCommands(QomCommands):
    """qom-get (inherited), qom-list, qom-set, qom-list-types, device-list-properties, query-machines."""

    def __init__(self, server: QmpServer, machine: Any) -> None:
        super().__init__(server, machine)
        self._pollers: dict[int, _Poller] = {}
        server.register("qom-list", self.qom_list, args={"path": str})
        server.register("qom-set", self.qom_set, args={"path": str, "property": str, "value": object})
        server.register("qom-list-types", self.qom_list_types, args={"*implements": str, "*abstract": bool})
        server.register("device-list-properties", self.device_list_properties, args={"typename": str})
        server.register("query-machines", self.query_machines)

    # ---- the tree: QomCommands' objects plus /machine and writable balloon polling -----------------
    def objects(self) -> dict[str, _Object]:
        out = super().objects()
        plat = getattr(getattr(self.machine, "config", None), "platform", None)
        opts = getattr(plat, "machine", None) or machine_types.MachineOptions()
        out["/machine"] = _Object(
            opts.type.qom_type,
            {"usb": lambda: opts.usb, "dump-guest-core": lambda: opts.dump_guest_core,
             "mem-merge": lambda: opts.mem_merge, "vmport": lambda: opts.vmport,
             "boot": lambda: boot_configuration(getattr(plat, "boot", {}))},
            {"usb": "bool", "dump-guest-core": "bool", "mem-merge": "bool", "vmport": "OnOffAuto",
             "boot": "BootConfiguration"},
        )  # fmt: skip
        indexes = getattr(plat, "boot_indexes", {})
        for path, obj in out.items():  # QEMU's bootable devices carry bootindex (-1: none given)
            if obj.type_name in ("virtio-blk-pci", "virtio-net-pci", "virtio-blk-device", "virtio-net-device"):
                qdev_id = path.split("/")[3]
                obj.props["bootindex"] = lambda i=qdev_id: indexes.get(i, -1)
                obj.types["bootindex"] = "int32"
        for obj in out.values():
            balloon = getattr(obj, "balloon", None)
            if balloon is not None:
                poller = self._pollers.setdefault(id(balloon), _Poller(balloon))
                obj.props["guest-stats-polling-interval"] = lambda p=poller: p.interval
                obj.setters["guest-stats-polling-interval"] = poller.set
                obj.types["guest-stats-polling-interval"] = "int"
        return out

    def _lookup(self, path: str) -> _Object:
        obj = self.resolve(path)
        if obj is None:
            raise QmpError(f"Device '{path}' not found", "DeviceNotFound")
        return obj

    def qom_list(self, args: dict[str, Any]) -> list[dict[str, str]]:
        path = args["path"]
        obj = self._lookup(path)
        props = [{"name": name, "type": obj.types.get(name, "str")} for name in obj.props]
        objects = self.objects()
        base = next((p for p, o in objects.items() if o is obj), path).rstrip("/")
        for child_path, child in objects.items():
            parent, _, leaf = child_path.rpartition("/")
            if parent == base and child_path != base:
                props.append({"name": leaf, "type": f"child<{child.type_name}>"})
        return props

    def qom_set(self, args: dict[str, Any]) -> dict[str, Any]:
        obj = self._lookup(args["path"])
        prop = args["property"]
        if prop not in obj.props:
            raise QmpError(f"Property '{obj.type_name}.{prop}' not found")
        setter = obj.setters.get(prop)
        if setter is None:
            raise QmpError(f"Property '{obj.type_name}.{prop}' is not writable")
        setter(args["value"])
        return {}

    def qom_list_types(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        implements, abstract = args.get("implements"), args.get("abstract", False)
        out = []
        for name, parent in TYPE_PARENTS.items():
            if (name in ABSTRACT and not abstract) or (implements and implements not in _ancestors(name)):
                continue
            entry: dict[str, Any] = {"name": name}
            if name in ABSTRACT:
                entry["abstract"] = True
            if parent:
                entry["parent"] = parent
            out.append(entry)
        return out

    def device_list_properties(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        typename = args["typename"]
        if typename not in TYPE_PARENTS:
            raise QmpError(f"Device '{typename}' not found", "DeviceNotFound")
        props = device_properties(typename)
        if typename in ABSTRACT or "device" not in _ancestors(typename) or not props:
            raise QmpError("Parameter 'typename' expects a non-abstract device type")
        return [{"name": p, "type": PROP_TYPES.get(p, "str")} for p in props]

    def query_machines(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        out = []
        for mt in machine_types.MACHINE_TYPES.values():
            entry: dict[str, Any] = {"hotpluggable-cpus": False, "name": mt.name, "numa-mem-supported": False,
                                     "default-cpu-type": "qemu64-x86_64-cpu", "cpu-max": 255, "deprecated": False,
                                     "default-ram-id": "pc.ram"}  # fmt: skip
            if mt.alias:
                entry["alias"] = mt.alias
            if mt.is_default:
                entry["is-default"] = True
            out.append(entry)
        return out
