"""``Domain`` -> libvirt's domain XML, laid out as libvirt lays it out (2-space indent, units in KiB).

``live=True`` adds what only a running domain has (id, pty paths, device aliases); ``secure`` is accepted for
the API's sake (refvmd keeps no secrets in domain XML). The result parses back to the same ``Domain``.
"""
from __future__ import annotations

from xml.sax.saxutils import escape

from refvm.mgmt import vir
from refvm.mgmt.domain_model import CharDev, Disk, Domain, Interface, PciAddress


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.depth = 0

    def line(self, text: str) -> None:
        self.lines.append("  " * self.depth + text)

    def open(self, tag: str, **attrs: object) -> None:
        self.line(f"<{tag}{_attrs(attrs)}>")
        self.depth += 1

    def close(self, tag: str) -> None:
        self.depth -= 1
        self.line(f"</{tag}>")

    def empty(self, tag: str, **attrs: object) -> None:
        self.line(f"<{tag}{_attrs(attrs)}/>")

    def text(self, tag: str, value: object, **attrs: object) -> None:
        self.line(f"<{tag}{_attrs(attrs)}>{escape(str(value))}</{tag}>")


def _attrs(attrs: dict[str, object]) -> str:
    """Attributes in libvirt's style: single quotes, None left out."""
    return "".join(f" {k.rstrip('_')}='{escape(str(v), {chr(39): '&apos;', chr(34): '&quot;'})}'"
                   for k, v in attrs.items() if v is not None)


def format_domain(dom: Domain, live: bool = False) -> str:
    """The <domain> document; live adds id, ptys and aliases."""
    w = _Writer()
    w.open("domain", type=dom.type, id=dom.id if live and dom.id >= 0 else None)
    w.text("name", dom.name)
    w.text("uuid", dom.uuid)
    if dom.title is not None:
        w.text("title", dom.title)
    if dom.description is not None:
        w.text("description", dom.description)
    if dom.max_memory is not None:
        w.text("maxMemory", dom.max_memory, slots=dom.max_memory_slots, unit="KiB")
    w.text("memory", dom.memory, unit="KiB")
    w.text("currentMemory", dom.current_memory, unit="KiB")
    w.text("vcpu", dom.vcpus, placement=dom.vcpu_placement, current=dom.vcpu_current)
    _os(w, dom)
    if dom.acpi or dom.apic:
        w.open("features")
        for name in ("acpi", "apic"):
            if getattr(dom, name):
                w.empty(name)
        w.close("features")
    _cpu(w, dom)
    w.empty("clock", offset=dom.clock_offset)
    w.text("on_poweroff", dom.on_poweroff)
    w.text("on_reboot", dom.on_reboot)
    w.text("on_crash", dom.on_crash)
    _devices(w, dom, live)
    w.close("domain")
    return "\n".join(w.lines) + "\n"


def _os(w: _Writer, dom: Domain) -> None:
    w.open("os")
    w.text("type", dom.os.type, arch=dom.os.arch, machine=dom.os.machine)
    for tag in ("kernel", "initrd", "cmdline"):
        value = getattr(dom.os, tag)
        if value is not None:
            w.text(tag, value)
    for dev in dom.os.boot:
        w.empty("boot", dev=dev)
    w.close("os")


def _cpu(w: _Writer, dom: Domain) -> None:
    cpu = dom.cpu
    if cpu.is_empty():
        return
    w.open("cpu", mode=cpu.mode, match=cpu.match, check=cpu.check)
    if cpu.model is not None:
        w.text("model", cpu.model, fallback=cpu.fallback)
    if cpu.sockets or cpu.cores or cpu.threads or cpu.dies:
        w.empty("topology", sockets=cpu.sockets, dies=cpu.dies, cores=cpu.cores, threads=cpu.threads)
    for policy, name in cpu.features:
        w.empty("feature", policy=policy, name=name)
    w.close("cpu")


