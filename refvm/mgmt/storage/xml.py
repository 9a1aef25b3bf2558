"""libvirt's storage pool and volume XML <-> dataclasses.

Sizes take libvirt's units (virScaleInteger: b/bytes, KB=1000, K/KiB=1024, MB, M/MiB, ... EB, E/EiB); output
always says unit='bytes' as libvirt does. Errors read as libvirt's XML errors.
"""
from __future__ import annotations

import uuid as uuidlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from refvm.mgmt import errors

_UNITS = {"": 1, "b": 1, "byte": 1, "bytes": 1}
for _i, _p in enumerate("kmgtpe", start=1):
    _UNITS[_p] = _UNITS[f"{_p}ib"] = 1024 ** _i
    _UNITS[f"{_p}b"] = 1000 ** _i

POOL_TYPES = ("dir", "fs", "netfs", "logical", "disk", "iscsi", "scsi", "mpath", "rbd", "sheepdog", "gluster",
              "zfs", "vstorage", "iscsi-direct")
VOL_FORMATS = ("raw", "qcow2")


def _err(detail: str) -> errors.VirError:
    return errors.VirError(errors.VIR_ERR_XML_ERROR, detail, domain=errors.VIR_FROM_STORAGE)


def scaled(el: ET.Element | None, what: str) -> int | None:
    """A size element with an optional unit attribute, in bytes."""
    if el is None or el.text is None:
        return None
    unit = (el.get("unit") or "bytes").lower()
    if unit not in _UNITS:
        raise errors.VirError(errors.VIR_ERR_INVALID_ARG, f"unknown suffix '{el.get('unit')}'",
                              domain=errors.VIR_FROM_STORAGE)
    try:
        value = int(el.text.strip())
    except ValueError:
        raise _err(f"malformed {what} element") from None
    if value < 0:
        raise _err(f"malformed {what} element")
    return value * _UNITS[unit]


def check_name(name: str | None, what: str) -> str:
    """Names become file names: '/' and the names '.' and '..' are refused."""
    if not name:
        raise errors.VirError(errors.VIR_ERR_NO_NAME, what, domain=errors.VIR_FROM_STORAGE)
    if "/" in name or "\0" in name:  # libvirtd's text and code (VIR_ERR_OPERATION_INVALID)
        raise errors.VirError(errors.VIR_ERR_OPERATION_INVALID, f"{what} name '{name}' cannot contain '/'",
                              domain=errors.VIR_FROM_STORAGE)
    if name in (".", ".."):
        raise errors.VirError(errors.VIR_ERR_OPERATION_INVALID, f"{what} name '{name}' is not allowed",
                              domain=errors.VIR_FROM_STORAGE)
    return name


@dataclass
class Perms:
    mode: int | None = None
    owner: int | None = None
    group: int | None = None

    @classmethod
    def parse(cls, el: ET.Element | None) -> Perms:
        if el is None:
            return cls()
        mode = el.findtext("mode")
        try:
            return cls(int(mode, 8) if mode else None,
                       int(el.findtext("owner")) if el.findtext("owner") else None,
                       int(el.findtext("group")) if el.findtext("group") else None)
        except ValueError:
            raise _err("malformed octal mode / owner / group in permissions") from None

    def element(self, parent: ET.Element) -> None:
        p = ET.SubElement(parent, "permissions")
        ET.SubElement(p, "mode").text = f"0{self.mode:o}" if self.mode is not None else "0755"
        ET.SubElement(p, "owner").text = str(self.owner if self.owner is not None else -1)
        ET.SubElement(p, "group").text = str(self.group if self.group is not None else -1)


