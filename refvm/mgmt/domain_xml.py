"""libvirt's domain XML -> ``Domain``: the subset refvmd supports, with libvirt's errors and defaults.

Elements libvirt knows and refvm cannot provide are refused (VIR_ERR_CONFIG_UNSUPPORTED naming the element).
Elements libvirt itself does not know are ignored, as libvirt ignores them, unless the caller asked for
validation (VIR_DOMAIN_DEFINE_VALIDATE / START_VALIDATE), which then fails with VIR_ERR_XML_INVALID_SCHEMA
naming the element, as libvirt's schema check does. Defaults are filled as libvirt fills them: a random UUID,
MACs 52:54:00:xx:xx:xx, currentMemory = memory, a pci-root controller, a virtio memballoon, a console for the
first serial, and PCI slots for every PCI device without one.
"""
from __future__ import annotations

import os
import uuid as uuidlib
import xml.etree.ElementTree as ET

from refvm.mgmt import device_xml as dx
from refvm.mgmt.domain_model import CharDev, Controller, CpuDef, Domain, MemBalloon, OsDef
from refvm.mgmt.errors import (
    VIR_ERR_INTERNAL_ERROR,
    VIR_ERR_NO_NAME,
    VIR_ERR_XML_INVALID_SCHEMA,
    VIR_FROM_DOMAIN,
    VirError,
    config_unsupported,
    internal_error,
    xml_error,
)
from refvm.mgmt.xml_util import bad_value, enum_attr, parse_document, scaled_kib, text_of, uint_attr

VIRT_TYPES = ("qemu", "kqemu", "kvm", "xen", "lxc", "uml", "openvz", "test", "vmware", "hyperv", "vbox", "phyp",
              "parallels", "bhyve", "vz", "none")
LIFECYCLE_ACTIONS = ("destroy", "restart", "rename-restart", "preserve")
CRASH_ACTIONS = LIFECYCLE_ACTIONS + ("coredump-destroy", "coredump-restart")
CLOCK_OFFSETS = ("utc", "localtime", "variable", "timezone", "absolute")
BOOT_DEVS = ("fd", "cdrom", "hd", "network")
CPU_MODES = ("custom", "host-model", "host-passthrough", "maximum")
FEATURE_POLICIES = ("force", "require", "optional", "disable", "forbid")
SUPPORTED_FEATURES = ("acpi", "apic", "pae")
# top-level elements libvirt knows; the ones refvmd reads are handled below, the others are refused
KNOWN_TOP = ("name", "uuid", "title", "description", "metadata", "memory", "currentMemory", "maxMemory", "vcpu",
             "cpu", "os", "features", "clock", "on_poweroff", "on_reboot", "on_crash", "devices", "genid",
             "vcpus", "iothreads", "cputune", "numatune", "memtune", "blkiotune", "memoryBacking", "resource",
             "sysinfo", "bootloader", "bootloader_args", "idmap", "pm", "perf", "seclabel", "keywrap",
             "launchSecurity", "on_lockfailure", "throttlegroups")
IGNORED_TOP = ("metadata", "pm", "seclabel")


def parse_domain(text: str, validate: bool = False) -> Domain:
    """Parse one <domain> document and fill libvirt's defaults; raises VirError on anything refused."""
    root = parse_document(text, "domain")
    if validate:
        _schema_check(root)
    dom = Domain()
    # libvirt 9.0's order, measured on its test and QEMU drivers: a missing name comes first (even before an
    # unknown or missing type); a missing type is an internal error; an unknown hypervisor type is unsupported
    # configuration, not a bad attribute value.
    _read_name(dom, root.find("name"), root)
    if root.get("type") is None:
        raise internal_error("missing domain type attribute", domain=VIR_FROM_DOMAIN)
    if root.get("type") not in VIRT_TYPES:
        raise config_unsupported(f"invalid domain type {root.get('type')}")
    dom.type = enum_attr(root, "type", VIRT_TYPES, required=True)
    if dom.type not in ("kvm", "qemu"):
        raise config_unsupported(f"invalid domain type {dom.type}")
    for child in root:
        if child.tag in KNOWN_TOP and child.tag not in _READERS and child.tag not in IGNORED_TOP:
            raise config_unsupported(f"element <{child.tag}> is not supported by refvm")
    for tag, reader in _READERS.items():
        node = root.find(tag)
        if tag != "name" and (node is not None or tag in ("uuid", "memory")):
            reader(dom, node, root)
    _fill_defaults(dom)
    return dom


