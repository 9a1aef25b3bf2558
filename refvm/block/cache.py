"""QEMU's five ``-drive cache=`` modes and the policy wrapper that makes a block driver obey one.

A cache mode is three independent switches, exactly as QEMU 7.2 splits it (``cache.writeback``,
``cache.direct``, ``cache.no-flush``; observed table in DESIGN.md §3):

=============  =========  ======  ========  ====================================================
mode           writeback  direct  no-flush  meaning
=============  =========  ======  ========  ====================================================
writeback      on         off     off       host page cache; the guest sees a volatile cache (WCE 1)
none           on         on      off       O_DIRECT; the guest still sees a volatile cache (WCE 1)
writethrough   off        off     off       every write is stable before it completes (WCE 0)
directsync     off        on      off       O_DIRECT and write-through (WCE 0)
unsafe         on         off     on        guest flushes never reach the disk (WCE 1)
=============  =========  ======  ========  ====================================================

``writeback`` is only the *initial* guest-visible write cache: like QEMU's BlockBackend
``enable_write_cache`` it is live state the guest may toggle (virtio-blk CONFIG_WCE), which is why it
lives on the :class:`~refvm.block.drive.Drive` and not in the open flags.

Write-through is implemented as QEMU does it: the data is written normally and then ``fdatasync`` is
called before the request completes (QEMU emulates FUA that way because file-posix offers no FUA).
We deliberately do *not* open with O_DSYNC: (1) the guest can switch write-through on and off at run
time, which O_DSYNC would turn into re-opening the image; (2) QEMU's fdinfo shows no O_DSYNC, and the
conformance suite compares open flags and the pwrite -> fdatasync syscall order with QEMU's.

``no-flush`` (``unsafe``) makes every flush a no-op -- guest FLUSH requests *and* the write-through
flush after a write when the guest cleared WCE -- because QEMU's ``bdrv_co_flush`` returns before any
sync syscall when BDRV_O_NO_FLUSH is set, whoever asked for the flush. A qcow2 driver still writes its
cached L1/L2 entries out at such a flush (``writeback``), with its ordering syncs skipped, so the file
holds the metadata as QEMU's would after its metadata cache write-back.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from refvm.block.driver import BlockDriver
from refvm.block.vectored import read_into, write_from

__all__ = ["CacheMode", "CACHE_MODES", "parse_cache_options", "CachePolicyBackend"]


@dataclass(frozen=True)
class CacheMode:
    """The three switches QEMU derives from ``cache=`` (and ``cache.*`` overrides)."""

    writeback: bool
    direct: bool
    no_flush: bool

    def qmp(self, writeback: bool | None = None) -> dict[str, bool]:
        """``query-block``'s ``cache`` object; ``writeback`` is the live WCE when given."""
        wb = self.writeback if writeback is None else writeback
        return {"writeback": wb, "direct": self.direct, "no-flush": self.no_flush}


#: QEMU 7.2's ``bdrv_parse_cache_mode`` table.
CACHE_MODES: dict[str, CacheMode] = {
    "writeback": CacheMode(writeback=True, direct=False, no_flush=False),
    "none": CacheMode(writeback=True, direct=True, no_flush=False),
    "off": CacheMode(writeback=True, direct=True, no_flush=False),  # QEMU's old alias of "none"
    "writethrough": CacheMode(writeback=False, direct=False, no_flush=False),
    "directsync": CacheMode(writeback=False, direct=True, no_flush=False),
    "unsafe": CacheMode(writeback=True, direct=False, no_flush=True),
}

_BOOL = {"on": True, "yes": True, "true": True, "off": False, "no": False, "false": False}


def _parse_bool(name: str, value: str) -> bool:
    try:
        return _BOOL[value]
    except KeyError:
        raise ValueError(f"Parameter '{name}' expects 'on' or 'off'") from None


