"""The qcow2 header (qcow2.txt "Header", "Header extensions", "Feature name table"): parse, check, serialize.

Everything here treats the file as untrusted: each field is checked against the spec's limits and the file
size before anything else uses it, and a problem becomes a :class:`BlockError` naming the file.
Unknown header extensions and unknown additional header fields are kept verbatim so a rewrite preserves them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from refvm.block.driver import QCOW2_MAGIC, BlockError

__all__ = [
    "Header",
    "Extension",
    "parse_header",
    "EXT_END",
    "EXT_BACKING_FORMAT",
    "EXT_FEATURE_TABLE",
    "EXT_BITMAPS",
    "EXT_CRYPTO",
    "EXT_DATA_FILE",
    "INCOMPAT_DIRTY",
    "INCOMPAT_CORRUPT",
    "INCOMPAT_DATA_FILE",
    "INCOMPAT_COMPRESSION",
    "INCOMPAT_EXTL2",
    "COMPAT_LAZY_REFCOUNTS",
    "FEATURE_NAMES",
    "V2_HEADER_LEN",
    "V3_HEADER_LEN",
]

_V2 = struct.Struct(">4sIQIIQIIQQIIQ")  # through snapshots_offset: 72 bytes
_V3 = struct.Struct(">QQQII")  # incompatible, compatible, autoclear, refcount_order, header_length
V2_HEADER_LEN = _V2.size
V3_HEADER_LEN = V2_HEADER_LEN + _V3.size  # 104

EXT_END = 0x00000000
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_FEATURE_TABLE = 0x6803F857
EXT_BITMAPS = 0x23852875
EXT_CRYPTO = 0x0537BE77
EXT_DATA_FILE = 0x44415441

INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTL2 = 1 << 4
COMPAT_LAZY_REFCOUNTS = 1 << 0
AUTOCLEAR_BITMAPS = 1 << 0
AUTOCLEAR_RAW_DATA = 1 << 1

#: (feature type, bit) -> name, the feature name table refvm writes (types: 0 incompatible, 1 compatible,
#: 2 autoclear).
FEATURE_NAMES: dict[tuple[int, int], str] = {
    (0, 0): "dirty bit",
    (0, 1): "corrupt bit",
    (0, 2): "external data file",
    (0, 3): "compression type",
    (0, 4): "extended L2 entries",
    (1, 0): "lazy refcounts",
    (2, 0): "bitmaps",
    (2, 1): "raw external data",
}

MAX_CLUSTER_BITS = 21  # QEMU's implementation limit (2 MiB), stated in the spec
MIN_CLUSTER_BITS = 9
MAX_BACKING_NAME = 1023
MAX_L1_BYTES = 32 << 20  # QEMU's implementation limit on the L1 table
MAX_REFTABLE_BYTES = 8 << 20  # QEMU's implementation limit on the refcount table
OFFSET_MASK = 0x00FF_FFFF_FFFF_FE00  # bits 9-55 of table entries


@dataclass
class Extension:
    """One header extension, kept as raw bytes (type, data) so unknown ones survive a rewrite."""

    type: int
    data: bytes


@dataclass
class Header:
    """The fields of a qcow2 header; v3 fields keep their v2 defaults on a version-2 image."""

    version: int = 3
    backing_file_offset: int = 0
    backing_file_size: int = 0
    cluster_bits: int = 16
    size: int = 0
    crypt_method: int = 0
    l1_size: int = 0
    l1_table_offset: int = 0
    refcount_table_offset: int = 0
    refcount_table_clusters: int = 0
    nb_snapshots: int = 0
    snapshots_offset: int = 0
    incompatible_features: int = 0
    compatible_features: int = 0
    autoclear_features: int = 0
    refcount_order: int = 4
    header_length: int = V3_HEADER_LEN + 8  # with the compression_type field and padding, as qemu-img writes
    #: Bytes of additional fields after byte 104 (compression_type and unknown future fields), verbatim.
    extra_fields: bytes = b"\0" * 8
    extensions: list[Extension] = field(default_factory=list)
    backing_file: str | None = None

    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits

    @property
    def refcount_bits(self) -> int:
        return 1 << self.refcount_order

    @property
    def backing_format(self) -> str | None:
        for ext in self.extensions:
            if ext.type == EXT_BACKING_FORMAT:
                return ext.data.decode("utf-8", "replace")
        return None

    def feature_name(self, kind: int, bit: int) -> str:
        """A feature's name from the image's own feature table (for unknown bits), else refvm's."""
        for ext in self.extensions:
            if ext.type != EXT_FEATURE_TABLE:
                continue
            for pos in range(0, len(ext.data) - 47, 48):
                if ext.data[pos] == kind and ext.data[pos + 1] == bit:
                    return ext.data[pos + 2 : pos + 48].split(b"\0", 1)[0].decode("utf-8", "replace")
        return FEATURE_NAMES.get((kind, bit), f"unknown feature bit {bit}")

    def fixed_bytes(self) -> bytes:
        """The header structure itself (header_length bytes; 72 for version 2)."""
        out = _V2.pack(
            QCOW2_MAGIC,
            self.version,
            self.backing_file_offset,
            self.backing_file_size,
            self.cluster_bits,
            self.size,
            self.crypt_method,
            self.l1_size,
            self.l1_table_offset,
            self.refcount_table_offset,
            self.refcount_table_clusters,
            self.nb_snapshots,
            self.snapshots_offset,
        )
        if self.version == 2:
            return out
        out += _V3.pack(
            self.incompatible_features,
            self.compatible_features,
            self.autoclear_features,
            self.refcount_order,
            self.header_length,
        )
        return out + self.extra_fields

    def serialize(self) -> bytes:
        """Header, extensions (each padded to 8), end marker, then the backing file name.

        Recomputes backing_file_offset/size so they point just after the extension area. The result must
        fit in the first cluster (the caller checks).
        """
        body = bytearray()
        for ext in self.extensions:
            if ext.type == EXT_END:
                continue
            body += struct.pack(">II", ext.type, len(ext.data)) + ext.data
            body += b"\0" * (-len(ext.data) % 8)
        fixed_len = len(self.fixed_bytes())
        if self.version >= 3 or self.extensions or self.backing_file:
            body += struct.pack(">II", EXT_END, 0)
        if self.backing_file:
            name = self.backing_file.encode()
            self.backing_file_offset = fixed_len + len(body)
            self.backing_file_size = len(name)
            body += name
        else:
            self.backing_file_offset = 0
            self.backing_file_size = 0
        return self.fixed_bytes() + bytes(body)


