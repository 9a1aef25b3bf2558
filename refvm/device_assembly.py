"""Turns the -drive/-netdev/-object/-chardev/-device part of a MachineConfig into plugged devices.

Backends are opened first and devices created second, in command-line order, so errors come out in the
order a QEMU user expects and name the option they came from (`-device TEXT: message`). Everything opened
is recorded so the machine can close it on exit, including after a failure half-way. Each ``-device`` joins
the machine's device tree (refvm/devices/tree.py) with its front end, transport and backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from refvm.config import DeviceSpec, MachineConfig
from refvm.devices.chardev import Chardev, open_chardev


class AssemblyError(ValueError):
    """A backend or device could not be created; the message is a full QEMU-style line without prog name."""


@dataclass
class Backends:
    drives: dict[str, Any] = field(default_factory=dict)
    netdevs: dict[str, Any] = field(default_factory=dict)
    chardevs: dict[str, Chardev] = field(default_factory=dict)
    objects: dict[str, dict[str, str]] = field(default_factory=dict)

    def close(self) -> None:
        for group in (self.drives, self.netdevs, self.chardevs):
            for backend in group.values():
                close = getattr(backend, "close", None)
                if close is not None:
                    close()


def _drive_text(props: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in props.items())


def open_backends(cfg: MachineConfig, serial_chardev_ids: set[str], *, clock: Any, throttle_groups: Any,
                  node_names: Any = None) -> Backends:
    """Open every -drive, -netdev, -object and the -chardevs no serial port took.

    Drives are refvm.block.drive.Drive objects: the image driver with its cache mode (refvm.block.cache),
    the guest-visible write cache and a throttle-group member whose timers run on ``clock``; their
    ``#blockNNN`` names come from the machine's ``node_names`` (refvm.block.drive.NodeNames).
    """
    from refvm.block.drive import open_drive
    from refvm.virtio.devices.hubport import HubPort
    from refvm.virtio.devices.tap import Tap

    backends = Backends(objects=dict(cfg.objects))
    try:
        for ident, props in cfg.drives.items():
            try:
                backends.drives[ident] = open_drive(ident, props, clock=clock, throttle_groups=throttle_groups,
                                                     node_names=node_names)
            except ValueError as err:
                raise AssemblyError(f"-drive {_drive_text(props)}: {err}") from None
        for ident, props in cfg.netdevs.items():
            try:
                if props["type"] == "hubport":
                    backends.netdevs[ident] = HubPort(int(props.get("hubid", "0"), 0))
                    continue
                fd: int | list[int] | None = int(props["fd"]) if "fd" in props else None
                if "fds" in props:
                    fd = [int(f) for f in props["fds"].split(":")]
                queues = int(props.get("queues", "1"), 0)
                backends.netdevs[ident] = Tap(props.get("ifname", ""), fd=fd, queues=queues)
            except (OSError, ValueError) as err:
                raise AssemblyError(f"-netdev tap,id={ident}: could not open tap: {err}") from None
        for ident, spec in cfg.chardevs.items():
            if ident not in serial_chardev_ids:
                backends.chardevs[ident] = open_chardev(spec)
    except Exception:
        backends.close()
        raise
    return backends


def _pci_address(spec: DeviceSpec, addr: str) -> tuple[int, int]:
    """QEMU's addr=SLOT[.FN] (hex, e.g. 0x3, 03.0, 4.1)."""
    try:
        slot_text, _, fn_text = addr.partition(".")
        slot = int(slot_text, 16)
        function = int(fn_text, 16) if fn_text else 0
    except ValueError:
        raise AssemblyError(f"-device {spec.text}: Property '{spec.driver}.addr' doesn't take value '{addr}'") from None
    if not (0 <= slot < 32 and 0 <= function < 8):
        raise AssemblyError(f"-device {spec.text}: Property '{spec.driver}.addr' doesn't take value '{addr}'")
    return slot, function


def _with_globals(cfg: MachineConfig, spec: DeviceSpec) -> dict[str, str]:
    props: dict[str, str] = {}
    if spec.driver.startswith("virtio-") and spec.driver.endswith("-pci"):
        props.update(cfg.globals.get("virtio-pci", {}))
    props.update(cfg.globals.get(spec.driver, {}))
    props.update(spec.props)
    return props


def plug_pci_devices(machine: Any, cfg: MachineConfig, backends: Backends) -> None:
    """Add every -device to ``machine.devices`` in order and plug it: isa-debug-exit on the port bus, virtio
    PCI functions on the PCI bus, virtconsole ports on the last virtio-serial."""
    from refvm.devices.pci.bus import PciError
    from refvm.devices.tree import DeviceTreeError
    from refvm.platform_assembly import add_debug_exit
    from refvm.virtio.devices import DEVICE_MODELS

    last_serial = None
    for spec in cfg.devices:
        try:
            node = machine.devices.add_peripheral(spec)
        except DeviceTreeError as err:
            raise AssemblyError(f"-device {spec.text}: {err}") from None
        if spec.driver == "isa-debug-exit":
            add_debug_exit(machine, node, spec.props)
            continue
        model = DEVICE_MODELS.get(spec.driver)
        if model is None:
            continue  # accepted on the command line, modelled nowhere: a name in the tree only
        props = _with_globals(cfg, spec)
        try:
            if spec.driver == "virtconsole":
                if last_serial is None:
                    raise AssemblyError(
                        f"-device {spec.text}: No 'virtio-serial-bus' bus found for device 'virtconsole'"
                    )
                node.front = last_serial.add_port(model.create(props, chardevs=backends.chardevs))
                node.transport, node.backend = last_serial, node.front.chardev
                continue
            _plug_virtio_pci(machine, spec, props, model, backends, node)
        except AssemblyError:
            raise
        except (ValueError, PciError) as err:
            raise AssemblyError(f"-device {spec.text}: {err}") from None
        if spec.driver == "virtio-serial-pci":
            last_serial = node.front


def _plug_virtio_pci(machine: Any, spec: DeviceSpec, props: dict[str, str], model: Any, backends: Backends,
                     node: Any) -> None:
    """Create the virtio device and its PCI proxy, plug it, and fill its tree node."""
    from refvm.virtio.devices import Props
    from refvm.virtio.pci import VirtioPciFunction

    device = model.create(
        machine.memory,
        props,
        chardevs=backends.chardevs,
        drives=backends.drives,
        netdevs=backends.netdevs,
        objects=backends.objects,
        type_name=spec.driver,
    )
    pci_props = Props(spec.driver, props, props.keys()).pci()
    function = VirtioPciFunction(
        device,
        disable_legacy=_on_off(pci_props.get("disable-legacy")),
        disable_modern=_on_off(pci_props.get("disable-modern")) or False,
        vectors=int(pci_props["vectors"], 0) if "vectors" in pci_props else None,
        qdev_id=pci_props.get("id", ""),
        type_name=spec.driver,
        deviations=machine.deviations,
    )
    slot, fn = _pci_address(spec, pci_props["addr"]) if "addr" in pci_props else (None, 0)
    machine.pci.add(function, slot, fn)
    node.front, node.transport = device, function
    node.backend = getattr(device, "backend", None) or getattr(device, "tap", None)
    node.sections[function.idstr] = function


def _on_off(value: str | None) -> bool | None:
    if value is None or value == "auto":
        return None
    if value in ("on", "yes", "true"):
        return True
    if value in ("off", "no", "false"):
        return False
    raise ValueError(f"Parameter expects 'on', 'off' or 'auto', not '{value}'")