def _address(w: _Writer, addr: PciAddress | None) -> None:
    if addr is not None:
        w.empty("address", type="pci", domain=f"0x{addr.domain:04x}", bus=f"0x{addr.bus:02x}",
                slot=f"0x{addr.slot:02x}", function=f"0x{addr.function:x}")


def _alias(w: _Writer, alias: str | None, live: bool) -> None:
    if live and alias:
        w.empty("alias", name=alias)


def _disk(w: _Writer, disk: Disk, live: bool) -> None:
    w.open("disk", type=disk.type, device=disk.device)
    if disk.driver_name or disk.driver_type or disk.cache or disk.io or disk.discard:
        w.empty("driver", name=disk.driver_name, type=disk.driver_type, cache=disk.cache, io=disk.io,
                discard=disk.discard)
    if disk.source is not None:
        if disk.type == "file":
            w.empty("source", file=disk.source)
        elif disk.type == "block":
            w.empty("source", dev=disk.source)
        else:
            w.empty("source", pool=disk.source_pool, volume=disk.source)
    w.empty("target", dev=disk.target_dev, bus=disk.target_bus)
    if disk.iotune.any_set():
        w.open("iotune")
        for name, kind in vir.BLOCK_IOTUNE_PARAMS:
            if kind == vir.VIR_TYPED_PARAM_STRING:
                if disk.iotune.group_name:
                    w.text(name, disk.iotune.group_name)
            elif disk.iotune.values.get(name):
                w.text(name, disk.iotune.values[name])
        w.close("iotune")
    if disk.readonly:
        w.empty("readonly")
    if disk.serial is not None:
        w.text("serial", disk.serial)
    _alias(w, disk.alias, live)
    _address(w, disk.address)
    w.close("disk")


def _interface(w: _Writer, nic: Interface, live: bool) -> None:
    w.open("interface", type=nic.type)
    w.empty("mac", address=nic.mac)
    if nic.bridge:
        w.empty("source", bridge=nic.bridge)
    if nic.target_dev:
        w.empty("target", dev=nic.target_dev)
    w.empty("model", type=nic.model)
    _alias(w, nic.alias, live)
    _address(w, nic.address)
    w.close("interface")


def _chardev(w: _Writer, dev: CharDev, live: bool) -> None:
    w.open(dev.kind, type=dev.type)
    if dev.path and (live or dev.type == "file"):
        w.empty("source", path=dev.path)
    if dev.kind == "serial":
        w.open("target", type=dev.target_type, port=dev.target_port)
        w.empty("model", name="isa-serial")
        w.close("target")
    else:
        w.empty("target", type=dev.target_type, port=dev.target_port)
    _alias(w, dev.alias, live)
    w.close(dev.kind)


def _devices(w: _Writer, dom: Domain, live: bool) -> None:
    w.open("devices")
    if dom.emulator:
        w.text("emulator", dom.emulator)
    for disk in dom.disks:
        _disk(w, disk, live)
    for ctrl in dom.controllers:
        if live and ctrl.alias:
            w.open("controller", type=ctrl.type, index=ctrl.index, model=ctrl.model)
            _alias(w, ctrl.alias, live)
            w.close("controller")
        else:
            w.empty("controller", type=ctrl.type, index=ctrl.index, model=ctrl.model)
    for nic in dom.interfaces:
        _interface(w, nic, live)
    for dev in [*dom.serials, *dom.consoles]:
        _chardev(w, dev, live)
    if dom.memballoon is not None:
        if dom.memballoon.model == "none":
            w.empty("memballoon", model="none")
        else:
            w.open("memballoon", model=dom.memballoon.model)
            _alias(w, dom.memballoon.alias, live)
            _address(w, dom.memballoon.address)
            w.close("memballoon")
    for rng in dom.rngs:
        w.open("rng", model=rng.model)
        w.text("backend", rng.backend, model="random")
        _alias(w, rng.alias, live)
        _address(w, rng.address)
        w.close("rng")
    w.close("devices")
