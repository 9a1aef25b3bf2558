"""The host file under a qcow2 image: positioned reads/writes with a tracked size.

Keeps the size in memory so that every offset taken from the image can be checked against it before use,
and so that short reads (past EOF) are explicit instead of silently shorter buffers.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Sequence

from refvm.block.vectored import pwritev_full

__all__ = ["HostFile"]

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_libc: ctypes.CDLL | None = None


class HostFile:
    """An open image file (read-only or read-write, optionally O_DIRECT-free buffered I/O)."""

    def __init__(self, path: str, readonly: bool) -> None:
        self.path = path
        self.readonly = readonly
        self.fd = os.open(path, (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC)
        self.size = os.fstat(self.fd).st_size
        #: cache=unsafe (QEMU's BDRV_O_NO_FLUSH): :meth:`barrier` orders nothing and costs nothing.
        self.no_flush = False

    def pread(self, offset: int, length: int) -> bytes:
        """Exactly ``length`` bytes; the part past the end of the file reads as zeroes."""
        data = os.pread(self.fd, length, offset)
        while len(data) < length:
            more = os.pread(self.fd, length - len(data), offset + len(data))
            if not more:
                return data + bytes(length - len(data))
            data += more
        return data

    def pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        done = 0
        while done < view.nbytes:
            done += os.pwrite(self.fd, view[done:], offset + done)
        self.size = max(self.size, offset + view.nbytes)

    def pwritev(self, offset: int, buffers: Sequence[bytes | bytearray | memoryview]) -> None:
        """All of ``buffers`` back to back at ``offset``: one ``pwritev`` (split at IOV_MAX, short writes resumed)."""
        if len(buffers) == 1:
            self.pwrite(offset, buffers[0])
            return
        views = [memoryview(b).cast("B") for b in buffers]
        pwritev_full(self.fd, views, offset)
        self.size = max(self.size, offset + sum(map(len, views)))

    def punch_hole(self, offset: int, length: int) -> None:
        """Give freed clusters back to the host file system (best effort: a failure only costs space)."""
        global _libc
        try:
            if _libc is None:
                _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            _libc.fallocate(
                ctypes.c_int(self.fd),
                ctypes.c_int(_FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE),
                ctypes.c_long(offset),
                ctypes.c_long(length),
            )
        except OSError:
            pass

    def truncate(self, size: int) -> None:
        os.ftruncate(self.fd, size)
        self.size = size

    def sync(self) -> None:
        os.fdatasync(self.fd)

    def barrier(self) -> None:
        """Everything written so far is durable before anything written after this (metadata ordering).

        A no-op under cache=unsafe, where the user chose speed over surviving a host crash."""
        if not self.no_flush:
            self.sync()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
