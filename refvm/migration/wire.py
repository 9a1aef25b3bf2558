"""Byte-level pieces of QEMU's migration stream: the record constants and a bounds-checked cursor.

The numbers are QEMU's wire format (migration/savevm.c, migration/ram.c); they are facts about the format, learned
from reading QEMU, so that QEMU's own scripts/analyze-migration.py can read what refvm writes.  Every read goes
through `Cursor`, which names the section and field in its one-line error, because the stream is untrusted input.
"""
from __future__ import annotations

import struct

MAGIC = 0x5145564D  # "QEVM"
VERSION = 3

SECTION_EOF = 0x00
SECTION_START = 0x01
SECTION_PART = 0x02
SECTION_END = 0x03
SECTION_FULL = 0x04
SECTION_SUBSECTION = 0x05
SECTION_VMDESCRIPTION = 0x06
SECTION_CONFIGURATION = 0x07
SECTION_COMMAND = 0x08
SECTION_FOOTER = 0x7E

SECTION_NAMES = {SECTION_START: "start", SECTION_PART: "part", SECTION_END: "end", SECTION_FULL: "full"}

RAM_SAVE_FLAG_ZERO = 0x02
RAM_SAVE_FLAG_MEM_SIZE = 0x04
RAM_SAVE_FLAG_PAGE = 0x08
RAM_SAVE_FLAG_EOS = 0x10
RAM_SAVE_FLAG_CONTINUE = 0x20
RAM_FLAG_MASK = 0xFFF  # flags live in the low bits of a page-aligned offset

TARGET_PAGE_SIZE = 4096  # x86


class StreamError(ValueError):
    """A malformed, truncated or unsupported stream; the message is one line naming the section and field."""


class Cursor:
    """Reads big-endian fields from an in-memory stream, never past its end.

    `where` is the current section's description (e.g. "section 'ram' (id 2)"), set by the parser so that every
    error names the section as well as the field.
    """

    def __init__(self, data: bytes | memoryview) -> None:
        self.data = memoryview(data)
        self.pos = 0
        self.where = "header"

    def fail(self, field: str, problem: str) -> StreamError:
        """Build the one-line error for `field` of the current section."""
        return StreamError(f"migration stream: {self.where}: field '{field}': {problem} (offset {self.pos})")

    def take(self, n: int, field: str) -> bytes:
        """Return the next `n` bytes or fail naming `field` when the stream ends first."""
        if n < 0 or self.pos + n > len(self.data):
            raise self.fail(field, f"truncated: need {n} bytes, {len(self.data) - self.pos} left")
        out = bytes(self.data[self.pos:self.pos + n])
        self.pos += n
        return out

    def u8(self, field: str) -> int:
        return self.take(1, field)[0]

    def be32(self, field: str) -> int:
        return int(struct.unpack(">I", self.take(4, field))[0])

    def be64(self, field: str) -> int:
        return int(struct.unpack(">Q", self.take(8, field))[0])

    def expect(self, width: int, want: int, field: str, problem: str) -> None:
        """Read a `width`-byte big-endian value that must equal `want`; on mismatch fail at its start."""
        got = int.from_bytes(self.take(width, field), "big")
        if got != want:
            self.pos -= width
            raise self.fail(field, problem.format(got=got))

    def idstr(self, field: str) -> str:
        """A one-byte-length-prefixed ASCII name (section idstr, RAM block id)."""
        n = self.u8(field + " length")
        raw = self.take(n, field)
        if n == 0 or any(b < 0x20 or b > 0x7E for b in raw):
            self.pos -= n
            raise self.fail(field, f"not a printable name: {raw!r}")
        return raw.decode("ascii")

    def at_end(self) -> bool:
        return self.pos >= len(self.data)


def pack_idstr(name: str) -> bytes:
    """Encode a name as QEMU does: one length byte, then the ASCII bytes (at most 255)."""
    raw = name.encode("ascii")
    if not raw or len(raw) > 255:
        raise ValueError(f"name {name!r} must be 1..255 ASCII bytes")
    return bytes([len(raw)]) + raw


def be32(v: int) -> bytes:
    return struct.pack(">I", v)


def be64(v: int) -> bytes:
    return struct.pack(">Q", v)
