"""The payload of QEMU's "ram" section: block list, pages as (offset | RAM_SAVE_FLAG_*), ended by EOS.

A section-start payload opens with the total RAM size flagged MEM_SIZE followed by every block's id and used
length; later parts carry pages.  A page record names its block unless CONTINUE says "same block as the last
record".  A ZERO page carries one fill byte instead of the page.  Every part ends with an EOS record.
"""
from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

from refvm.migration.wire import (
    RAM_FLAG_MASK,
    RAM_SAVE_FLAG_CONTINUE,
    RAM_SAVE_FLAG_EOS,
    RAM_SAVE_FLAG_MEM_SIZE,
    RAM_SAVE_FLAG_PAGE,
    RAM_SAVE_FLAG_ZERO,
    TARGET_PAGE_SIZE,
    Cursor,
    be64,
    pack_idstr,
)

KNOWN_FLAGS = RAM_SAVE_FLAG_ZERO | RAM_SAVE_FLAG_MEM_SIZE | RAM_SAVE_FLAG_PAGE | RAM_SAVE_FLAG_EOS | \
    RAM_SAVE_FLAG_CONTINUE
ZERO_PAGE = bytes(TARGET_PAGE_SIZE)
_BE64 = struct.Struct(">Q")


@dataclass
class RamImage:
    """What the reader collected from all "ram" records: block sizes and the last content of every sent page."""

    blocks: dict[str, int] = field(default_factory=dict)
    pages: dict[str, dict[int, bytes]] = field(default_factory=dict)
    zero_pages: int = 0
    normal_pages: int = 0

    def page(self, block: str, offset: int) -> bytes:
        """The page as the destination would hold it (a page never sent reads as zeroes)."""
        return self.pages.get(block, {}).get(offset, ZERO_PAGE)


def encode_ram_start(blocks: dict[str, int]) -> bytes:
    """The section-start payload: MEM_SIZE with the total, each block's id and length, then EOS."""
    out = [be64(sum(blocks.values()) | RAM_SAVE_FLAG_MEM_SIZE)]
    for name, length in blocks.items():
        out.append(pack_idstr(name) + be64(length))
    out.append(be64(RAM_SAVE_FLAG_EOS))
    return b"".join(out)


def encode_ram_pages(pages: Iterable[tuple[str, int, bytes]]) -> bytes:
    """A part/end payload: each (block, offset, page) as a ZERO record when all zero, else PAGE; then EOS."""
    out: list[bytes] = []
    last: str | None = None
    for block, offset, data in pages:
        if offset % TARGET_PAGE_SIZE or len(data) != TARGET_PAGE_SIZE:
            raise ValueError(f"page {block}@{offset:#x} must be one aligned {TARGET_PAGE_SIZE}-byte page")
        zero = data == ZERO_PAGE  # a memcmp, not a Python loop over 4096 bytes
        flags = RAM_SAVE_FLAG_ZERO if zero else RAM_SAVE_FLAG_PAGE
        if block == last:
            flags |= RAM_SAVE_FLAG_CONTINUE
        out.append(be64(offset | flags))
        if block != last:
            out.append(pack_idstr(block))
        out.append(b"\x00" if zero else bytes(data))
        last = block
    out.append(be64(RAM_SAVE_FLAG_EOS))
    return b"".join(out)


def encode_zero_run(block: str, offset: int, count: int) -> bytes:
    """A part/end payload of ``count`` ZERO records for the adjacent pages from ``offset`` in ``block``, then EOS:
    what encode_ram_pages makes of them, packed in one call instead of page by page (a pass over idle RAM)."""
    first = be64(offset | RAM_SAVE_FLAG_ZERO) + pack_idstr(block) + b"\x00"
    flags = RAM_SAVE_FLAG_ZERO | RAM_SAVE_FLAG_CONTINUE  # offsets are page aligned: | is +
    words = [0] * (2 * (count - 1))  # (be64 offset|flags, fill byte 0) per page after the first
    words[0::2] = range(offset + TARGET_PAGE_SIZE + flags, offset + count * TARGET_PAGE_SIZE + flags, TARGET_PAGE_SIZE)
    return first + struct.pack(">" + "QB" * (count - 1), *words) + be64(RAM_SAVE_FLAG_EOS)


class RamDecoder:
    """Parses "ram" payloads into a RamImage, checking every offset and flag against the announced blocks."""

    def __init__(self, image: RamImage) -> None:
        self.image = image
        self.last_block: str | None = None

    def decode(self, cur: Cursor) -> None:
        """Consume records up to and including EOS."""
        while True:
            word = cur.be64("ram record")
            flags, addr = word & RAM_FLAG_MASK, word & ~RAM_FLAG_MASK
            if flags & ~KNOWN_FLAGS:
                cur.pos -= 8
                raise cur.fail("ram record", f"unsupported RAM_SAVE_FLAG bits {flags & ~KNOWN_FLAGS:#x}")
            if flags & RAM_SAVE_FLAG_MEM_SIZE:
                self._blocks(cur, addr)
            elif flags & (RAM_SAVE_FLAG_ZERO | RAM_SAVE_FLAG_PAGE):
                self._page(cur, addr, flags)
            if flags & RAM_SAVE_FLAG_EOS:
                return

    def _blocks(self, cur: Cursor, total: int) -> None:
        seen = 0
        while seen < total:
            name = cur.idstr("ram block id")
            length = cur.be64("ram block length")
            if length % TARGET_PAGE_SIZE or length == 0 or seen + length > total:
                cur.pos -= 8
                raise cur.fail("ram block length", f"{length:#x} for block {name!r} does not fit total {total:#x}")
            self.image.blocks[name] = length
            seen += length

    def _page(self, cur: Cursor, offset: int, flags: int) -> None:
        if flags & RAM_SAVE_FLAG_CONTINUE:
            if self.last_block is None:
                raise cur.fail("ram record", "CONTINUE with no earlier block")
            block = self.last_block
        else:
            block = cur.idstr("ram block id")
            if block not in self.image.blocks:
                raise cur.fail("ram block id", f"unknown block {block!r}")
        self.last_block = block
        if offset >= self.image.blocks[block]:
            raise cur.fail("ram page offset", f"{offset:#x} beyond block {block!r} of {self.image.blocks[block]:#x}")
        pages = self.image.pages.setdefault(block, {})
        if flags & RAM_SAVE_FLAG_ZERO:
            fill = cur.u8("ram zero fill")
            pages[offset] = ZERO_PAGE if fill == 0 else bytes([fill]) * TARGET_PAGE_SIZE
            self.image.zero_pages += 1
        else:
            pages[offset] = cur.take(TARGET_PAGE_SIZE, "ram page data")
            self.image.normal_pages += 1
