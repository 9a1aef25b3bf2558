"""Virtio device models (VIRTIO 1.2 chapter 5), transport independent, behaving as QEMU 7.2's.

:data:`DEVICE_MODELS` maps QEMU's ``-device`` names to model classes. Each has a factory::

    Model.create(mem, props, *, chardevs=..., drives=..., netdevs=..., objects=..., type_name=...)

``props`` are the ``-device`` options as strings (validated; a bad one raises ValueError with a
QEMU-like message naming it); ``drives`` maps ids to :class:`refvm.block.BlockBackend`, ``netdevs``
to :class:`~refvm.virtio.devices.tap.Tap`, ``chardevs`` to :class:`refvm.devices.chardev.Chardev`,
``objects`` to ``-object`` option dicts (``rng-random``'s ``filename``). Every model accepts the
transport's properties (:data:`COMMON_PCI_PROPS`; ``Props(...).pci()`` extracts them) and the core's
ring properties ``indirect_desc``, ``event_idx``, ``packed`` (QEMU default: packed off).

``virtconsole`` is a port, not a PCI function: ``VirtConsole.create(props, chardevs=...)`` (no
``mem``) returns a :class:`~refvm.virtio.devices.console.ConsolePort` to plug into the
``virtio-serial-pci`` it belongs to with ``VirtioSerial.add_port(port)``.
"""

from __future__ import annotations

from refvm.virtio.devices.balloon import VirtioBalloon
from refvm.virtio.devices.blk import VirtioBlk
from refvm.virtio.devices.console import ConsolePort, VirtConsole, VirtioSerial
from refvm.virtio.devices.net import VirtioNet
from refvm.virtio.devices.props import COMMON_PCI_PROPS, COMMON_VIRTIO_PROPS, Props
from refvm.virtio.devices.rng import VirtioRng
from refvm.virtio.devices.tap import Tap

__all__ = [
    "DEVICE_MODELS",
    "PCI_FUNCTIONS",
    "COMMON_PCI_PROPS",
    "COMMON_VIRTIO_PROPS",
    "Props",
    "VirtioBlk",
    "VirtioRng",
    "VirtioSerial",
    "VirtConsole",
    "ConsolePort",
    "VirtioBalloon",
    "VirtioNet",
    "Tap",
]

DEVICE_MODELS: dict[str, type] = {
    "virtio-blk-pci": VirtioBlk,
    "virtio-rng-pci": VirtioRng,
    "virtio-serial-pci": VirtioSerial,
    "virtconsole": VirtConsole,
    "virtio-balloon-pci": VirtioBalloon,
    "virtio-net-pci": VirtioNet,
}

#: The -device names that are PCI functions (take COMMON_PCI_PROPS); virtconsole is a serial port.
PCI_FUNCTIONS: frozenset[str] = frozenset(n for n in DEVICE_MODELS if n.endswith("-pci"))
