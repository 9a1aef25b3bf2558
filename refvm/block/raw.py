"""A raw image file (or block device) as a block backend.

Reads past the end of the file return zeroes, like QEMU's raw driver on a file that is shorter than
its declared size; writes never grow the file beyond :meth:`RawFile.length` (the size seen at open).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import mmap
import os
import stat

from refvm.block.vectored import IOV_MAX, Buffers, preadv_full, pwritev_full, read_into, write_from

__all__ = ["RawFile"]

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_FALLOC_FL_ZERO_RANGE = 0x10
_BLKGETSIZE64 = 0x80081272
_ZERO_CHUNK = 1 << 20


_libc: ctypes.CDLL | None = None


def _fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    res = _libc.fallocate(ctypes.c_int(fd), ctypes.c_int(mode), ctypes.c_long(offset), ctypes.c_long(length))
    if res != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class RawFile:
    """``path`` opened read-write (or read-only); ``direct`` adds O_DIRECT (cache=none/directsync)."""

    def __init__(self, path: str, readonly: bool = False, direct: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        self.direct = direct
        flags = (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC
        if direct:
            flags |= os.O_DIRECT
        self.fd = os.open(path, flags)
        st = os.fstat(self.fd)
        self._is_blockdev = stat.S_ISBLK(st.st_mode)
        self._size = self._query_size(st)
        self.closed = False

    def _query_size(self, st: os.stat_result) -> int:
        if self._is_blockdev:
            buf = fcntl.ioctl(self.fd, _BLKGETSIZE64, b"\0" * 8)
            return int.from_bytes(buf, "little")
        return st.st_size

    def length(self) -> int:
        return self._size

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self._size:
            raise OSError(errno.EINVAL, f"range {offset}+{length} beyond the {self._size}-byte image")

    def _aligned(self, length: int) -> mmap.mmap:
        """A page-aligned bounce buffer (O_DIRECT wants aligned memory, offsets and lengths)."""
        return mmap.mmap(-1, max(mmap.PAGESIZE, -(-length // mmap.PAGESIZE) * mmap.PAGESIZE))

    def pread(self, offset: int, length: int) -> bytes:
        self._check(offset, length)
        if self.direct and length:
            with self._aligned(length) as buf:
                n = os.preadv(self.fd, [buf], offset)
                return bytes(buf[: min(n, length)]).ljust(length, b"\0")
        out = bytearray()
        while len(out) < length:
            chunk = os.pread(self.fd, length - len(out), offset + len(out))
            if not chunk:  # sparse tail / short file: zeroes
                out += bytes(length - len(out))
                break
            out += chunk
        return bytes(out)

    def pwrite(self, offset: int, data: bytes | memoryview) -> None:
        if self.readonly:
            raise OSError(errno.EROFS, "read-only image")
        view = memoryview(data).cast("B")
        self._check(offset, view.nbytes)
        if self.direct and view.nbytes:
            with self._aligned(view.nbytes) as buf:
                buf[: view.nbytes] = view
                if os.pwritev(self.fd, [memoryview(buf)[: view.nbytes]], offset) != view.nbytes:
                    raise OSError(errno.EIO, "short O_DIRECT write")
            return
        done = 0
        while done < view.nbytes:
            done += os.pwrite(self.fd, view[done:], offset + done)

    def preadv_into(self, offset: int, bufs: Buffers) -> None:
        """Read straight into ``bufs`` (guest RAM views): one ``preadv``, no copy (O_DIRECT: a bounce buffer)."""
        total = sum(map(len, bufs))
        self._check(offset, total)
        if self.direct:
            read_into(self, offset, bufs)
        elif len(bufs) > IOV_MAX or os.preadv(self.fd, bufs, offset) != total:
            preadv_full(self.fd, bufs, offset)  # short (EOF) or too many iovecs: the careful loop, from the start

    def pwritev_from(self, offset: int, bufs: Buffers) -> None:
        """Write ``bufs`` (guest RAM views) with one ``pwritev``, no copy (O_DIRECT: a bounce buffer)."""
        if self.readonly:
            raise OSError(errno.EROFS, "read-only image")
        total = sum(map(len, bufs))
        self._check(offset, total)
        if self.direct:
            write_from(self, offset, bufs)
        elif len(bufs) > IOV_MAX or os.pwritev(self.fd, bufs, offset) != total:
            pwritev_full(self.fd, bufs, offset)  # short write: rewrite it all (same bytes, same place)

    def vectored_file(self) -> RawFile | None:
        """This file, if one plain ``preadv``/``pwritev`` on :attr:`fd` at the guest offset does what
        :meth:`preadv_into`/:meth:`pwritev_from` do for a full-length transfer (None under O_DIRECT, which
        bounces through aligned buffers). Compiled fast paths use it, and test :attr:`closed` before each use;
        a short transfer stays theirs to redo through the methods here."""
        return None if self.direct else self

    def flush(self) -> None:
        os.fdatasync(self.fd)

    def discard(self, offset: int, length: int) -> None:
        if self.readonly:
            raise OSError(errno.EROFS, "read-only image")
        self._check(offset, length)
        if length == 0 or self._is_blockdev:
            return  # a hint: block devices would need BLKDISCARD; skipping it is allowed
        try:
            _fallocate(self.fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS):
                raise

    def write_zeroes(self, offset: int, length: int, *, may_unmap: bool = False) -> None:
        if self.readonly:
            raise OSError(errno.EROFS, "read-only image")
        self._check(offset, length)
        if length == 0:
            return
        if not self._is_blockdev:
            mode = (_FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE) if may_unmap else _FALLOC_FL_ZERO_RANGE
            try:
                _fallocate(self.fd, mode, offset, length)
                return
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise
        pos = 0
        zero = bytes(min(length, _ZERO_CHUNK))
        while pos < length:
            n = min(length - pos, len(zero))
            self.pwrite(offset + pos, zero[:n])
            pos += n

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.fd)

    def __enter__(self) -> RawFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
