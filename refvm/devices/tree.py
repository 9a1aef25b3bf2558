"""The device tree: one ordered registry of a machine's devices, keyed by QOM path, built by device assembly.

Every place that needs "all the devices" walks this one registry: a system reset, the QMP commands that find
devices (``qom-get``/``qom-list``/``qom-set``, ``query-block``'s ``qdev``, ``block_set_io_throttle id=``,
``block_resize``, ``set_link``/``announce-self``, ``balloon``, ``query-pci``, HMP ``info block``/``info pci``/
``info qtree``, the CPUs' ``qom-path`` of ``query-cpus-fast``) and migration, which takes
the section of each device from here. Before it, the machine kept parallel lists (its resettables, its PCI
models) and each monitor module derived QOM names on its own.

Keys are QEMU 7.2's QOM paths:

* ``-device ...,id=ID`` is ``/machine/peripheral/ID``; a ``-device`` without an id is
  ``/machine/peripheral-anon/device[N]``, N counting every id-less ``-device`` of any type in command-line
  order. A second ``-device`` with an id already taken is refused with QEMU's "Duplicate ID 'ID' for device".
* built-in devices are where QEMU's ``pc`` machine puts them: ``/machine/i440fx`` (the host bridge, with
  CONFIG_ADDRESS and the PCI bus), ``/machine/fw_cfg``, and ``/machine/unattached/device[N]`` numbered in
  QEMU 7.2's creation order (:func:`pc_unattached_paths`).

A node holds the device's three parts -- ``front`` (the model the guest programs), ``transport`` (the PCI
function it sits behind, if any) and ``backend`` (drive, netdev or chardev) -- plus ``sections``, the objects
whose state migration carries, by section idstr (the idstrs are the stream's, unchanged: ``mc146818-rtc``,
``0000:00:04.0/virtio-blk``), and ``resets``, what a system reset calls, in order. The tree's order is the
order devices were assembled: the built-ins, then every ``-device`` in command-line order.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DeviceNode", "DeviceTree", "DeviceTreeError", "pc_unattached_paths", "PCI_HOST", "PERIPHERAL",
           "PERIPHERAL_ANON", "UNATTACHED", "CONTAINERS"]

PERIPHERAL = "/machine/peripheral"
PERIPHERAL_ANON = "/machine/peripheral-anon"
UNATTACHED = "/machine/unattached"
#: The host bridge: its node's transport is the root PCI bus.
PCI_HOST = "/machine/i440fx"
#: The QOM containers (type ``container``) that hold the devices.
CONTAINERS = (PERIPHERAL, PERIPHERAL_ANON, UNATTACHED)

#: QEMU 7.2 ``pc``: the objects created in /machine/unattached after the CPUs, the kvmvapic and (under KVM) the
#: kvmclock, in creation order, as `qom-list /machine/unattached` shows them (`-nodefaults`).
_PC_BEFORE_SERIALS = ("i440FX", "PIIX3", "i8257", "i8257", "isa-i8259", "isa-i8259", "hpet", "mc146818rtc",
                      "isa-pit", "isa-pcspk")
_PC_AFTER_SERIALS = ("isa-fdc", "i8042", "vmport", "vmmouse", "port92", "piix3-ide", "PIIX4_PM")


class DeviceTreeError(ValueError):
    """A device cannot join the tree; the message is QEMU's text, without the option prefix."""


def pc_unattached_paths(smp: int, serials: int, kvm: bool = False) -> dict[str, str]:
    """QOM paths of the ``pc`` built-ins, by QEMU type name; ``isa-serial`` gets ``isa-serial.K``, CPU K ``cpu.K``.

    QEMU numbers ``/machine/unattached/device[N]`` as objects are created: CPU 0, then the kvmvapic its APIC
    creates, then CPUs 1.. (so CPU K>0 is ``device[K+1]``), then, with ``-accel kvm`` only, the kvmclock, then
    the chipset (``_PC_BEFORE_SERIALS``), one ``isa-serial`` per ``-serial``, and the rest. (Under KVM the
    i8259s and the PIT are ``kvm-i8259``/``kvm-pit`` at the same places; refvm files neither in its tree.)
    """
    names = ["cpu.0", "kvmvapic", *(f"cpu.{k}" for k in range(1, smp)), *(["kvmclock"] if kvm else []),
             *_PC_BEFORE_SERIALS, *(f"isa-serial.{k}" for k in range(serials)), *_PC_AFTER_SERIALS]
    out: dict[str, str] = {}
    for index, name in enumerate(names):
        out.setdefault(name, f"{UNATTACHED}/device[{index}]")
    return out


