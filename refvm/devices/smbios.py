"""SMBIOS tables (DMTF DSP0134, 2.8 entry point) from `-smbios type=0|1|2|3|4|11|17,...`, as QEMU 7.2 builds them.

The structures, handles (type * 0x100 + instance; 0xE00 for type 11), default strings and the order of the
string-set fields follow what QEMU 7.2's `-M pc` hands its firmware in fw_cfg `etc/smbios/smbios-tables`
(observed over qtest), so a guest's dmidecode reads the same on both. The anchor goes to fw_cfg with zero
checksums and address (QEMU leaves those to the firmware); refvm has no firmware, so it also places a
complete copy where a guest scans for it (a 16-byte boundary in 0xF0000-0xFFFFF).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field

__all__ = ["SmbiosError", "SmbiosOptions", "build_tables", "build_anchor", "parse_smbios", "parse_uuid", "format_uuid",
           "uuid_le"]

MACHINE_VERSION = "pc-i440fx-7.2"
PRODUCT = "Standard PC (i440FX + PIIX, 1996)"
#: qemu64's CPUID leaf 1 EAX/EDX: the processor ID QEMU's default CPU gives in the type 4 structure.
DEFAULT_PROCESSOR_ID = 0x078BFBFD_00060FB1
MAX_DIMM = 16 << 30  # QEMU describes RAM as DIMMs of at most 16 GiB

#: Fields of each type QEMU accepts, with how to check each one ("str", "num", "bool", "uuid", "release").
FIELDS: dict[int, dict[str, str]] = {
    0: {"vendor": "str", "version": "str", "date": "str", "release": "release", "uefi": "bool"},
    1: {"manufacturer": "str", "product": "str", "version": "str", "serial": "str", "uuid": "uuid",
        "sku": "str", "family": "str"},
    2: {"manufacturer": "str", "product": "str", "version": "str", "serial": "str", "asset": "str",
        "location": "str"},
    3: {"manufacturer": "str", "version": "str", "serial": "str", "asset": "str", "sku": "str"},
    4: {"sock_pfx": "str", "manufacturer": "str", "version": "str", "serial": "str", "asset": "str",
        "part": "str", "max-speed": "num", "current-speed": "num", "processor-id": "num"},
    11: {"value": "str"},
    17: {"loc_pfx": "str", "bank": "str", "manufacturer": "str", "serial": "str", "asset": "str", "part": "str",
         "speed": "num"},
}  # fmt: skip


class SmbiosError(ValueError):
    """A bad -smbios option; str() is QEMU's message (without the `-smbios TEXT: ` prefix)."""


@dataclass
class SmbiosOptions:
    """The -smbios options given, by type; type 11 keeps its repeated `value=` strings in order."""

    fields: dict[int, dict[str, str]] = field(default_factory=dict)
    oem_strings: list[str] = field(default_factory=list)


_UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def parse_uuid(text: str) -> bytes:
    """QEMU's UUID syntax (8-4-4-4-12 hex digits, nothing else) as 16 bytes in network order.

    Python's uuid module would accept more spellings, and importing it costs every refvm start ~15 ms.
    """
    if not _UUID_RE.fullmatch(text):
        raise ValueError(f"not a UUID: {text!r}")
    return bytes.fromhex(text.replace("-", ""))


def format_uuid(raw: bytes) -> str:
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def uuid_le(raw: bytes) -> bytes:
    """SMBIOS byte order (DSP0134 7.2.1): the first three fields little endian, the rest as is."""
    return raw[3::-1] + raw[5:3:-1] + raw[7:5:-1] + raw[8:]


def parse_smbios(text: str, options: SmbiosOptions) -> str | None:
    """Add one `-smbios` argument to ``options``; returns a type-1 `uuid=` (it also sets the machine's UUID)."""
    items: list[tuple[str, str]] = []
    for part in text.split(","):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep:
            raise SmbiosError(f"Invalid parameter '{key}'")
        items.append((key, value))
    keys = dict(items)
    if "file" in keys:
        raise SmbiosError(f"Cannot read SMBIOS file {keys['file']}")  # refvm takes no binary blobs
    if "type" not in keys:
        raise SmbiosError("Must specify type= or file=")
    try:
        kind = int(keys["type"], 0)
    except ValueError:
        raise SmbiosError("Parameter 'type' expects a number") from None
    if kind not in FIELDS:
        raise SmbiosError(f"Don't know how to build fields for SMBIOS type {kind}")
    allowed = FIELDS[kind]
    target = options.fields.setdefault(kind, {})
    for key, value in items:
        if key == "type":
            continue
        check = allowed.get(key)
        if check is None:
            raise SmbiosError(f"Invalid parameter '{key}'")
        _check(key, value, check)
        if kind == 11:
            options.oem_strings.append(value)
        else:
            target[key] = value
    return target.get("uuid") if kind == 1 and "uuid" in keys else None