def parse_header(path: str, buf: bytes, file_size: int) -> Header:
    """Parse and validate the header in ``buf`` (the start of the file, at least one cluster if it exists)."""

    def bad(problem: str) -> BlockError:
        return BlockError(path, problem)

    if len(buf) < V2_HEADER_LEN:
        if buf[:4] != QCOW2_MAGIC:
            raise bad("Image is not in qcow2 format (bad magic)")
        raise bad(f"qcow2 header truncated: the file has only {len(buf)} bytes")
    f = _V2.unpack_from(buf)
    if f[0] != QCOW2_MAGIC:
        raise bad(f"Image is not in qcow2 format (bad magic {f[0]!r}, expected {QCOW2_MAGIC!r})")
    h = Header(
        version=f[1],
        backing_file_offset=f[2],
        backing_file_size=f[3],
        cluster_bits=f[4],
        size=f[5],
        crypt_method=f[6],
        l1_size=f[7],
        l1_table_offset=f[8],
        refcount_table_offset=f[9],
        refcount_table_clusters=f[10],
        nb_snapshots=f[11],
        snapshots_offset=f[12],
    )
    if h.version not in (2, 3):
        raise bad(f"Unsupported qcow2 version {h.version} (supported: 2, 3)")
    if not MIN_CLUSTER_BITS <= h.cluster_bits <= MAX_CLUSTER_BITS:
        raise bad(f"Unsupported cluster size: 2^{h.cluster_bits} (must be 2^9 .. 2^21)")
    cs = h.cluster_size
    if h.version == 2:
        h.header_length = V2_HEADER_LEN
        h.extra_fields = b""
        h.refcount_order = 4
    else:
        if len(buf) < V3_HEADER_LEN:
            raise bad(f"qcow2 v3 header truncated: the file has only {len(buf)} bytes")
        v3 = _V3.unpack_from(buf, V2_HEADER_LEN)
        h.incompatible_features, h.compatible_features, h.autoclear_features = v3[0], v3[1], v3[2]
        h.refcount_order, h.header_length = v3[3], v3[4]
        if h.header_length < V3_HEADER_LEN:
            raise bad(f"qcow2 header_length {h.header_length} too small (version 3 needs at least {V3_HEADER_LEN})")
        if h.header_length % 8:
            raise bad(f"qcow2 header_length {h.header_length} is not a multiple of 8")
        if h.header_length > cs or h.header_length > len(buf):
            raise bad(f"qcow2 header_length {h.header_length} exceeds the first cluster or the file")
        h.extra_fields = bytes(buf[V3_HEADER_LEN : h.header_length])
    _check_features(path, h)
    if h.refcount_order > 6:
        raise bad(f"Invalid refcount_order {h.refcount_order} (must be at most 6)")
    if h.crypt_method:
        raise bad(f"Encrypted images are not supported (crypt_method {h.crypt_method})")
    for name, off in (
        ("l1_table_offset", h.l1_table_offset),
        ("refcount_table_offset", h.refcount_table_offset),
        ("snapshots_offset", h.snapshots_offset if h.nb_snapshots else 0),
    ):
        if off % cs:
            raise bad(f"{name} 0x{off:x} is not aligned to the cluster size {cs}")
    if h.refcount_table_clusters == 0 or h.refcount_table_offset == 0:
        raise bad("Image has no refcount table")
    if h.refcount_table_clusters * cs > MAX_REFTABLE_BYTES:
        raise bad(f"Reference count table too large ({h.refcount_table_clusters} clusters)")
    if h.refcount_table_offset + h.refcount_table_clusters * cs > file_size:
        raise bad(f"Refcount table at 0x{h.refcount_table_offset:x} extends past the end of the file")
    if h.l1_size * 8 > MAX_L1_BYTES:
        raise bad(f"Active L1 table too large ({h.l1_size} entries)")
    need = min_l1_entries(h.size, h.cluster_bits)
    if h.l1_size < need:
        raise bad(f"L1 table has {h.l1_size} entries, too small for a virtual size of {h.size} bytes")
    if h.l1_size and (h.l1_table_offset == 0 or h.l1_table_offset + h.l1_size * 8 > file_size):
        raise bad(
            f"Active L1 table at 0x{h.l1_table_offset:x} ({h.l1_size} entries) extends past the end of the file"
            f" ({file_size} bytes)"
        )
    _parse_extensions(path, h, buf)
    if h.backing_file_offset:
        end = h.backing_file_offset + h.backing_file_size
        if h.backing_file_size > MAX_BACKING_NAME:
            raise bad(f"Backing file name too long ({h.backing_file_size} bytes, at most {MAX_BACKING_NAME})")
        if end > cs or end > len(buf):
            raise bad("Backing file name lies outside the first cluster")
        h.backing_file = bytes(buf[h.backing_file_offset : end]).decode("utf-8", "replace")
    return h