@dataclass
class PoolDef:
    """<pool type='dir|fs'>: name, uuid, source (device, format) and target path with permissions."""

    type: str
    name: str
    uuid: bytes
    target: str
    perms: Perms = field(default_factory=Perms)
    source_device: str | None = None
    source_format: str | None = None

    @classmethod
    def parse(cls, text: str) -> PoolDef:
        try:
            root = ET.fromstring(text)
        except ET.ParseError as exc:
            raise _err(f"(storage_pool_definition): {exc}") from None
        if root.tag != "pool":
            raise _err(f"unexpected root element <{root.tag}>, expecting <pool>")
        type_ = root.get("type")
        if type_ not in POOL_TYPES:
            raise _err(f"unknown storage pool type {type_}")
        name = check_name(root.findtext("name"), "pool")
        raw_uuid = root.findtext("uuid")
        try:
            uid = uuidlib.UUID(raw_uuid.strip()).bytes if raw_uuid else uuidlib.uuid4().bytes
        except ValueError:
            raise _err("malformed uuid element") from None
        target = root.findtext("target/path")
        if not target:
            raise _err("missing storage pool target path")
        dev = root.find("source/device")
        fmt = root.find("source/format")
        pool = cls(type_, name, uid, target.rstrip("/") or "/", Perms.parse(root.find("target/permissions")),
                   dev.get("path") if dev is not None else None, fmt.get("type") if fmt is not None else None)
        if type_ == "fs" and not pool.source_device:
            raise _err("missing storage pool source device path")
        return pool

    def format(self, capacity: int = 0, allocation: int = 0, available: int = 0) -> str:
        root = ET.Element("pool", type=self.type)
        ET.SubElement(root, "name").text = self.name
        ET.SubElement(root, "uuid").text = str(uuidlib.UUID(bytes=self.uuid))
        for tag, value in (("capacity", capacity), ("allocation", allocation), ("available", available)):
            ET.SubElement(root, tag, unit="bytes").text = str(value)
        src = ET.SubElement(root, "source")
        if self.source_device:
            ET.SubElement(src, "device", path=self.source_device)
        if self.type == "fs":
            ET.SubElement(src, "format", type=self.source_format or "auto")
        tgt = ET.SubElement(root, "target")
        ET.SubElement(tgt, "path").text = self.target
        self.perms.element(tgt)
        ET.indent(root)
        return ET.tostring(root, encoding="unicode") + "\n"


@dataclass
class VolDef:
    """<volume>: what createXML asks for (sizes, format, permissions, backing store)."""

    name: str
    capacity: int | None
    allocation: int | None
    format: str = "raw"
    perms: Perms = field(default_factory=Perms)
    backing_path: str | None = None
    backing_format: str | None = None

    @classmethod
    def parse(cls, text: str, default_format: str = "raw") -> VolDef:
        try:
            root = ET.fromstring(text)
        except ET.ParseError as exc:
            raise _err(f"(storage_volume_definition): {exc}") from None
        if root.tag != "volume":
            raise _err(f"unexpected root element <{root.tag}>, expecting <volume>")
        name = check_name(root.findtext("name"), "volume")
        fmt_el = root.find("target/format")
        fmt = fmt_el.get("type") if fmt_el is not None else default_format
        if fmt not in VOL_FORMATS:
            raise errors.VirError(errors.VIR_ERR_XML_ERROR, f"unknown volume format type {fmt}",
                                  domain=errors.VIR_FROM_STORAGE)
        bs_fmt = root.find("backingStore/format")
        capacity = scaled(root.find("capacity"), "capacity")
        allocation = scaled(root.find("allocation"), "allocation")
        if allocation is None:  # libvirt: no <allocation> means fully allocated
            allocation = capacity
        return cls(name, capacity, allocation,
                   fmt, Perms.parse(root.find("target/permissions")), root.findtext("backingStore/path"),
                   bs_fmt.get("type") if bs_fmt is not None else None)


def format_volume(name: str, path: str, fmt: str, capacity: int, allocation: int, physical: int, perms: Perms,
                  backing: tuple[str, str] | None, timestamps: tuple[float, float, float]) -> str:
    """A volume's XML as libvirt's virStorageVolDefFormat writes it for a file volume."""
    root = ET.Element("volume", type="file")
    ET.SubElement(root, "name").text = name
    ET.SubElement(root, "key").text = path
    ET.SubElement(root, "source")
    for tag, value in (("capacity", capacity), ("allocation", allocation), ("physical", physical)):
        ET.SubElement(root, tag, unit="bytes").text = str(value)
    tgt = ET.SubElement(root, "target")
    ET.SubElement(tgt, "path").text = path
    ET.SubElement(tgt, "format", type=fmt)
    perms.element(tgt)
    ts = ET.SubElement(tgt, "timestamps")
    for tag, value in zip(("atime", "mtime", "ctime"), timestamps, strict=False):
        ET.SubElement(ts, tag).text = f"{value:.9f}"
    if fmt == "qcow2":
        ET.SubElement(tgt, "compat").text = "1.1"
        ET.SubElement(tgt, "clusterSize", unit="B").text = "65536"
    if backing is not None:
        bs = ET.SubElement(root, "backingStore")
        ET.SubElement(bs, "path").text = backing[0]
        ET.SubElement(bs, "format", type=backing[1])
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"
