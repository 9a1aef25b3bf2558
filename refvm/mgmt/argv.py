"""Domain -> the hypervisor's command line: one builder for refvm and QEMU, differing only where they differ.

Like libvirt, the VMM always starts with ``-S`` (the driver sends ``cont`` unless START_PAUSED) and a QMP socket
in the domain's runtime directory. Device ids and aliases are libvirt's (virtio-disk0, net0, balloon0, rng0,
serial0), so block_set_io_throttle and query-block answers name the devices as libvirt's QEMU driver names them.
Tap devices are opened by the daemon and passed as ``-netdev tap,fd=N``, as libvirt passes them; the caller
gives the fd numbers (they must survive exec: see ``pass_fds`` of subprocess).
"""
from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field

from refvm.mgmt.domain_model import Domain, PciAddress
from refvm.mgmt.errors import config_unsupported

MIB_KIB = 1024


@dataclass
class CommandLine:
    """argv plus what the driver needs to know about it."""

    argv: list[str]
    pass_fds: list[int] = field(default_factory=list)


def disk_alias(index: int) -> str:
    return f"virtio-disk{index}"


def apply_aliases(dom: Domain) -> None:
    """Fill the live aliases libvirt gives devices (dumpxml of a running domain shows them)."""
    for i, disk in enumerate(dom.disks):
        disk.alias = disk_alias(i)
    for i, nic in enumerate(dom.interfaces):
        nic.alias = f"net{i}"
    for i, dev in enumerate(dom.serials):
        dev.alias = f"serial{i}"
    for i, dev in enumerate(dom.consoles):
        dev.alias = f"console{i}" if i else "serial0"
    for ctrl in dom.controllers:
        ctrl.alias = "pci.0"
    if dom.memballoon is not None and dom.memballoon.model != "none":
        dom.memballoon.alias = "balloon0"
    for i, rng in enumerate(dom.rngs):
        rng.alias = f"rng{i}"


def emulator_command(kind: str, dom: Domain) -> list[str]:
    """The program: ``python -m refvm`` for refvm, <emulator> or qemu-system-x86_64 for qemu."""
    if kind == "refvm":
        return [sys.executable, "-m", "refvm"]
    binary = dom.emulator or shutil.which("qemu-system-x86_64") or "qemu-system-x86_64"
    return [binary]


