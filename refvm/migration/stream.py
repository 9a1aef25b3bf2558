"""QEMU's migration stream as a writer and a reader (the framing of migration/savevm.c, version 3).

Layout: be32 magic "QEVM", be32 version 3, a configuration record (0x07, be32 length, machine type), then
section records, then EOF (0x00), then the vmdesc record (0x06, be32 length, JSON describing every device
section).  A section start/full record is type byte, be32 section id, idstr, be32 instance id, be32 version id;
part/end records carry only the section id.  Each record's payload is followed by a footer (0x7e, be32 section id).

The "ram" section's payload is self-delimiting (ram.py).  A device section's payload is not: QEMU's reader knows
each device's field layout.  This reader does not know QEMU's devices, so it finds the end of an opaque payload by
the footer that repeats the section id and is followed by a well-formed record header.  refvm's own device
payloads are decoded afterwards by refvm/migration/state.py.
"""
from __future__ import annotations

import io
import json
import mmap
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from refvm.migration.ram import (
    RamDecoder,
    RamImage,
    encode_ram_pages,
    encode_ram_start,
    encode_zero_run,
)
from refvm.migration.wire import (
    MAGIC,
    SECTION_COMMAND,
    SECTION_CONFIGURATION,
    SECTION_END,
    SECTION_EOF,
    SECTION_FOOTER,
    SECTION_FULL,
    SECTION_NAMES,
    SECTION_PART,
    SECTION_START,
    SECTION_SUBSECTION,
    SECTION_VMDESCRIPTION,
    VERSION,
    Cursor,
    StreamError,
    be32,
    pack_idstr,
)

RAM_IDSTR = "ram"
RAM_VERSION = 4  # QEMU 7.2's ram section version


@dataclass
class Section:
    """One section record as read: kind is start, part, end or full; payload is empty for "ram" records."""

    kind: str
    section_id: int
    idstr: str
    instance_id: int
    version_id: int
    payload: bytes = b""


@dataclass
class ParsedStream:
    """Everything the reader found in a stream."""

    machine_type: str
    sections: list[Section] = field(default_factory=list)
    ram: RamImage = field(default_factory=RamImage)
    vmdesc: dict[str, Any] | None = None

    def devices(self) -> list[Section]:
        """The full (non-iterative) device sections, in stream order."""
        return [s for s in self.sections if s.kind == "full"]