def _check(key: str, value: str, check: str) -> None:
    if check == "num":
        try:
            int(value, 0)
        except ValueError:
            raise SmbiosError(f"Parameter '{key}' expects a number") from None
    elif check == "bool" and value not in ("on", "off"):
        raise SmbiosError(f"Parameter '{key}' expects 'on' or 'off'")
    elif check == "uuid":
        try:
            parse_uuid(value)
        except ValueError:
            raise SmbiosError("Invalid UUID") from None
    elif check == "release":
        major, dot, minor = value.partition(".")
        if not (dot and major.isdigit() and minor.isdigit() and int(major) < 256 and int(minor) < 256):
            raise SmbiosError("Invalid release")


class _Strings:
    """The string-set after a structure's formatted area: field -> 1-based index, 0 for an unset string."""

    def __init__(self) -> None:
        self.items: list[bytes] = []

    def ref(self, value: str | None) -> int:
        if not value:
            return 0
        self.items.append(value.encode())
        return len(self.items)

    def encode(self) -> bytes:
        if not self.items:
            return b"\0\0"
        return b"".join(s + b"\0" for s in self.items) + b"\0"


def _structure(kind: int, handle: int, body_fn) -> bytes:  # noqa: ANN001 - body_fn(strings) -> bytes
    strings = _Strings()
    body = body_fn(strings)
    return struct.pack("<BBH", kind, 4 + len(body), handle) + body + strings.encode()


@dataclass
class _Machine:
    ram_regions: list[tuple[int, int]]
    ram_size: int
    sockets: int
    cores: int
    threads: int
    uuid: bytes


def _type0(f: dict[str, str]) -> bytes:
    def body(s: _Strings) -> bytes:
        vendor, version = s.ref(f.get("vendor")), s.ref(f.get("version"))
        date = s.ref(f.get("date"))
        major, minor = (int(x) for x in f["release"].split(".")) if "release" in f else (0, 0)
        ext2 = 0x14 | (0x08 if f.get("uefi") == "on" else 0)  # targeted content distribution, VM (+ UEFI)
        return struct.pack("<BBHBBQBBBBBB", vendor, version, 0xE800, date, 0, 0x08, 0, ext2, major, minor,
                           0xFF, 0xFF)  # fmt: skip

    return _structure(0, 0x000, body)


def _type1(f: dict[str, str], uuid: bytes) -> bytes:
    def body(s: _Strings) -> bytes:
        refs = [s.ref(f.get("manufacturer", "QEMU")), s.ref(f.get("product", PRODUCT)),
                s.ref(f.get("version", MACHINE_VERSION)), s.ref(f.get("serial"))]  # fmt: skip
        sku, family = s.ref(f.get("sku")), s.ref(f.get("family"))
        return struct.pack("<4B", *refs) + uuid + struct.pack("<BBB", 0x06, sku, family)  # wake-up: power switch

    return _structure(1, 0x100, body)


def _type2(f: dict[str, str]) -> bytes:
    def body(s: _Strings) -> bytes:
        defaults = {"manufacturer": "QEMU", "product": PRODUCT, "version": MACHINE_VERSION}  # as type 1's
        refs = [s.ref(f.get(k, defaults.get(k))) for k in ("manufacturer", "product", "version", "serial", "asset")]
        location = s.ref(f.get("location"))
        # feature flags: hosting board; chassis handle: the type 3 structure; board type: motherboard
        return struct.pack("<5BBBHBB", *refs, 0x01, location, 0x0300, 0x0A, 0)

    return _structure(2, 0x200, body)


def _type3(f: dict[str, str]) -> bytes:
    def body(s: _Strings) -> bytes:
        manufacturer = s.ref(f.get("manufacturer", "QEMU"))
        version, serial, asset = (s.ref(f.get(k, MACHINE_VERSION if k == "version" else None))
                                  for k in ("version", "serial", "asset"))  # fmt: skip
        sku = s.ref(f.get("sku"))
        # type other; boot-up, power supply, thermal: safe; security: unknown
        return struct.pack("<BBBBBBBBBIBBBBB", manufacturer, 0x01, version, serial, asset, 3, 3, 3, 2, 0, 0, 0, 0,
                           0, sku)  # fmt: skip

    return _structure(3, 0x300, body)


def _type4(f: dict[str, str], m: _Machine, index: int) -> bytes:
    def body(s: _Strings) -> bytes:
        socket = s.ref(f"{f.get('sock_pfx', 'CPU')} {index}")
        manufacturer = s.ref(f.get("manufacturer", "QEMU"))
        processor_id = int(f.get("processor-id", str(DEFAULT_PROCESSOR_ID)), 0) & (1 << 64) - 1
        version = s.ref(f.get("version", MACHINE_VERSION))
        max_speed = int(f.get("max-speed", "2000"), 0) & 0xFFFF
        current = int(f.get("current-speed", "2000"), 0) & 0xFFFF
        serial, asset, part = (s.ref(f.get(k)) for k in ("serial", "asset", "part"))
        threads = m.cores * m.threads
        return struct.pack("<BBBBQBBHHHBBHHHBBBBBBHH", socket, 0x03, 0x01, manufacturer, processor_id, version, 0, 0,
                           max_speed, current, 0x41, 0x01, 0xFFFF, 0xFFFF, 0xFFFF, serial, asset, part,
                           min(m.cores, 255), min(m.cores, 255), min(threads, 255), 0x0002, 0x0001)  # fmt: skip

    return _structure(4, 0x400 + index, body)


