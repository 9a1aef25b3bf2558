"""Parsing of <devices> children in libvirt's domain XML (the subset refvmd supports).

Device kinds that libvirt knows but refvm cannot provide are refused with VIR_ERR_CONFIG_UNSUPPORTED naming the
element; values libvirt itself rejects get libvirt's XML_ERROR texts.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from refvm.mgmt import vir
from refvm.mgmt.domain_model import CharDev, Controller, Disk, Interface, IoTune, MemBalloon, PciAddress, Rng
from refvm.mgmt.errors import (
    VIR_ERR_INVALID_ARG,
    VIR_ERR_NO_TARGET,
    VIR_FROM_DOMAIN,
    VIR_FROM_QEMU,
    VirError,
    config_unsupported,
    xml_error,
)
from refvm.mgmt.xml_util import enum_attr, text_of, uint_attr

# <devices> children that libvirt knows and refvmd does not model
UNSUPPORTED_DEVICES = ("graphics", "video", "input", "sound", "hostdev", "channel", "watchdog", "filesystem",
                       "smartcard", "redirdev", "redirfilter", "hub", "panic", "shmem", "memory", "iommu", "vsock",
                       "tpm", "lease", "parallel", "audio", "crypto")
DISK_TYPES = ("file", "block", "dir", "network", "volume", "nvme", "vhostuser")
DISK_DEVICES = ("disk", "cdrom", "floppy", "lun")
DISK_BUSES = ("ide", "scsi", "virtio", "xen", "usb", "uml", "sata", "sd", "fdc")
CACHE_MODES = ("default", "none", "writethrough", "writeback", "directsync", "unsafe")
IFACE_TYPES = ("user", "ethernet", "vhostuser", "server", "client", "mcast", "network", "bridge", "internal",
               "direct", "hostdev", "udp", "vdpa", "null", "vds")
CHAR_TYPES = ("null", "vc", "pty", "dev", "file", "pipe", "stdio", "udp", "tcp", "unix", "spicevmc", "spiceport",
              "nmdm", "qemu-vdagent", "dbus")
IOTUNE_NUMERIC = tuple(name for name, kind in vir.BLOCK_IOTUNE_PARAMS if kind == vir.VIR_TYPED_PARAM_ULLONG)
MAC_RE = re.compile(r"^[0-9a-fA-F]{1,2}(:[0-9a-fA-F]{1,2}){5}$")


def parse_address(dev: ET.Element) -> PciAddress | None:
    """<address type='pci' .../>; other address types libvirt knows are not refvm's (CONFIG_UNSUPPORTED)."""
    node = dev.find("address")
    if node is None:
        return None
    kind = node.get("type")
    if kind != "pci":
        raise config_unsupported(f"address type '{kind}' is not supported for <{dev.tag}> (refvm has pci only)")
    addr = PciAddress(uint_attr(node, "domain", 0), uint_attr(node, "bus", 0), uint_attr(node, "slot", 0),
                      uint_attr(node, "function", 0))
    if addr.domain != 0 or addr.bus != 0:
        raise xml_error(f"Invalid PCI address {addr.domain:04x}:{addr.bus:02x}:{addr.slot:02x}.{addr.function}. "
                        "Only PCI domain 0 and bus 0 are available")
    if addr.slot > 31 or addr.function > 7:
        raise xml_error(f"Invalid PCI address: slot must be <= 31 and function <= 7 in <{dev.tag}>")
    return addr


def parse_iotune(node: ET.Element | None) -> IoTune:
    """<iotune><total_bytes_sec>N</total_bytes_sec>...</iotune>, validated as libvirt validates it."""
    tune = IoTune()
    if node is None:
        return tune
    for child in node:
        if child.tag == "group_name":
            tune.group_name = child.text or None
            continue
        if child.tag not in IOTUNE_NUMERIC:
            continue  # libvirt ignores unknown iotune children
        text = (child.text or "").strip()
        if not text.isdigit():
            raise xml_error(f"disk iotune field '{child.tag}' must be an integer")
        tune.values[child.tag] = int(text)
    validate_iotune(tune.values, xml=True)
    return tune