def _read_name(dom: Domain, node: ET.Element | None, root: ET.Element) -> None:
    name = node.text if node is not None else None
    if not name:
        raise VirError(VIR_ERR_NO_NAME, None, domain=VIR_FROM_DOMAIN)
    check_name(name)
    dom.name = name


def check_name(name: str) -> None:
    """Names become file names under the state directory: '/' (libvirt's rule) and '.'/'..' are refused."""
    if "/" in name:
        raise xml_error(f"name {name} cannot contain '/'")
    if name in (".", "..") or "\0" in name or "\n" in name:
        raise xml_error(f"name {name!r} is not a valid domain name")


def _read_uuid(dom: Domain, node: ET.Element | None, root: ET.Element) -> None:
    if node is None or not (node.text or "").strip():
        dom.uuid = str(uuidlib.uuid4())
        return
    try:
        dom.uuid = str(uuidlib.UUID(node.text.strip()))
    except ValueError:
        raise VirError(VIR_ERR_INTERNAL_ERROR, "malformed uuid element", domain=VIR_FROM_DOMAIN) from None


def _read_text(attr: str) -> object:
    def reader(dom: Domain, node: ET.Element | None, root: ET.Element) -> None:
        value = node.text if node is not None else None
        if attr == "title" and value and "\n" in value:
            raise xml_error("Domain title can't contain newlines")
        setattr(dom, attr, value)
    return reader


def _read_memory(dom: Domain, node: ET.Element | None, root: ET.Element) -> None:
    dom.memory = scaled_kib(node, "./memory[1]") or 0
    if dom.memory == 0:
        raise xml_error("Memory size must be specified via <memory> or in the <numa> configuration")
    cur = scaled_kib(root.find("currentMemory"), "./currentMemory[1]")
    dom.current_memory = dom.memory if cur is None or cur == 0 or cur > dom.memory else cur
    maxnode = root.find("maxMemory")
    if maxnode is not None:
        dom.max_memory = scaled_kib(maxnode, "./maxMemory[1]")
        dom.max_memory_slots = uint_attr(maxnode, "slots", 0)
        if dom.max_memory is not None and dom.max_memory < dom.memory:
            raise xml_error("maximum memory size must be equal or greater than the actual memory size")


def _noop(dom: Domain, node: ET.Element | None, root: ET.Element) -> None:
    """currentMemory and maxMemory are read together with memory."""


def _read_vcpu(dom: Domain, node: ET.Element | None, root: ET.Element) -> None:
    text = (node.text or "").strip()
    if not text.isdigit() or int(text) == 0:
        raise bad_value(text, "./vcpu[1]")
    dom.vcpus = int(text)
    dom.vcpu_placement = enum_attr(node, "placement", ("static", "auto"), default="static")
    current = uint_attr(node, "current")
    if current is not None:
        if current == 0 or current > dom.vcpus:
            raise xml_error(f"maxvcpus must not be less than current vcpus ({dom.vcpus} < {current})")
        dom.vcpu_current = current if current != dom.vcpus else None


def _read_cpu(dom: Domain, node: ET.Element | None, root: ET.Element) -> None:
    cpu = CpuDef()
    cpu.mode = enum_attr(node, "mode", CPU_MODES)
    cpu.match = enum_attr(node, "match", ("minimum", "exact", "strict"))
    cpu.check = enum_attr(node, "check", ("none", "partial", "full"))
    model = node.find("model")
    if model is not None:
        cpu.model = model.text
        cpu.fallback = enum_attr(model, "fallback", ("allow", "forbid"))
    for feat in node.findall("feature"):
        policy = enum_attr(feat, "policy", FEATURE_POLICIES, default="require")
        name = feat.get("name")
        if not name:
            raise xml_error("Missing CPU feature name")
        cpu.features.append((policy, name))
    topo = node.find("topology")
    if topo is not None:
        cpu.sockets, cpu.dies = uint_attr(topo, "sockets"), uint_attr(topo, "dies")
        cpu.cores, cpu.threads = uint_attr(topo, "cores"), uint_attr(topo, "threads")
        total = (cpu.sockets or 1) * (cpu.dies or 1) * (cpu.cores or 1) * (cpu.threads or 1)
        if total != dom.vcpus:
            raise xml_error("Maximum CPUs greater than topology limit" if total < dom.vcpus else
                            "CPU topology doesn't match maximum vcpu count")
    dom.cpu = cpu


