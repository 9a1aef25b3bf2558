"""The RAM section's part records as gather lists: page bytes stay in guest RAM until the kernel copies them.

A part is what ram.encode_ram_pages makes of its pages (byte for byte the same records), but built without a
Python loop over page bytes: the record headers of a run of pages come from one struct.pack, each page goes as a
memoryview of guest RAM, and the channel writes the list with writev (outqueue.QueuedWriter.write_gather), so
the only copy of a page is the kernel's into the socket.  Measured on this machine for the 16 MiB a dirtying
guest leaves for switchover: ~6 us a page read, checked and joined before, ~1 us a page as a gather list.

Which pages are zero: a page whose first eight bytes are not all zero is not a zero page, and all first words of
a run come from one strided view (one C call); only pages that start with a zero word are compared whole.

A page sent as a view may change after it was looked at while the guest runs: the dirty log has it, and the
next pass sends it again (the pass at switchover runs with the guest stopped, when nothing changes).
"""
from __future__ import annotations

import struct
from typing import Any

from refvm.migration.ram import encode_zero_run
from refvm.migration.wire import (
    RAM_SAVE_FLAG_CONTINUE,
    RAM_SAVE_FLAG_EOS,
    RAM_SAVE_FLAG_PAGE,
    RAM_SAVE_FLAG_ZERO,
    TARGET_PAGE_SIZE,
    be64,
    pack_idstr,
)

ZERO_PAGE = bytes(TARGET_PAGE_SIZE)
ZERO_FILL = b"\x00"
EOS = be64(RAM_SAVE_FLAG_EOS)
WORDS_PER_PAGE = TARGET_PAGE_SIZE // 8
_zeros = bytes(256 * TARGET_PAGE_SIZE)
PAGE_CONT = RAM_SAVE_FLAG_PAGE | RAM_SAVE_FLAG_CONTINUE
ZERO_CONT = RAM_SAVE_FLAG_ZERO | RAM_SAVE_FLAG_CONTINUE
_PACK = struct.Struct(">Q").pack
_UNPACK = struct.Struct(">Q").unpack
MOST_PAGES = 1024  # the longest run add_run takes in one view (precopy's runs are 256 pages at most)
_SLICES = [slice(i * TARGET_PAGE_SIZE, (i + 1) * TARGET_PAGE_SIZE) for i in range(MOST_PAGES)]


def _unpack(word: bytes | memoryview) -> int:
    return int(_UNPACK(word)[0])


def first_words(view: memoryview) -> list[int]:
    """The first eight bytes of each page of ``view`` (a whole number of pages) as integers, in one C call."""
    return view.cast("Q")[::WORDS_PER_PAGE].tolist()


def zero_flags(view: memoryview, firsts: list[int]) -> list[bool]:
    """For each page of ``view``, whether it is all zero bytes (only pages whose first word is 0 are compared)."""
    if not firsts.count(0):
        return [False] * len(firsts)
    return [first == 0 and bytes(view[i * TARGET_PAGE_SIZE:(i + 1) * TARGET_PAGE_SIZE]) == ZERO_PAGE
            for i, first in enumerate(firsts)]


def is_zero_run(view: memoryview, firsts: list[int]) -> bool:
    """Whether every byte of ``view`` is zero: its pages' first words, then one memcmp."""
    if firsts.count(0) != len(firsts):
        return False
    data = bytes(view)
    global _zeros
    if len(_zeros) < len(data):
        _zeros = bytes(len(data))
    return _zeros.startswith(data)  # a memcmp against zeroes kept from call to call