def validate_iotune(values: dict[str, int], xml: bool = False) -> None:
    """libvirt's rules: total_* excludes read_*/write_* (per kind); *_max needs its base and must exceed it."""
    def err(text: str) -> VirError:
        return xml_error(text) if xml else VirError(VIR_ERR_INVALID_ARG, text, domain=VIR_FROM_QEMU)

    for kind in ("bytes_sec", "iops_sec", "bytes_sec_max", "iops_sec_max"):
        if values.get(f"total_{kind}") and (values.get(f"read_{kind}") or values.get(f"write_{kind}")):
            raise err(f"total and read/write {kind} cannot be set at the same time")
    for op in ("total", "read", "write"):
        for kind in ("bytes", "iops"):
            base, peak = values.get(f"{op}_{kind}_sec", 0), values.get(f"{op}_{kind}_sec_max", 0)
            if peak and not base:
                raise err(f"value '{op}_{kind}_sec_max' cannot be set if '{op}_{kind}_sec' is not set")
            if peak and peak < base:
                raise err(f"value '{op}_{kind}_sec_max' cannot be smaller than '{op}_{kind}_sec'")
            if values.get(f"{op}_{kind}_sec_max_length") and not peak:
                raise err(f"value '{op}_{kind}_sec_max_length' cannot be set if '{op}_{kind}_sec_max' is not set")
    limit = 1_000_000_000_000_000
    if any(value > limit for value in values.values()):
        raise err(f"block I/O throttle limit value must be no more than {limit} using QEMU")


def parse_disk(node: ET.Element) -> Disk:
    disk = Disk()
    disk.type = enum_attr(node, "type", DISK_TYPES, default="file")
    if disk.type not in ("file", "block", "volume"):
        raise config_unsupported(f"unsupported disk type '{disk.type}' (refvm has file, block and volume)")
    disk.device = enum_attr(node, "device", DISK_DEVICES, default="disk")
    if disk.device != "disk":
        raise config_unsupported(f"unsupported disk device '{disk.device}' (refvm has virtio disks only)")
    drv = node.find("driver")
    if drv is not None:
        disk.driver_name = drv.get("name")
        disk.driver_type = enum_attr(drv, "type", ("raw", "qcow2", "qcow", "vmdk", "vpc", "vdi", "qed", "luks",
                                                   "iso", "dmg", "bochs", "cloop", "fat", "host_device", "none"))
        if disk.driver_type not in (None, "raw", "qcow2"):
            raise config_unsupported(f"unsupported disk format '{disk.driver_type}' (refvm has raw and qcow2)")
        disk.cache = enum_attr(drv, "cache", CACHE_MODES)
        disk.io = enum_attr(drv, "io", ("threads", "native", "io_uring"))
        disk.discard = enum_attr(drv, "discard", ("unmap", "ignore"))
    src = node.find("source")
    if src is not None:
        if disk.type == "file":
            disk.source = src.get("file")
        elif disk.type == "block":
            disk.source = src.get("dev")
        else:
            disk.source_pool, disk.source = src.get("pool"), src.get("volume")
            if not disk.source_pool or not disk.source:
                raise xml_error("'pool' and 'volume' must be specified together for 'pool' type source")
    target = node.find("target")
    if target is None or not target.get("dev"):
        raise VirError(VIR_ERR_NO_TARGET, disk.source or None, domain=VIR_FROM_DOMAIN)
    disk.target_dev = target.get("dev", "")
    disk.target_bus = enum_attr(target, "bus", DISK_BUSES)
    if disk.target_bus is None:
        disk.target_bus = "virtio" if disk.target_dev.startswith("vd") else None
    if disk.target_bus != "virtio":
        raise config_unsupported(f"disk bus '{disk.target_bus or 'ide'}' is not supported by refvm for "
                                 f"'{disk.target_dev}' (use bus='virtio')")
    disk.readonly = node.find("readonly") is not None
    disk.serial = text_of(node, "serial")
    disk.iotune = parse_iotune(node.find("iotune"))
    disk.address = parse_address(node)
    return disk


