"""`refvm`: a QEMU-compatible subset of qemu-system-x86_64's command line.

Users who know QEMU should be able to swap the binary name and keep their arguments, so option names,
defaults (MiB for -m, COM1 for the first -serial) and the one-line `prog: -opt: message` error format follow
QEMU. Everything refvm does not support fails loudly instead of being silently ignored.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass

from refvm import cli_devices
from refvm.cli_common import (
    NETDEV_KEYS,
    OBJECT_KEYS,
    UsageError,
    parse_drive,
    parse_global,
    parse_keyvals,
    parse_size,
    parse_typed,
)
from refvm.cli_firmware import HELP as FIRMWARE_HELP
from refvm.cli_firmware import firmware_options
from refvm.cli_monitor import monitor_chardev, qmp_socket, readline_chardev, serial_spec
from refvm.cli_netdev import check_tap_fds
from refvm.cli_platform import HELP as PLATFORM_HELP
from refvm.cli_platform import PlatformOptions, platform_options, resolve_monitor
from refvm.config import DeviceSpec, MachineConfig

PROG = "refvm"
VERSION = "0.1.0"
MAX_SERIALS = 4

#: Platform devices `-device` knows, with the properties each accepts (QEMU's names). PCI devices come
#: from refvm.virtio.devices.DEVICE_MODELS, which validate their own properties.
DEVICE_PROPS: dict[str, tuple[str, ...]] = {
    "isa-debug-exit": ("iobase", "iosize", "id"),
    "isa-serial": cli_devices.ISA_SERIAL_PROPS,
}
#: -global drivers refvm has besides its -device models, with the properties they check (others are kept).
GLOBAL_ENUMS = {("kvm-pit", "lost_tick_policy"): ("discard", "delay", "slew")}

def pci_device_models() -> dict[str, object]:
    """QEMU -device names of the PCI device models refvm has (empty until they are importable)."""
    try:
        from refvm.virtio.devices import DEVICE_MODELS
    except ImportError:
        return {}
    return dict(DEVICE_MODELS)


USAGE = f"""\
usage: {PROG} [options]
       {PROG} doctor          describe this host's KVM and what refvm needs from it
       {PROG} virsh ARGS      the system's virsh, connected to the user's refvmd (see refvmd --help)

A reference hypervisor for Linux KVM. Options use qemu-system-x86_64's spelling:

Standard options:
  -h, -help               show this help and exit
  -version                show the version and exit
  -name NAME              name the guest (used in messages and pty labels)
  -machine, -M pc[,accel=kvm]
                          the machine type: pc and its versioned names ('-machine help' lists them)
  -accel kvm|qtest        accelerator: 'kvm' runs the guest; 'qtest' runs no vCPU and lets a
                          qtest client drive the machine (-enable-kvm is accepted too)
  -accel kvm,dirty-ring-size=N  migrate with KVM's dirty ring, N entries per vCPU (a power of two)
  -m [size=]SIZE[K|M|G|T] guest RAM (default 128 MiB; no suffix means MiB)
  -smp [cpus=]N[,sockets=S][,dies=D][,cores=C][,threads=T][,maxcpus=M]
                          vCPUs and their topology (QEMU 7.2's defaults; default 1)
  -cpu MODEL[,+FEAT|-FEAT|FEAT=on|off|enforce]
                          CPU model and CPUID flags ('-cpu help' lists them; default qemu64)
  -S                      do not start the vCPUs at startup
  -no-reboot              exit instead of rebooting when the guest resets
  -no-shutdown            on guest poweroff stop the guest (run state 'shutdown') instead of exiting
  -nodefaults             create no default devices (no default serial port)

Boot:
  -kernel FILE            boot a Multiboot v1 ELF32 image or a Linux bzImage/vmlinux
  -initrd FILE            initial ramdisk (Linux) or first module (Multiboot)
  -append CMDLINE         kernel command line

Devices and backends:
  -device DRIVER[,prop=value...]
                          add a device; '-device help' lists them (isa-debug-exit, virtio-*-pci, ...)
  -drive file=F,if=none|virtio,id=ID,format=raw|qcow2[,readonly=on][,cache=MODE][,throttling.*=N]
                          a disk image for -device virtio-blk-pci,drive=ID
  -blockdev driver=raw|qcow2,node-name=N,file.driver=file,file.filename=F[,read-only=on][,cache.direct=on]
                          a block node for -device virtio-blk-pci,drive=N (also file=NODE references, JSON)
  -netdev tap,id=ID,ifname=TAP,script=no,downscript=no
                          a tap network backend for -device virtio-net-pci,netdev=ID
  -netdev hubport,id=ID,hubid=N
                          a hub port with no peer: frames are dropped (for NIC configuration tests)
  -object rng-random,id=ID,filename=/dev/urandom
                          an entropy source for -device virtio-rng-pci,rng=ID
  -global DRIVER.PROP=VALUE
                          default property for every device of DRIVER
  -serial DEV             COM1..COM4 in order: stdio, null, none, pty, file:PATH,
                          unix:PATH,server=on,wait=off, chardev:ID, mon:stdio
  -chardev BACKEND,id=ID[,...]
                          stdio | null | pty | file,path=P | socket,path=P,server=on,wait=off
  -nographic              no display; the serial port goes to stdio
  -display none           no display

{PLATFORM_HELP.rstrip()}

{FIRMWARE_HELP.rstrip()}

Testing:
  -qtest unix:PATH[,server=on]
                          speak QEMU's qtest protocol on PATH (connect to it; listen with server=on)
  -qtest-log FILE         log the qtest conversation to FILE
  -incoming defer|exec:CMD|unix:PATH|tcp:HOST:PORT|fd:N
                          wait for an incoming migration (defer: until QMP migrate-incoming)

Monitor:
  -qmp unix:PATH,server=on,wait=off
                          a QMP monitor on a unix socket (qemu.qmp works unchanged)
  -mon chardev=ID,mode=control
                          a QMP monitor on a -chardev socket,id=ID,path=PATH,server=on,wait=off

refvm extensions:
  -watchdog-timeout SECS  stop the guest after SECS seconds (exit status 124)

Exit status: 0 when the guest shuts down, (N << 1) | 1 when it writes N to isa-debug-exit,
1 on errors, 124 when the watchdog fires.
"""


def parse_smp(text: str) -> object:
    """-smp with QEMU 7.2's defaults and texts (refvm/cpu/topology.py); prints its deprecation warnings."""
    from refvm.cpu import TopologyError
    from refvm.cpu.options import smp_topology

    props = parse_keyvals("smp", text, "cpus")
    try:
        topology, warnings = smp_topology(props)
    except TopologyError as err:
        raise UsageError(f"-smp {text}: {err}") from None
    for line in warnings:
        print(f"{PROG}: warning: {line}", file=sys.stderr)
    return topology


def parse_cpu(text: str) -> str:
    from refvm.cpu import CpuSpecError
    from refvm.cpu.options import check_cpu

    try:
        return check_cpu(text)
    except CpuSpecError as err:
        raise UsageError(f"-cpu {text}: {err}") from None


def parse_device(text: str) -> DeviceSpec | None:
    """Parse -device; returns None for `-device help` (the caller prints the list)."""
    props = parse_keyvals("device", text, "driver")
    driver = props.pop("driver", "")
    if driver == "help":
        return None
    why = cli_devices.refuse_reason(driver)
    if why:
        raise UsageError(f"-device {text}: '{driver}' is not supported: {why}")
    try:
        props, bootindex = cli_devices.split_generic_props(driver, props, text)
    except ValueError as err:
        raise UsageError(str(err)) from None
    if driver not in DEVICE_PROPS:
        if driver in pci_device_models():
            return DeviceSpec(driver, props, text, bootindex)  # the device model validates its own properties
        raise UsageError(f"-device {text}: '{driver}' is not a valid device model name")
    for key, value in props.items():
        if key not in DEVICE_PROPS[driver]:
            raise UsageError(f"-device {text}: Property '{driver}.{key}' not found")
        if key in ("iobase", "iosize") and driver == "isa-debug-exit":
            try:
                number = int(value, 0)
            except ValueError:
                raise UsageError(f"-device {text}: Property '{driver}.{key}' expects a number") from None
            limit = 0xFFFF if key == "iobase" else 4
            if not 0 <= number <= limit or (key == "iosize" and number not in (1, 2, 4)):
                raise UsageError(f"-device {text}: Property '{driver}.{key}' value {value} is out of range")
    return DeviceSpec(driver, props, text, bootindex)


@dataclass
class Parsed:
    """What main() needs besides the machine config."""

    config: MachineConfig
    action: str = "run"  # run | help | version | device-help | cpu-help | text
    #: What main() prints for action "text" (-machine help).
    text: str = ""
    platform: PlatformOptions | None = None


def _chardev_module():  # imported lazily: `refvm -help` must work even if a device module is broken
    from refvm.devices import chardev

    return chardev


def parse_args(argv: list[str]) -> Parsed:
    """Translate QEMU-style argv into a MachineConfig; raises UsageError for anything wrong."""
    cfg = MachineConfig()
    plat = PlatformOptions()
    cfg.platform = plat
    parsed = Parsed(cfg, platform=plat)
    isa_serials: list[cli_devices.IsaSerial] = []
    serial_texts: list[str] = []
    chardev_texts: list[str] = []
    qmp_texts: list[str] = []
    blockdev_texts: list[str] = []
    mon_texts: list[str] = []
    nographic = False
    nodefaults = False

    def set_accel(text: str) -> None:
        name, _, opts = text.partition(",")
        if name not in ("kvm", "qtest"):
            raise UsageError(f"-accel {text}: unsupported accelerator '{name}' (refvm has 'kvm' and 'qtest')")
        cfg.accel, cfg.accel_text = name, text
        cfg.dirty_ring_size = _accel_options(text, name, opts)

    def set_qtest(text: str) -> None:
        from refvm.monitor.qtest import parse_qtest_address

        try:
            parse_qtest_address(text)
        except ValueError as err:
            raise UsageError(f"-qtest {text}: {err}") from None
        cfg.qtest = text

    def set_display(text: str) -> None:
        if text.split(",", 1)[0] != "none":
            raise UsageError(f"-display {text}: refvm has no graphical display: use -display none")

    def set_incoming(text: str) -> None:
        from refvm.migration.channel import split_uri

        if text != "defer":
            try:
                scheme, rest = split_uri(text)
            except ValueError:
                raise UsageError(f"-incoming {text}: unknown migration protocol: {text}") from None
            if scheme == "fd" and not rest.isdigit():  # no monitor yet to have named it
                raise UsageError(f"-incoming {text}: Invalid file descriptor number '{rest}'")
        cfg.incoming = text

    def set_name(text: str) -> None:
        cfg.name = parse_keyvals("name", text, "guest").get("guest", "")

    def set_watchdog(text: str) -> None:
        try:
            cfg.watchdog_seconds = float(text)
        except ValueError:
            raise UsageError(f"-watchdog-timeout {text}: expects a number of seconds") from None
        if cfg.watchdog_seconds <= 0:
            raise UsageError(f"-watchdog-timeout {text}: must be greater than 0")

    def add_drive(text: str) -> None:
        props = parse_drive(text)
        ident = props.get("id") or f"drive{len(cfg.drives)}"
        if ident in cfg.drives:
            raise UsageError(f"-drive {text}: Duplicate ID '{ident}' for drive")
        cfg.drives[ident] = props
        if props.get("if") == "virtio":
            cfg.devices.append(DeviceSpec("virtio-blk-pci", {"drive": ident}, f"virtio-blk-pci,drive={ident}"))

    def add_netdev(text: str) -> None:
        kind, props = parse_typed("netdev", text, NETDEV_KEYS)
        if props["id"] in cfg.netdevs:
            raise UsageError(f"-netdev {text}: Duplicate ID '{props['id']}' for netdev")
        if kind == "tap":
            try:
                check_tap_fds(f"-netdev {text}", props)
            except ValueError as err:
                raise UsageError(str(err)) from None
        cfg.netdevs[props["id"]] = {"type": kind, **props}

    def add_object(text: str) -> None:
        kind, props = parse_typed("object", text, OBJECT_KEYS)
        if props["id"] in cfg.objects:
            raise UsageError(f"-object {text}: attempt to add duplicate property '{props['id']}' to object")
        cfg.objects[props["id"]] = {"type": kind, **props}

    def add_global(text: str) -> None:
        driver, prop, value = parse_global(text)
        if (driver, prop) == ("virtio-pci", "x-deviation"):
            from refvm.deviations import KNOWN

            if value not in KNOWN:
                raise UsageError(f"-global {text}: unknown deviation '{value}' (known: {', '.join(sorted(KNOWN))})")
            cfg.deviations.append(value)
            return
        allowed = GLOBAL_ENUMS.get((driver, prop))
        if allowed and value not in allowed:
            raise UsageError(f"-global {text}: Parameter '{prop}' does not accept value '{value}'")
        if (driver, prop, value) == ("kvm-pit", "lost_tick_policy", "slew"):  # QEMU's kvm-pit realize refuses it
            raise UsageError(f"-global {text}: Lost tick policy not supported.")
        cfg.globals.setdefault(driver, {})[prop] = value

    def set_smp(text: str) -> None:
        cfg.topology = parse_smp(text)
        cfg.smp = cfg.topology.cpus  # type: ignore[attr-defined]

    def set_cpu(text: str) -> None:
        if text in ("help", "?"):
            parsed.action = "cpu-help"
        else:
            cfg.cpu = parse_cpu(text)

    def add_device(text: str) -> None:
        spec = parse_device(text)
        if spec is None:
            parsed.action = "device-help"
            return
        if spec.bootindex is not None:
            plat.boot_indexes[spec.props.get("id") or spec.driver] = spec.bootindex
        if spec.driver == "isa-serial":
            try:
                isa_serials.append(cli_devices.parse_isa_serial(spec))
            except ValueError as err:
                raise UsageError(str(err)) from None
        else:
            cfg.devices.append(spec)

    with_arg: dict[str, Callable[[str], None]] = {
        "m": lambda t: setattr(cfg, "memory_bytes", parse_size("m", t)),
        "smp": set_smp,
        "cpu": set_cpu,
        "kernel": lambda t: setattr(cfg, "kernel", t),
        "initrd": lambda t: setattr(cfg, "initrd", t),
        "append": lambda t: setattr(cfg, "append", t),
        "serial": serial_texts.append,
        "chardev": chardev_texts.append,
        "device": add_device,
        "accel": set_accel,
        "display": set_display,
        "name": set_name,
        "watchdog-timeout": set_watchdog,
        "qtest": set_qtest,
        "qtest-log": lambda t: setattr(cfg, "qtest_log", t),
        "incoming": set_incoming,
        "qmp": qmp_texts.append,
        "drive": add_drive,
        "blockdev": blockdev_texts.append,
        "netdev": add_netdev,
        "object": add_object,
        "global": add_global,
        "mon": mon_texts.append,
    }

    def set_flag(field: str) -> Callable[[], None]:
        return lambda: setattr(cfg, field, True)

    flags: dict[str, Callable[[], None]] = {
        "no-reboot": set_flag("no_reboot"),
        "no-shutdown": set_flag("no_shutdown"),
        "S": set_flag("start_paused"),
        "enable-kvm": lambda: None,
        "h": lambda: setattr(parsed, "action", "help"),
        "help": lambda: setattr(parsed, "action", "help"),
        "version": lambda: setattr(parsed, "action", "version"),
    }

    def show_text(text: str) -> None:
        parsed.action, parsed.text = "text", text

    for more_args, more_flags in (platform_options(cfg, plat, UsageError, show_text),
                                  firmware_options(cfg, UsageError)):  # fmt: skip
        with_arg.update(more_args)
        flags.update(more_flags)
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not arg.startswith("-") or arg == "-":
            raise UsageError(f"{arg}: invalid option (refvm takes no disk image argument; use -kernel)")
        opt = arg[2:] if arg.startswith("--") else arg[1:]
        if opt == "nographic":
            nographic = True
        elif opt == "nodefaults":
            nodefaults = True
        elif opt in flags:
            flags[opt]()
        elif opt in with_arg:
            if i >= len(argv):
                raise UsageError(f"-{opt}: requires an argument")
            with_arg[opt](argv[i])
            i += 1
        else:
            raise UsageError(f"-{opt}: invalid option")

    if parsed.action != "run":
        return parsed
    if blockdev_texts:
        from refvm.blockdev import BlockdevError, blockdevs_to_drives

        try:
            nodes = blockdevs_to_drives(blockdev_texts)
        except BlockdevError as err:
            raise UsageError(f"-blockdev: {err}") from None
        for name, props in nodes.items():
            if name in cfg.drives:
                raise UsageError(f"-blockdev: node-name '{name}' is already in use by a -drive")
            cfg.drives[name] = props
    if len(serial_texts) > MAX_SERIALS:
        raise UsageError(f"-serial {serial_texts[-1]}: too many serial ports (at most {MAX_SERIALS})")
    chardev = _chardev_module()
    try:
        for text in chardev_texts:
            spec = chardev.parse_chardev_option(text)
            if spec.id in cfg.chardevs:
                raise UsageError(f"-chardev {text}: duplicate chardev ID '{spec.id}'")
            cfg.chardevs[spec.id] = spec
        for text in serial_texts:
            cfg.serials.append(serial_spec(chardev, text, cfg.chardevs))
        cfg.serial_ports = cli_devices.place_isa_serials(isa_serials, cfg.serials, cfg.chardevs)
        for text in qmp_texts:
            cfg.qmp.append(qmp_socket("qmp", text, chardev.parse_serial_option(text)))
        for text in mon_texts:
            if readline_chardev(text) is not None:  # -mon mode=readline is -monitor chardev:ID
                plat.monitor_chardev = readline_chardev(text)
            else:
                cfg.qmp.append(monitor_chardev(text, cfg.chardevs))
    except ValueError as err:
        raise UsageError(str(err)) from None
    if not serial_texts and not isa_serials and not nodefaults:
        # refvm has no graphical console: the first serial port goes to stdio as with -nographic.
        cfg.serials.append(chardev.parse_serial_option("mon:stdio" if nographic else "stdio"))
    resolve_monitor(plat, cfg, chardev.parse_chardev_option, UsageError)
    if cfg.qtest and cfg.accel != "qtest":
        cfg.accel = "qtest"  # as QEMU: -qtest selects the qtest accelerator unless another is forced
    if cfg.accel == "qtest" and not cfg.qtest:
        raise UsageError("-accel qtest: needs -qtest ADDRESS (e.g. -qtest unix:/tmp/q.sock)")
    if cfg.kernel is None and cfg.accel == "kvm":
        raise UsageError("-kernel: no kernel given (refvm has no firmware and boots only -kernel images)")
    return parsed


def _print_devices() -> None:
    print("Available devices (refvm):")
    for name, props in DEVICE_PROPS.items():
        print(f'name "{name}", bus ISA, props: {", ".join(props)}')
    for name in sorted(pci_device_models()):
        print(f'name "{name}", bus PCI')


_TIMESTAMPS = False  # -msg timestamp=on


def report_error(message: object) -> None:
    """One `refvm: message` line on stderr, time-stamped as QEMU's -msg timestamp=on does."""
    stamp = ""
    if _TIMESTAMPS:
        import datetime

        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ ")
    print(f"{stamp}{PROG}: {message}", file=sys.stderr)


def run_machine(config: MachineConfig) -> int:
    from refvm.cli_platform import apply_at_start
    from refvm.machine import Machine, MachineError

    try:
        apply_at_start(config.platform)
        machine = Machine(config)
    except (MachineError, ValueError, OSError) as err:
        report_error(err)
        return 1

    def on_signal(signum: int, frame: object) -> None:
        machine.interrupt(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    try:
        outcome = machine.run()
    except MachineError as err:
        report_error(err)
        return 1
    if outcome.message and outcome.kind in ("error", "watchdog", "signal"):
        report_error(outcome.message)
    return outcome.status


def _accel_options(text: str, name: str, opts: str) -> int:
    """-accel's properties (QEMU's texts): kvm has `dirty-ring-size` (entries per vCPU, a power of two; 0 = off)."""
    ring = 0
    for item in filter(None, opts.split(",")):
        key, _, value = item.partition("=")
        if name != "kvm" or key != "dirty-ring-size":
            raise UsageError(f"-accel {text}: Property '{name}-accel.{key}' not found")
        try:
            ring = int(value, 0)
        except ValueError:
            ring = -1
        if ring < 0:
            raise UsageError(f"-accel {text}: Parameter 'dirty-ring-size' expects uint64")
        if ring & (ring - 1):
            raise UsageError(f"-accel {text}: dirty-ring-size must be a power of two.")
    return ring


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["virsh"]:
        from refvm.mgmt.virsh import run_virsh

        return run_virsh(args[1:])
    if args[:1] == ["doctor"]:
        from refvm.kvm import doctor

        if len(args) > 1 and args[1] in ("-h", "--help", "-help"):
            print(f"usage: {PROG} doctor\n\nDescribe this host's /dev/kvm and the capabilities refvm needs.")
            return 0
        print(doctor.report())
        return doctor.doctor_exit_status()
    try:
        parsed = parse_args(args)
    except UsageError as err:
        report_error(err)
        return 1
    global _TIMESTAMPS
    _TIMESTAMPS = bool(parsed.platform and parsed.platform.msg_timestamp)
    if parsed.action == "text":
        print(parsed.text, end="")
        return 0
    if parsed.action == "help":
        print(USAGE, end="")
        return 0
    if parsed.action == "version":
        print(f"{PROG} version {VERSION} (QEMU-compatible command line subset)")
        return 0
    if parsed.action == "cpu-help":
        from refvm.cpu.options import cpu_help

        print(cpu_help(), end="")
        return 0
    if parsed.action == "device-help":
        _print_devices()
        return 0
    status = run_machine(parsed.config)
    sys.stdout.flush()
    os._exit(status & 0xFF)  # vCPU threads may still sit in KVM_RUN; do not wait for them


if __name__ == "__main__":
    sys.exit(main())
