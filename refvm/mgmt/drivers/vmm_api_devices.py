"""Memory, statistics, block I/O tuning, device attach/detach and the console (a mixin of VmmDriver)."""
from __future__ import annotations

import os
import termios
import tty
import xml.etree.ElementTree as ET
from typing import Any

from refvm.mgmt import device_xml as dx
from refvm.mgmt import vir
from refvm.mgmt.domain_format import format_domain
from refvm.mgmt.domain_model import Disk, Domain, IoTune
from refvm.mgmt.domain_xml import assign_pci_addresses, random_mac
from refvm.mgmt.drivers.base import BlockStats, DomainRef, InterfaceStats
from refvm.mgmt.drivers.domobj import DomainObj
from refvm.mgmt.drivers.vmm_driver import check_flags
from refvm.mgmt.errors import (
    VIR_ERR_DEVICE_MISSING,
    VIR_ERR_OPERATION_UNSUPPORTED,
    VIR_FROM_QEMU,
    VirError,
    internal_error,
    invalid_arg,
    not_running,
    operation_failed,
    operation_invalid,
)
from refvm.mgmt.taps import tap_counters
from refvm.mgmt.xml_util import parse_document

AFFECT = vir.VIR_DOMAIN_AFFECT_LIVE | vir.VIR_DOMAIN_AFFECT_CONFIG
# libvirt <iotune> names <-> block_set_io_throttle / query-block keys
QMP_THROTTLE = {
    "total_bytes_sec": "bps", "read_bytes_sec": "bps_rd", "write_bytes_sec": "bps_wr",
    "total_iops_sec": "iops", "read_iops_sec": "iops_rd", "write_iops_sec": "iops_wr",
    "total_bytes_sec_max": "bps_max", "read_bytes_sec_max": "bps_rd_max", "write_bytes_sec_max": "bps_wr_max",
    "total_iops_sec_max": "iops_max", "read_iops_sec_max": "iops_rd_max", "write_iops_sec_max": "iops_wr_max",
    "size_iops_sec": "iops_size", "total_bytes_sec_max_length": "bps_max_length",
    "read_bytes_sec_max_length": "bps_rd_max_length", "write_bytes_sec_max_length": "bps_wr_max_length",
    "total_iops_sec_max_length": "iops_max_length", "read_iops_sec_max_length": "iops_rd_max_length",
    "write_iops_sec_max_length": "iops_wr_max_length",
}
MANDATORY = ("bps", "bps_rd", "bps_wr", "iops", "iops_rd", "iops_wr")
MEMSTAT_KEYS = (("stat-swap-in", vir.VIR_DOMAIN_MEMORY_STAT_SWAP_IN),
                ("stat-swap-out", vir.VIR_DOMAIN_MEMORY_STAT_SWAP_OUT),
                ("stat-major-faults", vir.VIR_DOMAIN_MEMORY_STAT_MAJOR_FAULT),
                ("stat-minor-faults", vir.VIR_DOMAIN_MEMORY_STAT_MINOR_FAULT),
                ("stat-free-memory", vir.VIR_DOMAIN_MEMORY_STAT_UNUSED),
                ("stat-total-memory", vir.VIR_DOMAIN_MEMORY_STAT_AVAILABLE))


def resolve_affect(obj: DomainObj, flags: int) -> tuple[bool, bool]:
    """(live, config) for VIR_DOMAIN_AFFECT_* flags, with libvirt's errors (virDomainObjUpdateModificationImpact)."""
    live, config = bool(flags & vir.VIR_DOMAIN_AFFECT_LIVE), bool(flags & vir.VIR_DOMAIN_AFFECT_CONFIG)
    if not live and not config:
        live, config = obj.active(), not obj.active()
    if live and not obj.active():
        raise not_running()
    if config and obj.definition is None:
        raise operation_invalid("transient domains do not have any persistent config")
    return live, config