def _read_os(dom: Domain, node: ET.Element | None, root: ET.Element) -> None:
    os_ = OsDef()
    typ = node.find("type")
    if typ is None or not typ.text:
        raise xml_error("an os <type> must be specified")
    if typ.text != "hvm":
        raise config_unsupported(f"unknown OS type '{typ.text}'")
    os_.arch = typ.get("arch", "x86_64")
    if os_.arch != "x86_64":
        raise config_unsupported(f"No guest options available for arch '{os_.arch}'")
    os_.machine = typ.get("machine", "pc")
    if os_.machine != "pc" and not os_.machine.startswith("pc-i440fx"):
        raise config_unsupported(f"machine type '{os_.machine}' is not supported by refvm (pc)")
    os_.kernel, os_.initrd, os_.cmdline = text_of(node, "kernel"), text_of(node, "initrd"), text_of(node, "cmdline")
    for boot in node.findall("boot"):
        os_.boot.append(enum_attr(boot, "dev", BOOT_DEVS, required=True))
    for child in node:
        if child.tag in ("loader", "nvram", "dtb", "firmware", "bootmenu", "smbios", "bios", "init", "acpi"):
            raise config_unsupported(f"element <os><{child.tag}> is not supported by refvm")
    dom.os = os_


def _read_features(dom: Domain, node: ET.Element | None, root: ET.Element) -> None:
    for child in node:
        if child.tag not in SUPPORTED_FEATURES:
            raise config_unsupported(f"feature '{child.tag}' is not supported by refvm (acpi, apic, pae)")
        if child.tag in ("acpi", "apic"):
            setattr(dom, child.tag, True)


def _read_clock(dom: Domain, node: ET.Element | None, root: ET.Element) -> None:
    offset = node.get("offset", "utc")
    if offset not in CLOCK_OFFSETS:
        raise config_unsupported(f"unknown clock offset '{offset}'")
    if offset not in ("utc", "localtime"):
        raise config_unsupported(f"clock offset '{offset}' is not supported by refvm (utc, localtime)")
    if len(node):
        raise config_unsupported(f"clock <{node[0].tag}> is not supported by refvm")
    dom.clock_offset = offset


def _read_action(tag: str, allowed: tuple[str, ...]) -> object:
    def reader(dom: Domain, node: ET.Element | None, root: ET.Element) -> None:
        value = (node.text or "").strip()
        if value not in allowed:
            raise config_unsupported(f"unknown {tag} action: {value}")
        if value not in ("destroy", "restart") or (tag != "on_reboot" and value == "restart"):
            raise config_unsupported(f"{tag} action '{value}' is not supported by refvm")
        setattr(dom, tag, value)
    return reader


def _read_devices(dom: Domain, node: ET.Element | None, root: ET.Element) -> None:
    for child in node:
        tag = child.tag
        if tag == "emulator":
            dom.emulator = child.text
        elif tag == "disk":
            dom.disks.append(dx.parse_disk(child))
        elif tag == "interface":
            dom.interfaces.append(dx.parse_interface(child))
        elif tag in ("serial", "console"):
            (dom.serials if tag == "serial" else dom.consoles).append(dx.parse_chardev(child))
        elif tag == "rng":
            dom.rngs.append(dx.parse_rng(child))
        elif tag == "memballoon":
            dom.memballoon = dx.parse_memballoon(child)
        elif tag == "controller":
            dom.controllers.append(dx.parse_controller(child))
        elif tag in dx.UNSUPPORTED_DEVICES:
            raise dx.unsupported_device(tag)
    seen: set[str] = set()
    for disk in dom.disks:
        if disk.target_dev in seen:
            raise xml_error(f"target '{disk.target_dev}' duplicated for disk sources")
        seen.add(disk.target_dev)