def min_l1_entries(size: int, cluster_bits: int) -> int:
    """L1 entries needed to map ``size`` bytes: each L2 table maps cluster_size/8 clusters."""
    per_l2 = 1 << (cluster_bits + cluster_bits - 3)
    return -(-size // per_l2)


_KNOWN_INCOMPAT = INCOMPAT_DIRTY | INCOMPAT_CORRUPT


def _check_features(path: str, h: Header) -> None:
    """Refuse incompatible features refvm does not implement, naming them (spec: must fail to open)."""
    unsupported = h.incompatible_features & ~_KNOWN_INCOMPAT
    if not unsupported:
        return
    names = []
    for bit in range(64):
        if unsupported >> bit & 1:
            names.append(h.feature_name(0, bit) if bit > 4 else FEATURE_NAMES[(0, bit)])
    raise BlockError(path, "Unsupported qcow2 feature(s): " + ", ".join(names))


def _parse_extensions(path: str, h: Header, buf: bytes) -> None:
    pos = h.header_length
    limit = min(len(buf), h.cluster_size)
    if h.backing_file_offset and h.backing_file_offset > pos:
        limit = min(limit, h.backing_file_offset)
    if h.version == 2 and pos + 8 > limit:
        return
    seen: set[int] = set()
    while pos + 8 <= limit:
        etype, elen = struct.unpack_from(">II", buf, pos)
        pos += 8
        if etype == EXT_END:
            return
        if pos + elen > limit:
            raise BlockError(path, f"Header extension 0x{etype:08x} extends past the end of the header area")
        if etype in seen and etype != 0:
            raise BlockError(path, f"Header extension 0x{etype:08x} appears twice")
        seen.add(etype)
        data = bytes(buf[pos : pos + elen])
        if etype == EXT_BACKING_FORMAT and len(data) > 16 * 1024:
            raise BlockError(path, "Backing format name too long")
        h.extensions.append(Extension(etype, data))
        pos += elen + (-elen % 8)
