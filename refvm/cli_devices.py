"""-device handling beyond the device models: isa-serial, devices refvm refuses, and bootindex=.

* ``isa-serial[,chardev=ID][,index=N][,iobase=P][,irq=I][,id=X]`` becomes a COM port: index N (the next free
  one by default) takes QEMU's port and IRQ for COM(N+1) (0x3f8/4, 0x2f8/3, 0x3e8/4, 0x2e8/3) unless iobase=
  or irq= say otherwise. The check texts are QEMU 7.2's.
* Devices a cloud command line carries but refvm does not model (USB controllers and devices, VGA adapters,
  sound, ...) are refused with one line naming the device and why, instead of "not a valid device model name".
* ``bootindex=N`` on any device is accepted and recorded (refvm boots -kernel images only, there is no firmware
  boot order to apply), and so is ``scsi=off`` on virtio-blk-pci (refvm has no SCSI passthrough).
"""

from __future__ import annotations

from dataclasses import dataclass

from refvm.config import DeviceSpec

__all__ = ["REFUSED_DEVICES", "IsaSerial", "refuse_reason", "split_generic_props", "place_isa_serials"]

COM_PORTS = ((0x3F8, 4), (0x2F8, 3), (0x3E8, 4), (0x2E8, 3))
MAX_ISA_SERIAL = 4
ISA_SERIAL_PROPS = ("chardev", "index", "iobase", "irq", "id", "wakeup")

_USB = "refvm models no USB controller or USB device"
_VGA = "refvm has no graphical display and models no VGA adapter"
REFUSED_DEVICES = {
    **{name: _USB for name in ("piix3-usb-uhci", "piix4-usb-uhci", "ich9-usb-uhci1", "ich9-usb-ehci1", "usb-ehci",
                               "nec-usb-xhci", "qemu-xhci", "usb-tablet", "usb-mouse", "usb-kbd", "usb-storage",
                               "usb-hub", "usb-host", "usb-redir")},
    **{name: _VGA for name in ("cirrus-vga", "VGA", "qxl-vga", "qxl", "virtio-vga", "virtio-gpu-pci", "bochs-display",
                               "vmware-svga", "secondary-vga", "ramfb")},
    **{name: "refvm models no sound device" for name in ("intel-hda", "hda-duplex", "hda-micro", "ich9-intel-hda",
                                                          "AC97", "sb16")},
}  # fmt: skip


def refuse_reason(driver: str) -> str | None:
    """Why refvm refuses ``driver``, or None when it is not a known unmodelled device."""
    if driver in REFUSED_DEVICES:
        return REFUSED_DEVICES[driver]
    if driver.startswith("usb-"):
        return _USB
    return None


def split_generic_props(driver: str, props: dict[str, str], text: str) -> tuple[dict[str, str], int | None]:
    """Remove the properties every refvm device accepts without modelling them; returns (rest, bootindex)."""
    rest = dict(props)
    bootindex = None
    if "bootindex" in rest:
        value = rest.pop("bootindex")
        try:
            bootindex = int(value, 0)
        except ValueError:
            raise ValueError(f"-device {text}: Property '{driver}.bootindex' expects a number") from None
        if bootindex < -1:
            raise ValueError(f"-device {text}: Property '{driver}.bootindex' value {value} is out of range")
    if driver == "virtio-blk-pci" and "scsi" in rest:
        if rest.pop("scsi") not in ("off", "false", "no"):
            raise ValueError(f"-device {text}: Please set scsi=off for virtio-blk devices (refvm has no SCSI)")
    return rest, bootindex


@dataclass
class IsaSerial:
    """One ``-device isa-serial`` after checking."""

    index: int | None
    iobase: int | None
    irq: int | None
    chardev: str | None
    text: str


def parse_isa_serial(spec: DeviceSpec) -> IsaSerial:
    """Check an isa-serial's properties (ValueError with QEMU's text)."""
    where = f"-device {spec.text}"
    values: dict[str, int] = {}
    for key, value in spec.props.items():
        if key not in ISA_SERIAL_PROPS:
            raise ValueError(f"{where}: Property 'isa-serial.{key}' not found")
        if key in ("index", "iobase", "irq"):
            try:
                values[key] = int(value, 0)
            except ValueError:
                raise ValueError(f"{where}: Property 'isa-serial.{key}' expects a number") from None
    index = values.get("index")
    if index is not None and not 0 <= index < MAX_ISA_SERIAL:
        raise ValueError(f"{where}: Max. supported number of ISA serial ports is {MAX_ISA_SERIAL}.")
    if "iobase" in values and not 0 <= values["iobase"] <= 0xFFF8:
        raise ValueError(f"{where}: Property 'isa-serial.iobase' value {spec.props['iobase']} is out of range")
    if "irq" in values and not 0 <= values["irq"] < 16:
        raise ValueError(f"{where}: Property 'isa-serial.irq' value {spec.props['irq']} is out of range (0..15)")
    return IsaSerial(index, values.get("iobase"), values.get("irq"), spec.props.get("chardev"), spec.text)


def place_isa_serials(
    serials: list[IsaSerial], ports: list[object | None], chardevs: dict[str, object]
) -> dict[int, tuple[int, int]]:
    """Put each isa-serial's chardev into ``ports`` (one slot per COM index, extended as needed) and return
    the (iobase, irq) overrides by index. ``ports`` already holds the -serial ports, which come first."""
    used_chardevs = {id(p) for p in ports if p is not None}
    overrides: dict[int, tuple[int, int]] = {}
    taken = {i for i, p in enumerate(ports) if p is not None}
    for dev in serials:
        where = f"-device {dev.text}"
        index = dev.index
        if index is None:
            index = next((i for i in range(MAX_ISA_SERIAL) if i not in taken), None)
            if index is None:
                raise ValueError(f"{where}: Max. supported number of ISA serial ports is {MAX_ISA_SERIAL}.")
        if index in taken:
            raise ValueError(f"{where}: serial port index {index} is already in use")
        if dev.chardev is None:
            from refvm.devices.chardev import parse_serial_option

            spec = parse_serial_option("null", index)
        else:
            if dev.chardev not in chardevs:
                raise ValueError(f"{where}: Property 'serial.chardev' can't find value '{dev.chardev}'")
            spec = chardevs[dev.chardev]
            if id(spec) in used_chardevs:
                raise ValueError(f"{where}: Property 'serial.chardev' can't take value '{dev.chardev}', it's in use")
            used_chardevs.add(id(spec))
        while len(ports) <= index:
            ports.append(None)
        ports[index] = spec
        taken.add(index)
        base, irq = COM_PORTS[index]
        overrides[index] = (base if dev.iobase is None else dev.iobase, irq if dev.irq is None else dev.irq)
    return overrides