_READERS = {
    "name": _read_name, "uuid": _read_uuid, "title": _read_text("title"), "description": _read_text("description"),
    "memory": _read_memory, "currentMemory": _noop, "maxMemory": _noop, "vcpu": _read_vcpu, "cpu": _read_cpu,
    "os": _read_os, "features": _read_features, "clock": _read_clock,
    "on_poweroff": _read_action("on_poweroff", LIFECYCLE_ACTIONS),
    "on_reboot": _read_action("on_reboot", LIFECYCLE_ACTIONS),
    "on_crash": _read_action("on_crash", CRASH_ACTIONS),
    "devices": _read_devices,
}


def _schema_check(root: ET.Element) -> None:
    """The VALIDATE flag: an element libvirt's schema does not know is an error naming it."""
    for child in root:
        if child.tag not in KNOWN_TOP:
            raise VirError(VIR_ERR_XML_INVALID_SCHEMA, f"Element domain has extra content: {child.tag}",
                           domain=VIR_FROM_DOMAIN)
    devices = root.find("devices")
    known = set(dx.UNSUPPORTED_DEVICES) | {"emulator", "disk", "interface", "serial", "console", "rng",
                                           "memballoon", "controller"}
    for child in devices if devices is not None else ():
        if child.tag not in known:
            raise VirError(VIR_ERR_XML_INVALID_SCHEMA, f"Element devices has extra content: {child.tag}",
                           domain=VIR_FROM_DOMAIN)


def random_mac() -> str:
    """libvirt's default for QEMU guests: the 52:54:00 prefix and three random octets."""
    tail = os.urandom(3)
    return "52:54:00:" + ":".join(f"{b:02x}" for b in tail)


def _fill_defaults(dom: Domain) -> None:
    for nic in dom.interfaces:
        if not nic.mac:
            nic.mac = random_mac()
    if not dom.controllers:
        dom.controllers.append(Controller())
    if dom.memballoon is None:
        dom.memballoon = MemBalloon()
    if dom.serials and not dom.consoles:
        first = dom.serials[0]
        dom.consoles.append(CharDev(kind="console", type=first.type, path=first.path, target_type="serial",
                                    target_port=first.target_port))
    elif dom.consoles and not dom.serials:
        first = dom.consoles[0]
        if first.target_type in (None, "serial"):
            dom.serials.append(CharDev(kind="serial", type=first.type, path=first.path, target_type="isa-serial",
                                       target_port=first.target_port))
    for dev in dom.serials:
        dev.target_type = dev.target_type or "isa-serial"
    for dev in dom.consoles:
        dev.target_type = dev.target_type or "serial"
    if not dom.os.boot and not dom.os.kernel:
        dom.os.boot.append("hd")
    assign_pci_addresses(dom)


def assign_pci_addresses(dom: Domain) -> None:
    """Give every PCI device without an address the lowest free slot from 2 up, in libvirt's order (network
    interfaces, disks, the balloon, rngs). Slot 0 is the host bridge and slot 1 the PIIX3 (ISA, IDE, USB)."""
    from refvm.mgmt.domain_model import PciAddress

    devices = [*dom.interfaces, *dom.disks, *([dom.memballoon] if dom.memballoon and
                                              dom.memballoon.model != "none" else []), *dom.rngs]
    used = {0, 1}
    for dev in devices:
        if dev.address is not None:
            if dev.address.slot in used:
                raise xml_error(f"Attempted double use of PCI Address 0000:00:{dev.address.slot:02x}.0")
            used.add(dev.address.slot)
    for dev in devices:
        if dev.address is None:
            slot = next((s for s in range(2, 32) if s not in used), None)
            if slot is None:
                raise config_unsupported("No more available PCI slots")
            used.add(slot)
            dev.address = PciAddress(slot=slot)
