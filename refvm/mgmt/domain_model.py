"""The domain definition as data: what refvmd understands of libvirt's domain XML.

Parsing lives in ``domain_xml``, formatting in ``domain_format``; both meet here. Sizes are kept in KiB, as
libvirt keeps them. Fields that exist only while a domain runs (id, pty paths, aliases) are filled by the
driver and formatted only into the live XML.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PciAddress:
    """<address type='pci' domain bus slot function/>."""

    domain: int = 0
    bus: int = 0
    slot: int = 0
    function: int = 0

    def bdf(self) -> str:
        """QEMU's addr= value for -device (slot.function in hex)."""
        return f"0x{self.slot:x}.0x{self.function:x}"


@dataclass
class IoTune:
    """<iotune>: the throttle limits of one disk (0 = unlimited), named as libvirt's typed parameters."""

    values: dict[str, int] = field(default_factory=dict)
    group_name: str | None = None

    def any_set(self) -> bool:
        return any(self.values.values()) or bool(self.group_name)


@dataclass
class Disk:
    """<disk type='file|block|volume' device='disk|cdrom'>."""

    type: str = "file"
    device: str = "disk"
    driver_name: str | None = None
    driver_type: str | None = None
    cache: str | None = None
    io: str | None = None
    discard: str | None = None
    source: str | None = None           # file= / dev= path, or for type='volume' the volume name
    source_pool: str | None = None      # type='volume' only
    resolved: str | None = None         # type='volume': the volume's path, filled when the domain starts
    target_dev: str = ""
    target_bus: str | None = None
    readonly: bool = False
    serial: str | None = None
    iotune: IoTune = field(default_factory=IoTune)
    address: PciAddress | None = None
    alias: str | None = None            # live only

    def source_path(self) -> str | None:
        """The path the hypervisor opens (a volume's path is resolved by the storage layer at start)."""
        return self.resolved if self.type == "volume" else self.source


@dataclass
class Interface:
    """<interface type='ethernet|bridge'> with a virtio model."""

    type: str = "ethernet"
    mac: str = ""
    model: str = "virtio"
    target_dev: str | None = None
    bridge: str | None = None
    address: PciAddress | None = None
    alias: str | None = None            # live only


@dataclass
class CharDev:
    """<serial> or <console> of type pty or file; ``path`` is the pty a running domain got."""

    kind: str = "serial"                # serial | console
    type: str = "pty"
    path: str | None = None
    target_type: str | None = None      # isa-serial for serial, serial for console
    target_port: int = 0
    alias: str | None = None            # live only


@dataclass
class Rng:
    """<rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>."""

    model: str = "virtio"
    backend: str = "/dev/urandom"
    address: PciAddress | None = None
    alias: str | None = None


@dataclass
class MemBalloon:
    """<memballoon model='virtio|none'>."""

    model: str = "virtio"
    address: PciAddress | None = None
    alias: str | None = None


@dataclass
class Controller:
    """<controller type='pci' index='0' model='pci-root'/> (the only controller refvmd models)."""

    type: str = "pci"
    index: int = 0
    model: str = "pci-root"
    alias: str | None = None


@dataclass
class CpuDef:
    """<cpu mode match check>: model, features (policy, name) and topology."""

    mode: str | None = None
    match: str | None = None
    check: str | None = None
    model: str | None = None
    fallback: str | None = None
    features: list[tuple[str, str]] = field(default_factory=list)
    sockets: int | None = None
    dies: int | None = None
    cores: int | None = None
    threads: int | None = None

    def is_empty(self) -> bool:
        return not (self.mode or self.model or self.features or self.sockets or self.check or self.match)


@dataclass
class OsDef:
    """<os>: type, arch, machine, direct kernel boot and boot order."""

    type: str = "hvm"
    arch: str = "x86_64"
    machine: str = "pc"
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None
    boot: list[str] = field(default_factory=list)


@dataclass
class Domain:
    """One domain definition (persistent or the live copy of a running domain)."""

    type: str = "kvm"
    name: str = ""
    uuid: str = ""
    title: str | None = None
    description: str | None = None
    memory: int = 0                     # <memory>, KiB
    current_memory: int = 0             # <currentMemory>, KiB
    max_memory: int | None = None       # <maxMemory>, KiB
    max_memory_slots: int | None = None
    vcpus: int = 1
    vcpu_current: int | None = None
    vcpu_placement: str = "static"
    cpu: CpuDef = field(default_factory=CpuDef)
    os: OsDef = field(default_factory=OsDef)
    acpi: bool = False
    apic: bool = False
    clock_offset: str = "utc"
    on_poweroff: str = "destroy"
    on_reboot: str = "restart"
    on_crash: str = "destroy"
    emulator: str | None = None
    disks: list[Disk] = field(default_factory=list)
    interfaces: list[Interface] = field(default_factory=list)
    serials: list[CharDev] = field(default_factory=list)
    consoles: list[CharDev] = field(default_factory=list)
    controllers: list[Controller] = field(default_factory=list)
    rngs: list[Rng] = field(default_factory=list)
    memballoon: MemBalloon | None = None
    id: int = -1                        # live only

    def uuid_bytes(self) -> bytes:
        return bytes.fromhex(self.uuid.replace("-", ""))

    def find_disk(self, name: str) -> Disk | None:
        """A disk by target dev (vda) or source path, as virDomainDiskByName finds it."""
        for disk in self.disks:
            if name in (disk.target_dev, disk.source):
                return disk
        return None

    def find_interface(self, name: str) -> Interface | None:
        """An interface by target dev or MAC, as virDomainNetFind does for interfaceStats."""
        for nic in self.interfaces:
            if name in (nic.target_dev, nic.mac):
                return nic
        return None