class DeviceOps:
    """Operations that touch devices of a domain; relies on VmmDriverCore's helpers."""

    # provided by VmmDriverCore
    job_timeout: float
    _find: Any
    _qmp: Any
    _save_status: Any
    store: Any

    def _save_config(self, obj: DomainObj) -> None:
        assert obj.definition is not None
        self.store.save_config(obj.definition.name, format_domain(obj.definition))

    # ---- memory -----------------------------------------------------------------------------------------

    def set_memory(self, dom: DomainRef, kib: int, flags: int = 0) -> None:
        """setMemory is this with AFFECT_LIVE; setMaxMemory with MEM_MAXIMUM."""
        check_flags(flags, AFFECT | vir.VIR_DOMAIN_MEM_MAXIMUM, "qemuDomainSetMemoryFlags")
        obj = self._find(dom)
        with obj.begin_job("setmem", self.job_timeout):
            live, config = resolve_affect(obj, flags)
            if flags & vir.VIR_DOMAIN_MEM_MAXIMUM:
                if live:
                    raise operation_invalid("cannot resize the maximum memory on an active domain")
                obj.definition.memory = kib
                obj.definition.current_memory = min(obj.definition.current_memory, kib)
                self._save_config(obj)
                return
            for target in ([obj.live] if live else []) + ([obj.definition] if config else []):
                if kib > target.memory:
                    raise invalid_arg("cannot set memory higher than max memory")
            if live:
                if obj.live.memballoon is None or obj.live.memballoon.model == "none":
                    raise operation_invalid("Unable to change memory of active domain without the balloon device "
                                            "and guest OS balloon driver")
                self._qmp(obj, "balloon", {"value": kib * 1024})
                obj.live.current_memory = kib
                self._save_status(obj)
            if config:
                obj.definition.current_memory = kib
                self._save_config(obj)

    def memory_stats(self, dom: DomainRef, nr_stats: int, flags: int = 0) -> list[tuple[int, int]]:
        obj = self._find(dom)
        if not obj.active():
            raise not_running()
        stats: list[tuple[int, int]] = []
        try:
            guest = self._qmp(obj, "qom-get", {"path": "/machine/peripheral/balloon0", "property": "guest-stats"})
            values = guest.get("stats", {}) if isinstance(guest, dict) else {}
            stats += [(tag, int(values[key]) // 1024) for key, tag in MEMSTAT_KEYS
                      if isinstance(values.get(key), int) and 0 <= values[key] < 1 << 63]
        except VirError:
            pass
        balloon = self._qmp(obj, "query-balloon")
        stats.append((vir.VIR_DOMAIN_MEMORY_STAT_ACTUAL_BALLOON, int(balloon.get("actual", 0)) // 1024))
        rss = _rss_kib(obj.vmm.pid)
        if rss is not None:
            stats.append((vir.VIR_DOMAIN_MEMORY_STAT_RSS, rss))
        return stats[:nr_stats]

    # ---- statistics -------------------------------------------------------------------------------------

    def _disk(self, obj: DomainObj, name: str, dom: Domain | None = None) -> tuple[int, Disk]:
        dom = dom or obj.current
        for i, disk in enumerate(dom.disks):
            if name in (disk.target_dev, disk.source):
                return i, disk
        raise invalid_arg(f"disk '{name}' was not found in the domain config")

    def block_stats(self, dom: DomainRef, path: str) -> BlockStats:
        obj = self._find(dom)
        if not obj.active():
            raise not_running()
        index, _disk = self._disk(obj, path)
        for entry in self._qmp(obj, "query-blockstats"):
            if _is_disk(entry, index):
                s = entry.get("stats", {})
                return BlockStats(s.get("rd_operations", 0), s.get("rd_bytes", 0), s.get("wr_operations", 0),
                                  s.get("wr_bytes", 0), -1)
        raise internal_error(f"cannot find statistics for device '{path}'")

    def interface_stats(self, dom: DomainRef, path: str) -> InterfaceStats:
        obj = self._find(dom)
        if not obj.active():
            raise not_running()
        nic = obj.live.find_interface(path)
        counters = tap_counters(nic.target_dev) if nic is not None and nic.target_dev else None
        if counters is None:
            raise invalid_arg(f"invalid path, '{path}' is not a known interface")
        rx_b, rx_p, rx_e, rx_d, tx_b, tx_p, tx_e, tx_d = counters
        # the host's view of a tap is the guest's view swapped, as libvirt reports it
        return InterfaceStats(tx_b, tx_p, tx_e, tx_d, rx_b, rx_p, rx_e, rx_d)

    # ---- block I/O tuning -------------------------------------------------------------------------------

    def set_block_io_tune(self, dom: DomainRef, disk: str, params: dict[str, int | str], flags: int = 0) -> None:
        check_flags(flags, AFFECT, "qemuDomainSetBlockIoTune")
        known = dict(vir.BLOCK_IOTUNE_PARAMS)
        for name, value in params.items():
            if name not in known:
                raise invalid_arg(f"parameter '{name}' not supported")
            if (known[name] == vir.VIR_TYPED_PARAM_STRING) != isinstance(value, str) or \
                    (isinstance(value, int) and value < 0):
                raise invalid_arg(f"invalid type for parameter '{name}'")
        obj = self._find(dom)
        with obj.begin_job("blkiotune", self.job_timeout):
            live, config = resolve_affect(obj, flags)
            targets = ([obj.live] if live else []) + ([obj.definition] if config else [])
            plans = []
            for target in targets:
                index, d = self._disk(obj, disk, target)
                values = _merge(d.iotune.values, params)
                dx.validate_iotune(values)
                plans.append((target, index, d, values))
            for target, index, d, values in plans:
                if target is obj.live:
                    args = {"id": self._qdev(obj, index), **{QMP_THROTTLE[k]: v for k, v in values.items() if v}}
                    args.update({k: args.get(k, 0) for k in MANDATORY})
                    if isinstance(params.get("group_name"), str) and params["group_name"]:
                        args["group"] = params["group_name"]
                    self._qmp(obj, "block_set_io_throttle", args)
                group = params.get("group_name", d.iotune.group_name)
                d.iotune = IoTune(values, group if isinstance(group, str) and group else None)
            if live:
                self._save_status(obj)
            if config:
                self._save_config(obj)

    def _qdev(self, obj: DomainObj, index: int) -> str:
        """The id block_set_io_throttle wants: query-block's qdev path of the disk (QEMU also takes the id)."""
        for entry in self._qmp(obj, "query-block"):
            if _is_disk(entry, index) and entry.get("qdev"):
                return str(entry["qdev"])
        return f"virtio-disk{index}"

    def get_block_io_tune(self, dom: DomainRef, disk: str | None, flags: int = 0) -> list[tuple[str, int, int | str]]:
        check_flags(flags, AFFECT | vir.VIR_TYPED_PARAM_STRING_OKAY, "qemuDomainGetBlockIoTune")
        obj = self._find(dom)
        live, _config = resolve_affect(obj, flags & AFFECT)
        if disk is None:
            return [(name, kind, "" if kind == vir.VIR_TYPED_PARAM_STRING else 0)
                    for name, kind in vir.BLOCK_IOTUNE_PARAMS]
        index, d = self._disk(obj, disk, obj.live if live else obj.definition)
        values = dict(d.iotune.values)
        group = d.iotune.group_name or ""
        if live:  # read back what the hypervisor really applies
            for entry in self._qmp(obj, "query-block"):
                if _is_disk(entry, index):
                    inserted = entry.get("inserted", {})
                    values = {k: int(inserted.get(q, values.get(k, 0)) or 0) for k, q in QMP_THROTTLE.items()}
        return [(name, kind, group if kind == vir.VIR_TYPED_PARAM_STRING else int(values.get(name, 0)))
                for name, kind in vir.BLOCK_IOTUNE_PARAMS]

    # ---- devices ----------------------------------------------------------------------------------------

    def attach_device(self, dom: DomainRef, xml: str, flags: int = 0) -> None:
        self._modify_device(dom, xml, flags, attach=True)

    def detach_device(self, dom: DomainRef, xml: str, flags: int = 0) -> None:
        self._modify_device(dom, xml, flags, attach=False)

    def _modify_device(self, dom: DomainRef, xml: str, flags: int, attach: bool) -> None:
        func = "qemuDomainAttachDeviceFlags" if attach else "qemuDomainDetachDeviceFlags"
        check_flags(flags, AFFECT | vir.VIR_DOMAIN_DEVICE_MODIFY_FORCE, func)
        node = _parse_device_root(xml)
        obj = self._find(dom)
        with obj.begin_job("modify-device", self.job_timeout):
            live, config = resolve_affect(obj, flags & AFFECT)
            if live:
                verb = "attach" if attach else "detach"
                raise VirError(VIR_ERR_OPERATION_UNSUPPORTED, f"live {verb} of device '{node.tag}' is not supported",
                               domain=VIR_FROM_QEMU)
            target = obj.definition
            if node.tag == "disk":
                disk = dx.parse_disk(node)
                existing = next((d for d in target.disks if d.target_dev == disk.target_dev), None)
                if attach:
                    if existing is not None:
                        raise operation_failed(f"target {disk.target_dev} already exists")
                    target.disks.append(disk)
                else:
                    if existing is None:
                        raise VirError(VIR_ERR_DEVICE_MISSING, f"no target device {disk.target_dev}",
                                       domain=VIR_FROM_QEMU)
                    target.disks.remove(existing)
            else:
                nic = dx.parse_interface(node)
                if attach:
                    nic.mac = nic.mac or random_mac()
                    target.interfaces.append(nic)
                else:
                    match = [n for n in target.interfaces if not nic.mac or n.mac == nic.mac]
                    if len(match) != 1:
                        raise VirError(VIR_ERR_DEVICE_MISSING, f"no device matching MAC address {nic.mac} found"
                                       if not match else "multiple matching devices found", domain=VIR_FROM_QEMU)
                    target.interfaces.remove(match[0])
            assign_pci_addresses(target)
            self._save_config(obj)

    # ---- console ----------------------------------------------------------------------------------------

    def open_console(self, dom: DomainRef, dev_name: str | None, flags: int = 0) -> int:
        check_flags(flags, vir.VIR_DOMAIN_CONSOLE_FORCE | vir.VIR_DOMAIN_CONSOLE_SAFE, "qemuDomainOpenConsole")
        obj = self._find(dom)
        if not obj.active():
            raise not_running()
        devs = [*obj.live.consoles, *obj.live.serials]
        chosen = devs[0] if devs and dev_name is None else next((d for d in devs if d.alias == dev_name), None)
        if chosen is None:
            raise internal_error(f"cannot find character device {dev_name or '<null>'}")
        if chosen.type != "pty" or not chosen.path:
            raise internal_error(f"character device {chosen.alias} is not using a PTY")
        fd = os.open(chosen.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            tty.setraw(fd, termios.TCSANOW)
        except termios.error:
            pass
        return fd


def _merge(old: dict[str, int], params: dict[str, int | str]) -> dict[str, int]:
    """libvirt keeps the limits a call does not name, except that setting total_X clears read_X/write_X and the
    other way round (qemuDomainSetBlockIoTune's 'set_fields' logic)."""
    values = dict(old)
    for name, value in params.items():
        if not isinstance(value, int):
            continue
        values[name] = value
        for op in ("total", "read", "write"):
            if name.startswith(op + "_"):
                rest = name[len(op):]
                others = ("read", "write") if op == "total" else ("total",)
                for other in others:
                    if f"{other}{rest}" not in params:
                        values[f"{other}{rest}"] = 0
    return {k: v for k, v in values.items() if v}


def _parse_device_root(xml: str) -> ET.Element:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        parse_document(xml, "device")  # raises libvirt's parse error
        raise
    if root.tag not in ("disk", "interface"):
        raise VirError(VIR_ERR_OPERATION_UNSUPPORTED, f"device type '{root.tag}' cannot be attached or detached",
                       domain=VIR_FROM_QEMU)
    return root


def _rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _is_disk(entry: dict[str, Any], index: int) -> bool:
    """Does a query-block/query-blockstats entry belong to disk ``index`` (by drive id or qdev path)?"""
    return entry.get("device") == f"drive-virtio-disk{index}" or f"/virtio-disk{index}/" in entry.get("qdev", "")
