"""QMP ``human-monitor-command`` for the HMP commands management tools still send: ``info status``, ``info pci``,
``info block``, ``info cpus``, ``info qtree``.

The texts follow QEMU 7.2's HMP layout (``\\r\\n`` line ends, "VM status: paused (prelaunch)", the ``info pci``
BAR lines), built from the same data refvm's QMP queries return, so the two never disagree. Any other command
line answers QEMU's ``unknown command: 'LINE'`` as a successful reply, as QEMU does.
"""

from __future__ import annotations

from typing import Any

from refvm.monitor.qmp import QmpServer

__all__ = ["HmpCommands", "format_pci", "format_status"]

_CLASS_NAMES = {0x0600: "Host bridge", 0x0601: "ISA bridge", 0x0101: "IDE controller", 0x0680: "Bridge",
                0x0200: "Ethernet controller", 0x0100: "SCSI controller",
                0x0780: "Communication controller"}  # fmt: skip


def format_status(status: str) -> str:
    if status == "running":
        return "VM status: running\r\n"
    return "VM status: paused\r\n" if status == "paused" else f"VM status: paused ({status})\r\n"


def format_pci(buses: list[dict[str, Any]]) -> str:
    """``info pci`` from query-pci's reply."""
    lines = []
    for bus in buses:
        for dev in bus["devices"]:
            lines.append(f"  Bus {dev['bus']:2d}, device {dev['slot']:3d}, function {dev['function']}:")
            cls = dev["class_info"]["class"]
            name = dev["class_info"].get("desc") or _CLASS_NAMES.get(cls) or f"Class {cls:04d}"
            ident = dev["id"]
            lines.append(f"    {name}: PCI device {ident['vendor']:04x}:{ident['device']:04x}")
            lines.append(f"      PCI subsystem {ident['subsystem-vendor']:04x}:{ident['subsystem']:04x}")
            if dev.get("irq_pin"):
                lines.append(f"      IRQ {dev.get('irq', 0)}, pin {chr(ord('A') + dev['irq_pin'] - 1)}")
            for region in dev["regions"]:
                addr = region["address"] & 0xFFFFFFFFFFFFFFFF
                end = (addr + region["size"] - 1) & 0xFFFFFFFFFFFFFFFF
                if region["type"] == "io":
                    lines.append(f"      BAR{region['bar']}: I/O at 0x{addr:04x} [0x{end:04x}].")
                else:
                    width = "64" if region.get("mem_type_64") else "32"
                    pref = " prefetchable" if region.get("prefetch") else ""
                    lines.append(f"      BAR{region['bar']}: {width} bit{pref} memory at 0x{addr:08x} [0x{end:08x}].")
            lines.append(f"      id \"{dev.get('qdev_id', '')}\"")
    return "".join(line + "\r\n" for line in lines)


class HmpCommands:
    """Registers human-monitor-command for one machine."""

    def __init__(self, server: QmpServer | None, machine: Any) -> None:
        self.machine = machine
        if server is not None:  # None: used by the -monitor human monitor only
            server.register("human-monitor-command", self.run, args={"command-line": str, "*cpu-index": int})

    def run(self, args: dict[str, Any]) -> str:
        line = args["command-line"].strip()
        words = line.split()
        if not words:
            return ""
        handlers = {"status": self.info_status, "pci": self.info_pci, "block": self.info_block,
                    "cpus": self.info_cpus, "qtree": self.info_qtree}  # fmt: skip
        if words[0] == "info" and len(words) >= 2 and words[1] in handlers:
            return handlers[words[1]]()
        return f"unknown command: '{line}'\r\n"

    def info_status(self) -> str:
        return format_status(self.machine.status())

    def info_pci(self) -> str:
        from refvm.devices.pci.query import query_pci_tree

        return format_pci(query_pci_tree(self.machine.devices))

    def info_cpus(self) -> str:
        # Under qtest (no vCPU threads) QEMU still lists the -smp CPUs: refvm lists them with thread_id 0.
        runners = getattr(self.machine, "_runners", [])
        ids = [r.native_id or 0 for r in runners] or [0] * self.machine.config.smp
        return "".join(f"{'*' if i == 0 else ' '} CPU #{i}: thread_id={tid}\r\n" for i, tid in enumerate(ids))

    def _attachments(self) -> dict[str, str]:
        """drive id -> the QOM path of the device using it."""
        out = {}
        for node in self.machine.devices.peripherals():
            if "drive" in node.spec.props:
                out[node.spec.props["drive"]] = node.device_path if node.qdev_id else "(anonymous)"
        return out

    def info_block(self) -> str:
        drives = getattr(getattr(self.machine, "backends", None), "drives", None) or {}
        attached = self._attachments()
        parts = []
        for ident, drive in drives.items():
            node = f" (#{drive.node_name.lstrip('#')})" if getattr(drive, "node_name", "") else ""
            flags = f"{drive.format}, read-only" if drive.readonly else drive.format
            text = f"{ident}{node}: {drive.file} ({flags})\r\n"
            if ident in attached:
                text += f"    Attached to:      {attached[ident]}\r\n"
            else:
                text += "    Removable device: not locked, tray closed\r\n"
            mode = "writeback" if drive.writeback else "writethrough"
            mode += ", direct" if drive.direct else ""
            mode += ", ignore flushes" if drive.no_flush else ""
            parts.append(text + f"    Cache mode:       {mode}\r\n")
        return "\r\n".join(parts)

    def info_qtree(self) -> str:
        """The PCI functions are the device tree's nodes on the host bridge's bus, in devfn order."""
        from refvm.devices.pci.query import device_info

        out = ["bus: main-system-bus", "  type System", '  dev: i440FX-pcihost, id ""', "    bus: pci.0",
               "      type PCI"]  # fmt: skip
        tree = self.machine.devices
        for node in tree.pci_nodes():
            fn = node.transport
            dev = device_info(tree.pci_bus(), fn.slot, fn.function, fn)
            out.append(f"      dev: {self._pci_type(fn, dev)}, id \"{dev.get('qdev_id', '')}\"")
            out.append(f"        addr = {dev['slot']:02x}.{dev['function']}")
        out += ['      dev: PIIX3, id ""', "        bus: isa.0", "          type ISA"]
        for index, dev in enumerate(getattr(self.machine, "chardevs", [])):
            if dev is None:
                continue
            base, irq = self.machine.config.serial_ports.get(index, _COM[index])
            out += ['          dev: isa-serial, id ""', f"            index = {index} ({index:#x})",
                    f"            iobase = {base} ({base:#x})", f"            irq = {irq} ({irq:#x})"]  # fmt: skip
        return "".join(line + "\r\n" for line in out)

    @staticmethod
    def _pci_type(fn: Any, dev: dict[str, Any]) -> str:
        return getattr(fn, "type_name", "") or _CLASS_NAMES.get(dev["class_info"]["class"], "pci-device")


_COM = ((0x3F8, 4), (0x2F8, 3), (0x3E8, 4), (0x2E8, 3))