def _type11(strings: list[str]) -> bytes:
    def body(s: _Strings) -> bytes:
        for value in strings:
            s.ref(value)
        return struct.pack("<B", len(strings))

    return _structure(11, 0xE00, body)


def _type16(m: _Machine, dimms: int) -> bytes:
    kib = m.ram_size // 1024
    capacity, extended = (kib, 0) if kib < 0x8000_0000 else (0x8000_0000, m.ram_size)
    # location: other; use: system memory; error correction: multi-bit ECC; no error information
    return _structure(16, 0x1000, lambda s: struct.pack("<BBBIHHQ", 1, 3, 6, capacity, 0xFFFE, dimms, extended))


def _type17(f: dict[str, str], index: int, size: int) -> bytes:
    def body(s: _Strings) -> bytes:
        mib = size >> 20
        size_field, ext = (mib, 0) if mib < 0x7FFF else (0x7FFF, mib)
        locator = s.ref(f"{f.get('loc_pfx', 'DIMM')} {index}")
        bank = s.ref(f.get("bank"))
        speed = int(f.get("speed", "0"), 0) & 0xFFFF
        manufacturer = s.ref(f.get("manufacturer", "QEMU"))
        serial, asset, part = (s.ref(f.get(k)) for k in ("serial", "asset", "part"))
        return struct.pack("<HHHHHBBBBBHHBBBBBIHHHH", 0x1000, 0xFFFE, 0xFFFF, 0xFFFF, size_field, 0x09, 0, locator,
                           bank, 0x07, 0x0002, speed, manufacturer, serial, asset, part, 0, ext, speed, 0, 0,
                           0)  # fmt: skip

    return _structure(17, 0x1100 + index, body)


def _type19(index: int, start: int, end: int) -> bytes:
    start_kib, end_kib = start >> 10, (end >> 10) - 1
    if end_kib < 0xFFFF_FFFF:
        return _structure(19, 0x1300 + index, lambda s: struct.pack("<IIHBQQ", start_kib, end_kib, 0x1000, 1, 0, 0))
    return _structure(19, 0x1300 + index, lambda s: struct.pack("<IIHBQQ", 0xFFFF_FFFF, 0xFFFF_FFFF, 0x1000, 1,
                                                                 start, end - 1))  # fmt: skip


def build_tables(
    options: SmbiosOptions,
    *,
    ram_size: int,
    ram_regions: list[tuple[int, int]],
    uuid: bytes = bytes(16),
    sockets: int = 1,
    cores: int = 1,
    threads: int = 1,
) -> tuple[bytes, int, int]:
    """The structure table, its structure count and its largest structure, in QEMU's order.

    ``ram_regions`` are the (start, end) RAM ranges as in the e820 map; ``uuid`` is in SMBIOS byte order.
    """
    m = _Machine(ram_regions, ram_size, sockets, cores, threads, uuid)
    f = options.fields
    parts: list[bytes] = []
    if 0 in f:
        parts.append(_type0(f[0]))
    parts.append(_type1(f.get(1, {}), uuid))
    if 2 in f:
        parts.append(_type2(f[2]))
    parts.append(_type3(f.get(3, {})))
    parts += [_type4(f.get(4, {}), m, i) for i in range(sockets)]
    if options.oem_strings:
        parts.append(_type11(options.oem_strings))
    sizes = [min(MAX_DIMM, ram_size - i * MAX_DIMM) for i in range((ram_size + MAX_DIMM - 1) // MAX_DIMM)]
    parts.append(_type16(m, len(sizes)))
    parts += [_type17(f.get(17, {}), i, size) for i, size in enumerate(sizes)]
    parts += [_type19(i, start, end) for i, (start, end) in enumerate(ram_regions)]
    parts.append(_structure(32, 0x2000, lambda s: bytes(7)))  # system boot: no errors
    parts.append(_structure(127, 0x7F00, lambda s: b""))
    return b"".join(parts), len(parts), max(len(p) for p in parts)


def _checksum(data: bytes) -> int:
    return (-sum(data)) & 0xFF


def build_anchor(table_len: int, count: int, max_size: int, address: int = 0, checksums: bool = False) -> bytes:
    """The 31-byte SMBIOS 2.8 entry point ("_SM_" ... "_DMI_").

    QEMU hands it to firmware with zero checksums and address (``checksums=False``); a guest scanning memory
    needs both filled in.
    """
    tail = b"_DMI_" + b"\0" + struct.pack("<HIHB", table_len, address, count, 0x28)
    if checksums:
        tail = tail[:5] + bytes([_checksum(tail[:5] + tail[6:])]) + tail[6:]
    head = b"_SM_" + b"\0" + struct.pack("<BBBHB5s", 0x1F, 2, 8, max_size, 0, bytes(5))
    anchor = head + tail
    if checksums:
        anchor = anchor[:4] + bytes([_checksum(anchor)]) + anchor[5:]
    return anchor