class RamParts:
    """Collects pages of one RAM block into part records of at most ``most`` pages and hands each full one to
    ``writer`` (a stream.StreamWriter) as a gather list; counts zero and normal pages into ``job``."""

    def __init__(self, writer: Any, block: str, job: Any, most: int,
                 held: list[tuple[list[bytes | memoryview], int]] | None = None) -> None:
        """With ``held``, finished parts are appended to it as (items, payload bytes) instead of being sent (see
        :meth:`send_held`), and :attr:`zero_offsets` lists the block offsets of the pages sent as ZERO records."""
        self.writer, self.job, self.most, self.block, self.held = writer, job, most, block, held
        self.zero_offsets: list[int] = []
        self.idstr = pack_idstr(block)
        self.items: list[bytes | memoryview] = []
        self.pages = 0  # pages in the part being built
        self.bytes = 0  # its payload bytes so far

    def zero_run(self, offset: int, count: int) -> None:
        """``count`` adjacent zero pages from ``offset``, as a part of their own (one pack for all of them)."""
        self.flush()
        self.job.duplicate += count
        if self.held is None:
            self.writer.ram_zero_run(self.block, offset, count)
            return
        payload = encode_zero_run(self.block, offset, count)
        self.held.append(([payload], len(payload)))
        self.zero_offsets.extend(range(offset, offset + count * TARGET_PAGE_SIZE, TARGET_PAGE_SIZE))

    def add_run(self, offset: int, view: memoryview) -> None:
        """Pages of ``view`` (adjacent, a whole number of them) from block offset ``offset``: a run of zero pages
        as one zero part, any other as records in the parts, sending every part that fills up."""
        count = len(view) // TARGET_PAGE_SIZE
        if count > MOST_PAGES:
            for start in range(0, count, MOST_PAGES):
                chunk = view[start * TARGET_PAGE_SIZE:(start + MOST_PAGES) * TARGET_PAGE_SIZE]
                self.add_run(offset + start * TARGET_PAGE_SIZE, chunk)
            return
        firsts = first_words(view)
        if is_zero_run(view, firsts):
            self.zero_run(offset, count)
            return
        zeros = zero_flags(view, firsts)
        done = 0
        while done < count:
            take = min(count - done, self.most - self.pages)
            self._add(offset + done * TARGET_PAGE_SIZE, view, done, take, zeros)
            done += take
            if self.pages == self.most:
                self.flush()

    def _add(self, offset: int, view: memoryview, first: int, count: int, zeros: list[bool]) -> None:
        """``count`` pages from page ``first`` of ``view``: headers and views made by map() over cached slices
        (C loops: a Python statement per page cost more than the kernel's copy of the page)."""
        flags = zeros[first:first + count]
        heads = list(map(_PACK, range(offset + PAGE_CONT, offset + count * TARGET_PAGE_SIZE, TARGET_PAGE_SIZE)))
        pages: list[bytes | memoryview] = list(map(view.__getitem__, _SLICES[first:first + count]))
        normal = count
        if any(flags):
            for i, z in enumerate(flags):
                if z:
                    heads[i] = _PACK(offset + i * TARGET_PAGE_SIZE + ZERO_CONT)
                    pages[i] = ZERO_FILL
                    normal -= 1
                    if self.held is not None:
                        self.zero_offsets.append(offset + i * TARGET_PAGE_SIZE)
        records: list[bytes | memoryview] = [b""] * (2 * count)
        records[0::2] = heads
        records[1::2] = pages
        if not self.pages:  # a part's first record names its block
            records[0] = _PACK(_unpack(records[0]) & ~RAM_SAVE_FLAG_CONTINUE)
            records.insert(1, self.idstr)
            self.bytes += len(self.idstr)
        self.items += records
        self.bytes += 8 * count + normal * TARGET_PAGE_SIZE + (count - normal)
        self.pages += count
        self.job.normal += normal
        self.job.duplicate += count - normal

    def flush(self, last: bool = False) -> None:
        """Send the part being built (with ``last``: as the section end, even when it holds no page)."""
        if not self.pages and not last:
            return
        self.items.append(EOS)
        if self.held is not None and not last:
            self.held.append((self.items, self.bytes + len(EOS)))
        else:
            self.writer.ram_gather_part(self.items, self.bytes + len(EOS), last=last)
        self.items, self.pages, self.bytes = [], 0, 0


def send_held(writer: Any, held: list[tuple[list[bytes | memoryview], int]]) -> None:
    """Send parts a RamParts built with ``held`` (each as a part record; the page bytes are read now)."""
    for items, nbytes in held:
        writer.ram_gather_part(items, nbytes)