class StreamWriter:
    """Writes a stream record by record, so pre-copy can interleave RAM parts with its own pacing.

    Section ids are given out in order of the first record of each (idstr, instance) as QEMU does at
    registration; the vmdesc records the device descriptions in the order the full sections were written.
    """

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.bytes_written = 0
        self._ids: dict[tuple[str, int], int] = {}
        self.vmdesc_devices: list[dict[str, Any]] = []

    def _put(self, data: bytes) -> None:
        self.out.write(data)
        self.bytes_written += len(data)

    def section_id(self, idstr: str, instance_id: int = 0) -> int:
        """The id of (idstr, instance), allocated on first use."""
        return self._ids.setdefault((idstr, instance_id), len(self._ids))

    def header(self, machine_type: str) -> None:
        """Magic, version and the configuration record naming the machine type."""
        name = machine_type.encode("ascii")
        self._put(be32(MAGIC) + be32(VERSION) + bytes([SECTION_CONFIGURATION]) + be32(len(name)) + name)

    def _record(self, kind: int, idstr: str, instance_id: int, version_id: int, payload: bytes) -> None:
        sid = self.section_id(idstr, instance_id)
        head = bytes([kind]) + be32(sid)
        if kind in (SECTION_START, SECTION_FULL):
            head += pack_idstr(idstr) + be32(instance_id) + be32(version_id)
        self._put(head)
        self._put(payload)  # not concatenated: a RAM part's payload is a MiB, and every copy of it is downtime
        self._put(bytes([SECTION_FOOTER]) + be32(sid))

    def ram_start(self, blocks: dict[str, int]) -> None:
        """The "ram" section start: total size and the block list."""
        self._record(SECTION_START, RAM_IDSTR, 0, RAM_VERSION, encode_ram_start(blocks))

    def ram_part(self, pages: list[tuple[str, int, bytes]], last: bool = False) -> None:
        """One batch of pages; `last` makes it the section end sent at switchover."""
        self._record(SECTION_END if last else SECTION_PART, RAM_IDSTR, 0, RAM_VERSION, encode_ram_pages(pages))

    def ram_gather_part(self, items: list[bytes | memoryview], nbytes: int, last: bool = False) -> None:
        """One part (``last``: the section end) whose payload is ``items``, ``nbytes`` in all (ram_parts.py):
        handed on as one gather list where the output takes one (no copy of the pages here), else joined."""
        sid = self.section_id(RAM_IDSTR, 0)
        items.insert(0, bytes([SECTION_END if last else SECTION_PART]) + be32(sid))
        items.append(bytes([SECTION_FOOTER]) + be32(sid))
        gather = getattr(self.out, "write_gather", None)
        if gather is not None:
            gather(items)
        else:
            self.out.write(b"".join(items))
        self.bytes_written += nbytes + 10

    def ram_zero_run(self, block: str, offset: int, count: int) -> None:
        """One part of ``count`` adjacent zero pages (the same records ram_part writes for them)."""
        self._record(SECTION_PART, RAM_IDSTR, 0, RAM_VERSION, encode_zero_run(block, offset, count))

    def device(self, idstr: str, instance_id: int, version_id: int, payload: bytes,
               description: dict[str, Any] | None = None) -> None:
        """A full device section; `description` (name, version, fields) goes into the vmdesc."""
        self._record(SECTION_FULL, idstr, instance_id, version_id, payload)
        desc = {"name": idstr, "instance_id": instance_id, "vmsd_name": idstr, "version": version_id,
                "fields": []}
        desc.update(description or {})
        self.vmdesc_devices.append(desc)

    def devices(self, sections: list[tuple[str, int, int, bytes, dict[str, Any] | None]]) -> None:
        """Full device sections (idstr, instance, version, payload, description) as :meth:`device` writes them,
        joined into one write: at switchover each write waits its turn behind the last RAM parts."""
        out, self.out = self.out, io.BytesIO()
        try:
            for section in sections:
                self.device(*section)
            joined = self.out.getvalue()  # type: ignore[attr-defined]
        finally:
            self.out = out
        self.bytes_written -= len(joined)
        self._put(joined)

    def finish(self, page_size: int = 4096) -> None:
        """EOF, then the vmdesc JSON record."""
        desc = json.dumps({"page_size": page_size, "devices": self.vmdesc_devices}, separators=(",", ":"))
        raw = desc.encode("ascii")
        self._put(bytes([SECTION_EOF, SECTION_VMDESCRIPTION]) + be32(len(raw)) + raw)
        self.out.flush()