def build_argv(kind: str, dom: Domain, qmp_path: str, tap_fds: list[int] | None = None,
               accel: str | None = None, incoming: str | None = None) -> CommandLine:
    """The command line for ``kind`` ('refvm' or 'qemu'); tap_fds[i] is the open tap of interface i;
    ``incoming`` ('defer' for a migration destination, as libvirt starts it) adds ``-incoming``."""
    tap_fds = tap_fds or []
    if len(tap_fds) != len(dom.interfaces):
        raise config_unsupported("every <interface> needs an open tap device")
    if not dom.os.kernel and kind == "refvm":
        raise config_unsupported("refvm boots only direct kernels: <os><kernel> is required")
    if accel is None:
        accel = "kvm" if dom.type == "kvm" else "tcg"
    if kind == "refvm" and accel != "kvm":
        raise config_unsupported(f"domain type '{dom.type}' is not supported by refvm (kvm only)")
    args = emulator_command(kind, dom)
    args += ["-name", dom.name if kind == "refvm" else f"guest={_escape(dom.name)}"]
    args += ["-S", "-machine", f"pc,accel={accel}"]
    if kind == "qemu":
        args += ["-uuid", dom.uuid]
        if dom.cpu.model:
            args += ["-cpu", dom.cpu.model + "".join(
                f",{'-' if p in ('disable', 'forbid') else '+'}{n}" for p, n in dom.cpu.features)]
    args += ["-m", f"{max(1, dom.memory // MIB_KIB)}M", "-smp", str(dom.vcpus)]
    args += ["-nodefaults", "-display", "none", "-qmp", f"unix:{qmp_path},server=on,wait=off"]
    if dom.on_reboot == "destroy":
        args.append("-no-reboot")
    args.append("-no-shutdown")  # as libvirt: a guest poweroff stops the VMM, refvmd then quits (or fake-reboots) it
    if dom.os.kernel:
        args += ["-kernel", dom.os.kernel]
        if dom.os.initrd:
            args += ["-initrd", dom.os.initrd]
        if dom.os.cmdline:
            args += ["-append", dom.os.cmdline]
    args += _serial_args(dom)
    if incoming is not None:
        args += ["-incoming", incoming]
    for i, disk in enumerate(dom.disks):
        drive = f"drive-{disk_alias(i)}"
        opts = [f"file={_escape(disk.source_path() or '')}", "if=none", f"id={drive}",
                f"format={disk.driver_type or 'raw'}"]
        if disk.cache and disk.cache != "default":
            opts.append(f"cache={disk.cache}")
        if disk.readonly:
            opts.append("readonly=on")
        if disk.discard:
            opts.append(f"discard={disk.discard}")
        opts += [f"throttling.{_THROTTLE_KEYS[k]}={v}" for k, v in disk.iotune.values.items()
                 if v and k in _THROTTLE_KEYS]
        args += ["-drive", ",".join(opts)]
        dev = ["virtio-blk-pci", f"drive={drive}", f"id={disk_alias(i)}"]
        if disk.serial:
            dev.append(f"serial={_escape(disk.serial)}")
        args += ["-device", ",".join(dev + _addr(disk.address))]
    for i, nic in enumerate(dom.interfaces):
        args += ["-netdev", f"tap,fd={tap_fds[i]},id=hostnet{i}"]
        args += ["-device", ",".join([f"virtio-net-pci,netdev=hostnet{i}", f"id=net{i}", f"mac={nic.mac}"]
                                     + _addr(nic.address))]
    if dom.memballoon is not None and dom.memballoon.model != "none":
        args += ["-device", ",".join(["virtio-balloon-pci", "id=balloon0"] + _addr(dom.memballoon.address))]
    for i, rng in enumerate(dom.rngs):
        args += ["-object", f"rng-random,id=objrng{i},filename={rng.backend}"]
        args += ["-device", ",".join([f"virtio-rng-pci,rng=objrng{i}", f"id=rng{i}"] + _addr(rng.address))]
    return CommandLine(args, list(tap_fds))


# libvirt <iotune> names -> QEMU's -drive throttling.* keys
_THROTTLE_KEYS = {
    "total_bytes_sec": "bps-total", "read_bytes_sec": "bps-read", "write_bytes_sec": "bps-write",
    "total_iops_sec": "iops-total", "read_iops_sec": "iops-read", "write_iops_sec": "iops-write",
    "total_bytes_sec_max": "bps-total-max", "read_bytes_sec_max": "bps-read-max",
    "write_bytes_sec_max": "bps-write-max", "total_iops_sec_max": "iops-total-max",
    "read_iops_sec_max": "iops-read-max", "write_iops_sec_max": "iops-write-max", "size_iops_sec": "iops-size",
}


def _serial_args(dom: Domain) -> list[str]:
    args: list[str] = []
    for i, dev in enumerate(sorted(dom.serials, key=lambda d: d.target_port)):
        if dev.type == "pty":
            args += ["-chardev", f"pty,id=charserial{i}"]
        else:
            args += ["-chardev", f"file,id=charserial{i},path={_escape(dev.path or '')}"]
        args += ["-serial", f"chardev:charserial{i}"]
    return args


def _addr(address: PciAddress | None) -> list[str]:
    return [f"addr={address.bdf()}"] if address is not None else []


def _escape(value: str) -> str:
    """QemuOpts escaping: a comma in a value is doubled."""
    return value.replace(",", ",,")
