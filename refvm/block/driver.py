"""The block-driver interface shared by the image formats, and the format probe that picks one.

:class:`BlockDriver` is what an image format offers to the rest of refvm (device models, ``refvm-img``).
It is a superset of :class:`refvm.block.BlockBackend` — ``pread``/``pwrite``/``length()`` keep working — so a
device model can take either. :func:`open_image` probes the format the way QEMU does (the qcow2 magic,
otherwise raw) and wraps the raw-file backend, so callers never care which driver they got.

Errors a user can act on are :class:`BlockError`; the message always names the file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from refvm.block.raw import RawFile

__all__ = ["BlockDriver", "BlockError", "RawDriver", "open_image", "probe_format", "QCOW2_MAGIC"]

QCOW2_MAGIC = b"QFI\xfb"


class BlockError(Exception):
    """A problem with an image that the user can act on: the message names the file and the problem."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


@runtime_checkable
class BlockDriver(Protocol):
    """Byte-addressed access to a virtual disk, independent of the image format."""

    path: str
    readonly: bool
    format_name: str

    def length(self) -> int:
        """Virtual disk size in bytes (what the guest sees)."""
        ...

    def read(self, offset: int, length: int) -> bytes: ...

    def readv(self, offset: int, lengths: Sequence[int]) -> list[bytes]:
        """Consecutive reads starting at ``offset`` (one buffer per length)."""
        ...

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None: ...

    def writev(self, offset: int, buffers: Sequence[bytes | bytearray | memoryview]) -> None:
        """Consecutive writes starting at ``offset``, as one request."""
        ...

    def flush(self) -> None:
        """Make completed writes (data and metadata) stable."""
        ...

    def discard(self, offset: int, length: int) -> None:
        """Deallocate a range; afterwards reads give zeroes or the old data (a hint)."""
        ...

    def write_zeroes(self, offset: int, length: int, unmap: bool = False) -> None:
        """Afterwards the range reads as zeroes; ``unmap`` allows freeing the space."""
        ...

    def truncate(self, length: int) -> None: ...

    def info(self) -> dict[str, Any]:
        """What ``qemu-img info --output=json`` reports, with the same keys."""
        ...

    def close(self) -> None: ...


def probe_format(path: str) -> str:
    """'qcow2' if the file starts with the qcow2 magic, else 'raw' (QEMU's probe for these two formats)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise BlockError(path, f"Could not open: {exc.strerror or exc}") from None
    return "qcow2" if head == QCOW2_MAGIC else "raw"


def _join(offset: int, buffers: Sequence[bytes | bytearray | memoryview]) -> bytes:
    return b"".join(bytes(b) for b in buffers)


class RawDriver:
    """The raw-file backend (:class:`refvm.block.raw.RawFile`) behind the :class:`BlockDriver` interface."""

    format_name = "raw"

    def __init__(self, path: str, readonly: bool = False, direct: bool = False) -> None:
        from refvm.block.raw import RawFile

        self.path = path
        self.readonly = readonly
        try:
            self._f = RawFile(path, readonly=readonly, direct=direct)
        except OSError as exc:
            raise BlockError(path, f"Could not open: {exc.strerror or exc}") from None
        # the hot path calls these per request: bound once, no forwarding layer
        self.preadv_into = self._f.preadv_into  # type: ignore[method-assign]
        self.pwritev_from = self._f.pwritev_from  # type: ignore[method-assign]

    def length(self) -> int:
        return self._f.length()

    def read(self, offset: int, length: int) -> bytes:
        return self._f.pread(offset, length)

    pread = read

    def readv(self, offset: int, lengths: Sequence[int]) -> list[bytes]:
        data = self.read(offset, sum(lengths))
        out, pos = [], 0
        for n in lengths:
            out.append(data[pos : pos + n])
            pos += n
        return out

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        self._f.pwrite(offset, data)

    pwrite = write

    def writev(self, offset: int, buffers: Sequence[bytes | bytearray | memoryview]) -> None:
        self.write(offset, _join(offset, buffers))

    def preadv_into(self, offset: int, bufs: Sequence[memoryview]) -> None:
        self._f.preadv_into(offset, bufs)

    def pwritev_from(self, offset: int, bufs: Sequence[memoryview]) -> None:
        self._f.pwritev_from(offset, bufs)

    def vectored_file(self) -> RawFile | None:
        return self._f.vectored_file()

    def flush(self) -> None:
        self._f.flush()

    def discard(self, offset: int, length: int) -> None:
        self._f.discard(offset, length)

    def write_zeroes(self, offset: int, length: int, unmap: bool = False, *, may_unmap: bool | None = None) -> None:
        self._f.write_zeroes(offset, length, may_unmap=unmap if may_unmap is None else may_unmap)

    def truncate(self, length: int) -> None:
        if self.readonly:
            raise BlockError(self.path, "image is read-only")
        os.ftruncate(self._f.fd, length)
        self._f._size = length  # the backend caches the size seen at open

    def info(self) -> dict[str, Any]:
        return {
            "virtual-size": self.length(),
            "filename": self.path,
            "format": "raw",
            "actual-size": actual_size(self.path),
            "dirty-flag": False,
        }

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> RawDriver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def actual_size(path: str) -> int:
    """Bytes the file occupies on the host (st_blocks), as qemu-img's 'actual-size'."""
    try:
        return os.stat(path).st_blocks * 512
    except OSError:
        return 0


def open_image(
    path: str,
    format: str | None = None,
    readonly: bool = False,
    *,
    direct: bool = False,
    _chain: tuple[str, ...] = (),
) -> BlockDriver:
    """Open ``path`` as ``format`` ('raw', 'qcow2'), probing it when None.

    ``direct`` asks for O_DIRECT (cache=none/directsync). ``_chain`` carries the images above this one in
    a backing chain so that a loop (a -> b -> a) is caught instead of recursing forever.
    """
    if not os.path.exists(path):
        raise BlockError(path, "Could not open: No such file or directory")
    fmt = format or probe_format(path)
    if fmt == "raw":
        return RawDriver(path, readonly=readonly, direct=direct)
    if fmt == "qcow2":
        from refvm.block.qcow2 import Qcow2Image

        return Qcow2Image(path, readonly=readonly, direct=direct, _chain=_chain)
    raise BlockError(path, f"Unknown driver '{fmt}' (supported: raw, qcow2)")