class StreamReader:
    """Parses a whole stream held in memory; raises StreamError naming the section and field on bad input."""

    def __init__(self, data: bytes | memoryview) -> None:
        self.cur = Cursor(data)
        self.known: dict[int, tuple[str, int, int]] = {}  # section id -> (idstr, instance, version)

    def parse(self) -> ParsedStream:
        cur = self.cur
        cur.expect(4, MAGIC, "magic", "not a QEVM stream")
        version = cur.be32("version")
        if version != VERSION:
            raise cur.fail("version", f"unsupported stream version {version}")
        cur.where = "configuration"
        cur.expect(1, SECTION_CONFIGURATION, "section type", "expected the configuration section, got {got:#x}")
        name_len = cur.be32("machine type length")
        if name_len > 255:
            raise cur.fail("machine type length", f"{name_len} too long")
        result = ParsedStream(machine_type=cur.take(name_len, "machine type").decode("ascii", "replace"))
        if not cur.at_end() and cur.data[cur.pos] == SECTION_SUBSECTION:
            raise cur.fail("configuration subsection", "not supported")
        ram = RamDecoder(result.ram)
        while True:
            cur.where = "stream"
            kind = cur.u8("section type")
            if kind == SECTION_EOF:
                break
            if kind not in SECTION_NAMES:
                cur.pos -= 1
                what = "command sections (postcopy/colo)" if kind == SECTION_COMMAND else f"type {kind:#x}"
                raise cur.fail("section type", f"unsupported {what}")
            result.sections.append(self._section(kind, ram))
        cur.where = "vmdesc"
        if not cur.at_end():
            result.vmdesc = self._vmdesc()
        if not cur.at_end():
            raise cur.fail("trailer", f"{len(cur.data) - cur.pos} unexpected bytes after the vmdesc")
        return result

    def _section(self, kind: int, ram: RamDecoder) -> Section:
        cur = self.cur
        sid = cur.be32("section id")
        if kind in (SECTION_START, SECTION_FULL):
            cur.where = f"section id {sid}"
            idstr = cur.idstr("idstr")
            instance, version = cur.be32("instance id"), cur.be32("version id")
            self.known[sid] = (idstr, instance, version)
        elif sid not in self.known:
            cur.pos -= 4
            raise cur.fail("section id", f"{sid} was never started")
        idstr, instance, version = self.known[sid]
        cur.where = f"section '{idstr}' (id {sid})"
        sec = Section(SECTION_NAMES[kind], sid, idstr, instance, version)
        if idstr == RAM_IDSTR:
            ram.decode(cur)
        elif kind in (SECTION_PART, SECTION_END):
            raise cur.fail("section type", f"{sec.kind} record for a non-iterative section")
        else:
            sec.payload = cur.take(self._find_footer(sid) - cur.pos, "payload")
        self._footer(sid)
        return sec

    def _footer(self, sid: int) -> None:
        cur = self.cur
        cur.expect(1, SECTION_FOOTER, "section footer", "missing (got {got:#x})")
        cur.expect(4, sid, "section footer id", f"{{got}} does not match section id {sid}")

    def _find_footer(self, sid: int) -> int:
        """Offset of the footer ending an opaque payload: "~" + id, then a well-formed next record."""
        data, mark = self.cur.data.obj, bytes([SECTION_FOOTER]) + be32(sid)
        assert isinstance(data, (bytes, mmap.mmap))  # what read_stream passes: both have find()
        pos, end = self.cur.pos, len(self.cur.data)  # a view of an mmap may end before it
        while (pos := data.find(mark, pos, end)) >= 0:
            if self._plausible_record(pos + 5):
                return pos
            pos += 1
        raise self.cur.fail("section footer", "no footer with this section id before the end (truncated?)")

    def _plausible_record(self, pos: int) -> bool:
        """Whether a record header (or EOF and vmdesc) starts at `pos`; checks bounds, names and known ids."""
        data = self.cur.data
        if pos >= len(data):
            return False
        kind = data[pos]
        if kind == SECTION_EOF:
            return pos + 1 == len(data) or data[pos + 1] == SECTION_VMDESCRIPTION
        if kind not in SECTION_NAMES or pos + 5 > len(data):
            return False
        sid = int.from_bytes(data[pos + 1:pos + 5], "big")
        if kind in (SECTION_PART, SECTION_END):
            return sid in self.known
        probe = Cursor(bytes(data[pos + 5:pos + 5 + 1 + 255 + 8]))
        try:
            probe.idstr("idstr")
            probe.be32("instance id")
            probe.be32("version id")
        except StreamError:
            return False
        return True

    def _vmdesc(self) -> dict[str, Any]:
        cur = self.cur
        cur.expect(1, SECTION_VMDESCRIPTION, "section type", "expected the vmdesc record after EOF, got {got:#x}")
        raw = cur.take(cur.be32("vmdesc length"), "vmdesc json")
        try:
            desc = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise cur.fail("vmdesc json", f"not JSON: {exc}") from None
        if not isinstance(desc, dict) or not isinstance(desc.get("devices"), list):
            raise cur.fail("vmdesc json", "no 'devices' list")
        return desc


def read_stream(data: bytes | memoryview) -> ParsedStream:
    """Parse a complete stream (see module docstring); StreamError on anything malformed.  A view of an mmap
    (channel.read_all: the buffer the destination read into) is parsed in place; anything else as bytes."""
    if isinstance(data, memoryview) and isinstance(data.obj, mmap.mmap) and data.contiguous and data.format == "B":
        return StreamReader(data).parse()
    return StreamReader(bytes(data)).parse()