@dataclass(eq=False)
class DeviceNode:
    """One device: its QOM path and type, its parts, its migration sections and what its reset calls."""

    path: str
    type_name: str
    front: Any = None
    transport: Any = None
    backend: Any = None
    #: The ``-device`` it came from (None for built-ins).
    spec: Any = None
    sections: dict[str, Any] = field(default_factory=dict)
    resets: list[Any] = field(default_factory=list)

    @property
    def qdev_id(self) -> str:
        return str(self.spec.props.get("id", "")) if self.spec is not None else ""

    @property
    def virtio_pci(self) -> bool:
        """A virtio-pci proxy: QEMU gives it the virtio device as child ``virtio-backend``."""
        return self.type_name.startswith("virtio-") and self.type_name.endswith("-pci")

    @property
    def device_path(self) -> str:
        """The QOM path of the device model itself (for a virtio proxy, its ``virtio-backend`` child)."""
        return self.path + "/virtio-backend" if self.virtio_pci else self.path

    def reset(self) -> None:
        for device in self.resets:
            device.reset()


class DeviceTree:
    """The machine's devices by QOM path, in assembly order (see the module docstring)."""

    def __init__(self) -> None:
        self._nodes: dict[str, DeviceNode] = {}
        self._anonymous = 0

    def __iter__(self) -> Iterator[DeviceNode]:
        return iter(list(self._nodes.values()))

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, path: object) -> bool:
        return path in self._nodes

    def get(self, path: str) -> DeviceNode | None:
        return self._nodes.get(path)

    def paths(self) -> list[str]:
        return list(self._nodes)

    def add(self, path: str, type_name: str, **parts: Any) -> DeviceNode:
        """Add a built-in device at ``path``; ``parts`` are DeviceNode fields (front, sections, resets, ...)."""
        if path in self._nodes:
            raise DeviceTreeError(f"attempt to add duplicate property '{path.rpartition('/')[2]}' to object")
        node = DeviceNode(path, type_name, **parts)
        self._nodes[path] = node
        return node

    def add_peripheral(self, spec: Any) -> DeviceNode:
        """Add a ``-device`` (an object with ``driver`` and ``props``), named as QEMU names it."""
        qdev_id = spec.props.get("id")
        if qdev_id:
            path = f"{PERIPHERAL}/{qdev_id}"
            if path in self._nodes:
                raise DeviceTreeError(f"Duplicate ID '{qdev_id}' for device")
        else:
            path = f"{PERIPHERAL_ANON}/device[{self._anonymous}]"
            self._anonymous += 1
        node = DeviceNode(path, spec.driver, spec=spec)
        self._nodes[path] = node
        return node

    def peripherals(self) -> list[DeviceNode]:
        """The ``-device`` nodes, in command-line order."""
        return [n for n in self._nodes.values() if n.spec is not None]

    def fronts(self, kind: type | tuple[type, ...] = object) -> list[Any]:
        """The front ends of the ``-device``s that are instances of ``kind``, in command-line order."""
        return [n.front for n in self.peripherals() if n.front is not None and isinstance(n.front, kind)]

    def node_of(self, part: Any) -> DeviceNode | None:
        """The node holding ``part`` as its front end or transport."""
        return next((n for n in self._nodes.values() if part is not None and part in (n.front, n.transport)), None)

    def pci_bus(self) -> Any:
        """The root PCI bus: the host bridge node's transport (None before the host bridge is assembled)."""
        host = self._nodes.get(PCI_HOST)
        return host.transport if host is not None else None

    def pci_nodes(self) -> list[DeviceNode]:
        """The nodes whose transport is a function on the root bus, in devfn order: the order in which
        ``query-pci``, HMP ``info pci`` and ``info qtree`` list them (QEMU walks the bus by devfn)."""
        bus = self.pci_bus()
        if bus is None:
            return []
        nodes = [n for n in self._nodes.values() if n.path != PCI_HOST and getattr(n.transport, "bus", None) is bus]
        return sorted(nodes, key=lambda n: (n.transport.slot, n.transport.function))

    def sections(self) -> dict[str, Any]:
        """Every migration section's idstr -> the object whose save()/load() carries it, in tree order."""
        out: dict[str, Any] = {}
        for node in self._nodes.values():
            out.update(node.sections)
        return out

    def reset(self) -> None:
        """A system reset: each node resets its devices, in tree order."""
        for node in list(self._nodes.values()):
            node.reset()