def parse_cache_options(props: Mapping[str, str]) -> CacheMode:
    """The cache mode of a ``-drive``: ``cache=`` gives defaults, ``cache.*`` keys override them.

    QEMU only sets ``cache.writeback/direct/no-flush`` from ``cache=`` where the user did not give
    them, so ``cache=writeback,cache.direct=on`` is legal and means O_DIRECT with WCE on.
    Unknown modes are QEMU's one-line error ``invalid cache option``.
    """
    name = props.get("cache", "writeback")
    base = CACHE_MODES.get(name)
    if base is None:
        raise ValueError("invalid cache option")
    wb, direct, no_flush = base.writeback, base.direct, base.no_flush
    if "cache.writeback" in props:
        wb = _parse_bool("cache.writeback", props["cache.writeback"])
    if "cache.direct" in props:
        direct = _parse_bool("cache.direct", props["cache.direct"])
    if "cache.no-flush" in props:
        no_flush = _parse_bool("cache.no-flush", props["cache.no-flush"])
    return CacheMode(writeback=wb, direct=direct, no_flush=no_flush)


class CachePolicyBackend:
    """A :class:`BlockDriver` seen through a cache mode, offering the :class:`refvm.block.BlockBackend` API.

    The driver was already opened with O_DIRECT when the mode says ``direct`` (that is an open flag);
    what is left for run time is flush suppression (``no_flush``). Counters (``flushes_requested``,
    ``syncs``) let tests and ``query-blockstats``-style reporting see what reached the disk.
    """

    def __init__(self, driver: BlockDriver, mode: CacheMode) -> None:
        self.driver = driver
        self.mode = mode
        self.readonly = bool(driver.readonly)
        self.flushes_requested = 0
        self.syncs = 0
        # reads and writes pass through the policy unchanged: bind the driver's vectored path once
        if getattr(driver, "preadv_into", None) is not None:
            self.preadv_into = driver.preadv_into  # type: ignore[method-assign]
        if getattr(driver, "pwritev_from", None) is not None:
            self.pwritev_from = driver.pwritev_from  # type: ignore[method-assign]
        self._count_lock = threading.Lock()
        set_unsafe = getattr(driver, "set_cache_unsafe", None)
        if set_unsafe is not None and not self.readonly:
            set_unsafe(mode.no_flush)  # qcow2: its metadata write-back skips its ordering syncs too

    def length(self) -> int:
        return self.driver.length()

    def pread(self, offset: int, length: int) -> bytes:
        return self.driver.read(offset, length)

    def pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        self.driver.write(offset, data)

    def preadv_into(self, offset: int, bufs: Sequence[memoryview]) -> None:
        """Read into ``bufs`` (guest RAM views): the driver's vectored path, else one copy."""
        fn = getattr(self.driver, "preadv_into", None)
        if fn is not None:
            fn(offset, bufs)
        else:
            read_into(self, offset, bufs)

    def pwritev_from(self, offset: int, bufs: Sequence[memoryview]) -> None:
        """Write ``bufs`` (guest RAM views): the driver's vectored path, else one join."""
        fn = getattr(self.driver, "pwritev_from", None)
        if fn is not None:
            fn(offset, bufs)
        else:
            write_from(self, offset, bufs)

    def vectored_file(self) -> Any:
        """The driver's (raw only; see :meth:`refvm.block.raw.RawFile.vectored_file`): reads and writes pass
        through this policy unchanged, and flushes are not on that path."""
        fn = getattr(self.driver, "vectored_file", None)
        return fn() if fn is not None else None

    def flush(self) -> None:
        """Make completed writes stable -- unless the mode is ``no-flush`` (then no syscall at all)."""
        with self._count_lock:
            self.flushes_requested += 1
        if self.readonly:
            return
        if self.mode.no_flush:
            writeback = getattr(self.driver, "writeback", None)
            if writeback is not None:
                writeback()  # qcow2: cached metadata still reaches the file (no sync: set_cache_unsafe)
            return
        self.driver.flush()
        with self._count_lock:
            self.syncs += 1

    def discard(self, offset: int, length: int) -> None:
        self.driver.discard(offset, length)

    def write_zeroes(self, offset: int, length: int, *, may_unmap: bool = False) -> None:
        self.driver.write_zeroes(offset, length, may_unmap)

    def info(self) -> dict[str, Any]:
        return self.driver.info()

    def close(self) -> None:
        self.driver.close()
