"""The machine description the CLI builds and the Machine consumes.

Kept separate from both so that the management layer and tests can build a machine without going through
argv, and so that the CLI stays a pure translation of QEMU's spelling into these fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MIB = 1024 * 1024


@dataclass
class DeviceSpec:
    """One `-device DRIVER,key=value,...` as given, with its properties still strings."""

    driver: str
    props: dict[str, str] = field(default_factory=dict)
    #: The argument as the user wrote it, so errors can quote it as QEMU does ("-device TEXT: ...").
    text: str = ""
    #: bootindex=N, accepted and reported (refvm boots -kernel images only).
    bootindex: int | None = None


@dataclass
class MachineConfig:
    """Everything needed to build and boot one VM."""

    memory_bytes: int = 128 * MIB
    smp: int = 1
    #: -smp's full topology (refvm.cpu.Topology; None: `smp` CPUs, one core each) and -cpu as given.
    topology: object | None = None
    cpu: str = "qemu64"
    kernel: str | None = None
    initrd: str | None = None
    append: str = ""
    #: One chardev spec per COM port, in order (COM1 first); None entries mean "no device on this port".
    serials: list[object] = field(default_factory=list)
    chardevs: dict[str, object] = field(default_factory=dict)
    devices: list[DeviceSpec] = field(default_factory=list)
    name: str = ""
    #: -device isa-serial iobase=/irq= overrides by COM index (others use COM1..COM4's port and IRQ).
    serial_ports: dict[int, tuple[int, int]] = field(default_factory=dict)
    #: The management-stack options (refvm.cli_platform.PlatformOptions: machine type, -boot, -add-fd, ...).
    platform: object | None = None
    no_reboot: bool = False
    no_shutdown: bool = False
    start_paused: bool = False
    #: Seconds after which the guest is stopped no matter what (None: never). Every test sets one.
    watchdog_seconds: float | None = None
    #: "kvm" runs vCPUs; "qtest" runs none and lets a qtest client drive ports, memory and the clock.
    accel: str = "kvm"
    #: -accel kvm,dirty-ring-size=N: KVM dirty ring entries per vCPU for migration (0: the dirty bitmap), and the
    #: -accel text as given, for the one-line error when this KVM cannot have it.
    dirty_ring_size: int = 0
    accel_text: str = "kvm"
    #: QEMU's -qtest address (e.g. "unix:PATH" to connect, "unix:PATH,server=on" to listen) and -qtest-log.
    qtest: str | None = None
    qtest_log: str | None = None
    #: -incoming: "defer" (wait for QMP migrate-incoming) or a URI (exec:, unix:, tcp:) to receive a migration on.
    incoming: str | None = None
    #: QMP monitors: (unix socket path, listen?) from -qmp or -chardev socket + -mon mode=control.
    qmp: list[tuple[str, bool]] = field(default_factory=list)
    #: -drive, -netdev and -object by id, with their properties as given (backends validate them).
    drives: dict[str, dict[str, str]] = field(default_factory=dict)
    netdevs: dict[str, dict[str, str]] = field(default_factory=dict)
    objects: dict[str, dict[str, str]] = field(default_factory=dict)
    #: -global DRIVER.PROP=VALUE: default properties for every device of that driver (or its base type).
    globals: dict[str, dict[str, str]] = field(default_factory=dict)
    #: Deliberate spec deviations to switch on (-global virtio-pci.x-deviation=NAME; refvm/deviations.py).
    deviations: list[str] = field(default_factory=list)
    #: Firmware-visible identity and clocks (refvm/devices/firmware.py): -uuid, -smbios (SmbiosOptions),
    #: -rtc (RtcOptions); None means QEMU's defaults. -no-hpet is accepted (refvm has no HPET).
    uuid: str | None = None
    smbios: object | None = None
    rtc: object | None = None
