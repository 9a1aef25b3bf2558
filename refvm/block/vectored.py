"""Vectored I/O between an image file and scattered buffers (guest RAM views), with no bounce copy.

A virtio-blk request names its data as a list of guest buffers; the device hands their memoryviews
straight to ``preadv``/``pwritev``. These helpers make the system calls complete: an iovec list is
split at ``IOV_MAX``, short transfers are resumed, and reading past the end of a file yields zeroes
(QEMU's raw driver on a file shorter than its size). Backends without a vectored path (qcow2, a
driver in tests) fall back to :func:`read_into` / :func:`write_from`, one copy each way.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["IOV_MAX", "preadv_full", "pwritev_full", "read_into", "write_from", "Buffers"]

IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024
Buffers = Sequence[memoryview]


def _advance(bufs: list[memoryview], n: int) -> list[memoryview]:
    """``bufs`` without their first ``n`` bytes."""
    i = 0
    while i < len(bufs) and n >= len(bufs[i]):
        n -= len(bufs[i])
        i += 1
    rest = bufs[i:]
    if rest and n:
        rest[0] = rest[0][n:]
    return rest


def _transfer(
    syscall: Callable[[int, list[memoryview], int], int], fd: int, bufs: Buffers, offset: int, reading: bool
) -> bool:
    """Run ``syscall`` (os.preadv / os.pwritev) until every byte of ``bufs`` moved; False if it hit 0
    (a read then zero-fills the rest; a write never touches its source buffers)."""
    todo = list(bufs)
    while todo:
        batch = todo[:IOV_MAX]
        want = sum(len(b) for b in batch)
        n = syscall(fd, batch, offset)
        if n <= 0:
            for b in todo if reading else ():  # a read at the end of the file: the rest reads as zeroes
                b[:] = bytes(len(b))
            return False
        offset += n
        todo = _advance(todo, n) if n < want else todo[len(batch):]
    return True


def preadv_full(fd: int, bufs: Buffers, offset: int) -> None:
    """Fill every buffer from ``fd`` at ``offset``; bytes past the end of the file read as zeroes."""
    _transfer(os.preadv, fd, bufs, offset, True)


def pwritev_full(fd: int, bufs: Buffers, offset: int) -> None:
    """Write every buffer to ``fd`` at ``offset`` (resuming short writes)."""
    if not _transfer(os.pwritev, fd, bufs, offset, False):
        raise OSError(errno.EIO, "pwritev wrote nothing")


def read_into(backend: Any, offset: int, bufs: Buffers) -> None:
    """Fallback: ``backend.pread`` then one copy into ``bufs``."""
    data = memoryview(backend.pread(offset, sum(len(b) for b in bufs)))
    pos = 0
    for b in bufs:
        n = len(b)
        b[:] = data[pos : pos + n]
        pos += n


def write_from(backend: Any, offset: int, bufs: Buffers) -> None:
    """Fallback: ``backend.pwrite`` of the buffers (joined only when there are several)."""
    backend.pwrite(offset, bufs[0] if len(bufs) == 1 else b"".join(bufs))
