"""The built-in devices of the pc machine and isa-debug-exit, each filed in the machine's device tree.

Kept out of machine.py (which runs the machine) so that one module says where each built-in sits in the tree:
the QOM path QEMU 7.2 gives it (refvm/devices/tree.py), its resets, and its migration sections by port name.
"""

from __future__ import annotations

from typing import Any

from refvm.devices.debug_exit import DebugExit
from refvm.devices.pci.pc import build_pc_pci
from refvm.devices.reset import KbdReset, ResetControl
from refvm.devices.serial import Serial16550
from refvm.devices.tree import pc_unattached_paths

__all__ = ["COM_PORTS", "add_platform_devices", "register_port", "add_debug_exit"]

#: Legacy COM ports: (I/O base, IRQ), as every PC and QEMU's `-serial` order.
COM_PORTS = ((0x3F8, 4), (0x2F8, 3), (0x3E8, 4), (0x2E8, 3))


def register_port(machine: Any, base: int, length: int, device: object, name: str) -> None:
    """Claim ports for a built-in device and file it under its tree node (``machine._port_owners``): its
    reset joins the node's resets, its state (if it has save/load) the node's sections, by port name."""
    machine.pio.register(base, length, device, name)
    path, type_name = machine._port_owners[name]
    node = machine.devices.get(path) or machine.devices.add(path, type_name)
    node.front = node.front or device
    if hasattr(device, "reset"):
        node.resets.append(device)
    if hasattr(device, "save") and hasattr(device, "load"):
        node.sections[name] = device


def add_platform_devices(machine: Any) -> None:
    """The pc built-ins, each in its tree node: CPUs, COM ports, i8042 and 0xCF9 resets, firmware, PCI host."""
    serials = [(i, c) for i, c in enumerate(machine.chardevs[: len(COM_PORTS)]) if c is not None]
    builtin = pc_unattached_paths(machine.config.smp, len(serials), machine.config.accel == "kvm")
    # The CPUs are nodes too (QMP's query-cpus-fast and query-hotpluggable-cpus take their qom-path from here);
    # their state is the KVM vCPU's, carried by the migration's KVM sections, not by a node's.
    cpu_type = f"{machine.config.cpu.split(',', 1)[0]}-x86_64-cpu"
    for k in range(machine.config.smp):
        machine.devices.add(builtin[f"cpu.{k}"], cpu_type)
    #: port-bus registration name -> (tree path, QOM type) of the built-in that owns it.
    machine._port_owners = {
        "i8042-reset": (builtin["i8042"], "i8042"), "reset-control": (builtin["PIIX3"], "PIIX3"),
        "fw_cfg": ("/machine/fw_cfg", "fw_cfg_io"), "fw_cfg-dma": ("/machine/fw_cfg", "fw_cfg_io"),
        "mc146818-rtc": (builtin["mc146818rtc"], "mc146818rtc"), "piix4-pm": (builtin["PIIX4_PM"], "PIIX4_PM"),
    }  # fmt: skip
    for k, (index, chardev) in enumerate(serials):
        base, irq = machine.config.serial_ports.get(index, COM_PORTS[index])
        machine._port_owners[f"serial@{base:#x}"] = (builtin[f"isa-serial.{k}"], "isa-serial")
        register_port(machine, base, 8, Serial16550(machine._irq_line(irq), chardev), f"serial@{base:#x}")
        machine.devices.get(builtin[f"isa-serial.{k}"]).backend = chardev  # type: ignore[union-attr]
    register_port(machine, 0x64, 1, KbdReset(machine.request_reset), "i8042-reset")
    register_port(machine, 0xCF9, 1, ResetControl(machine.request_reset), "reset-control")
    from refvm.devices.firmware import add_firmware

    machine.firmware = add_firmware(machine, machine._on_sleep)
    # The PCI config ports chain the reset-control register at 0xCF9, so they come after it. Without
    # firmware under qtest, Interrupt Line stays 0 as on QEMU; under KVM refvm plays the firmware.
    machine.pci, conf1 = build_pc_pci(
        machine.pio,
        machine.mmio,
        machine.msi_sink,
        machine.irq_sink,
        ram_size=machine.config.memory_bytes,
        assign_irq_lines=machine.config.accel == "kvm",
    )
    # The bus resets its functions (then their Interrupt Line and BAR mappings), so function nodes have
    # no resets of their own; CONFIG_ADDRESS is state but no reset clears it (as before the tree).
    machine.devices.add("/machine/i440fx", "i440FX-pcihost", front=conf1, transport=machine.pci,
                        sections={"pci-conf-idx": conf1.address_port}, resets=[machine.pci])
    chipset = {"I440FX": builtin["i440FX"], "PIIX3": builtin["PIIX3"], "ide": builtin["piix3-ide"],
               "piix4_pm": builtin["PIIX4_PM"]}  # fmt: skip
    for _slot, _fn, function in machine.pci.devices():
        path = chipset[function.vmsd_name]
        node = machine.devices.get(path) or machine.devices.add(path, function.type_name)
        node.transport = function
        node.sections[function.idstr] = function


def add_debug_exit(machine: Any, node: Any, props: dict[str, str]) -> None:
    """-device isa-debug-exit (plugged by device assembly, in -device order, into its tree node)."""
    base = int(props.get("iobase", "0x501"), 0)
    size = int(props.get("iosize", "0x02"), 0)
    device = DebugExit(machine.request_debug_exit)
    machine.pio.register(base, size, device, "isa-debug-exit")
    node.front = device