def parse_mac(text: str) -> str:
    if not MAC_RE.match(text):
        raise xml_error(f"unable to parse mac address '{text}'")
    octets = [int(x, 16) for x in text.split(":")]
    if octets[0] & 1:
        raise xml_error(f"expected unicast mac address, found multicast '{text}'")
    return ":".join(f"{o:02x}" for o in octets)


def parse_interface(node: ET.Element) -> Interface:
    nic = Interface()
    nic.type = enum_attr(node, "type", IFACE_TYPES, required=True)
    if nic.type not in ("ethernet", "bridge"):
        raise config_unsupported(f"interface type '{nic.type}' is not supported by refvm (ethernet, bridge)")
    mac = node.find("mac")
    if mac is not None and mac.get("address"):
        nic.mac = parse_mac(mac.get("address", ""))
    model = node.find("model")
    if model is not None:
        nic.model = model.get("type", "virtio")
        if nic.model != "virtio":
            raise config_unsupported(f"interface model '{nic.model}' is not supported by refvm (virtio only)")
    target = node.find("target")
    if target is not None:
        nic.target_dev = target.get("dev")
        if nic.target_dev and ("/" in nic.target_dev or len(nic.target_dev) > 15):
            raise xml_error(f"invalid interface target dev '{nic.target_dev}'")
    if nic.type == "bridge":
        src = node.find("source")
        nic.bridge = src.get("bridge") if src is not None else None
        if not nic.bridge:
            raise xml_error("No <source> 'bridge' attribute specified with <interface type='bridge'/>")
    nic.address = parse_address(node)
    return nic


def parse_chardev(node: ET.Element) -> CharDev:
    dev = CharDev(kind=node.tag)
    dev.type = enum_attr(node, "type", CHAR_TYPES, default="pty")
    if dev.type not in ("pty", "file"):
        raise config_unsupported(f"<{node.tag} type='{dev.type}'> is not supported by refvm (pty, file)")
    src = node.find("source")
    dev.path = src.get("path") if src is not None else None
    if dev.type == "file" and not dev.path:
        raise xml_error("Missing source path attribute for char device")
    target = node.find("target")
    if target is not None:
        dev.target_type = target.get("type")
        dev.target_port = uint_attr(target, "port", 0) or 0
    if node.tag == "serial" and dev.target_port > 3:
        raise config_unsupported(f"serial port {dev.target_port} is not available (refvm has COM1..COM4)")
    return dev


def parse_rng(node: ET.Element) -> Rng:
    rng = Rng(model=enum_attr(node, "model", ("virtio", "virtio-transitional", "virtio-non-transitional"),
                              required=True))
    backend = node.find("backend")
    if backend is None:
        raise xml_error("missing RNG device backend model")
    kind = enum_attr(backend, "model", ("random", "egd", "builtin"), required=True)
    if kind != "random":
        raise config_unsupported(f"this rng backend model '{kind}' is not supported by refvm (random)")
    rng.backend = (backend.text or "").strip() or "/dev/urandom"
    if rng.backend not in ("/dev/random", "/dev/urandom", "/dev/hwrng"):
        raise config_unsupported(f"file '{rng.backend}' is not a supported random source")
    rng.address = parse_address(node)
    return rng


def parse_memballoon(node: ET.Element) -> MemBalloon:
    model = enum_attr(node, "model", ("virtio", "xen", "none", "virtio-transitional", "virtio-non-transitional"),
                      required=True)
    if model not in ("virtio", "none"):
        raise config_unsupported(f"Memory balloon device type '{model}' is not supported by this version of refvm")
    return MemBalloon(model=model, address=parse_address(node))


def parse_controller(node: ET.Element) -> Controller:
    kind = node.get("type", "")
    model = node.get("model", "")
    index = uint_attr(node, "index", 0) or 0
    if kind != "pci" or model != "pci-root" or index != 0:
        raise config_unsupported(f"controller type='{kind}' model='{model}' index='{index}' is not supported by "
                                 "refvm (pci-root only)")
    return Controller(index=index)


def unsupported_device(tag: str) -> VirError:
    return config_unsupported(f"device <{tag}> is not supported by refvm")
