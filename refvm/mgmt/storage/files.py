"""The storage *file* backend (libvirt's virStorageFileBackend): one volume file, its format and backing chain.

Formats and backing chains are probed with refvm.block's raw and qcow2 code, not with qemu-img, so refvmd and
refvm read images the same way; ``qemu-img info``/``check`` are what the tests compare against.
"""
from __future__ import annotations

import os
import stat as statmod
from dataclasses import dataclass

from refvm.block.driver import BlockError, open_image, probe_format
from refvm.block.qcow2 import create_qcow2
from refvm.mgmt import errors


def _sys(exc: OSError, what: str) -> errors.VirError:
    return errors.VirError(errors.VIR_ERR_SYSTEM_ERROR, f"{what}: {exc.strerror or exc}",
                           domain=errors.VIR_FROM_STORAGE)


@dataclass
class FileInfo:
    """What readHeader + stat give: format, virtual size, allocation, physical size, backing store."""

    format: str
    capacity: int
    allocation: int
    physical: int
    backing: tuple[str, str] | None
    mode: int
    uid: int
    gid: int
    times: tuple[float, float, float]


class StorageFile:
    """init/deinit, readHeader, getUniqueIdentifier, create, unlink, stat, access and chown for one path."""

    def __init__(self, path: str) -> None:  # init
        self.path = path

    def deinit(self) -> None:
        """Nothing is held open between operations."""

    def unique_identifier(self) -> str:
        """libvirt's key of a file volume is its path."""
        return self.path

    def access(self, mode: int = os.F_OK) -> bool:
        return os.access(self.path, mode)

    def stat(self) -> os.stat_result:
        try:
            return os.stat(self.path)
        except OSError as exc:
            raise _sys(exc, f"cannot stat file '{self.path}'") from None

    def unlink(self) -> None:
        try:
            os.unlink(self.path)
        except OSError as exc:
            raise _sys(exc, f"cannot unlink file '{self.path}'") from None

    def chown(self, uid: int | None, gid: int | None) -> None:
        if (uid is not None and uid >= 0) or (gid is not None and gid >= 0):
            try:
                os.chown(self.path, -1 if uid is None else uid, -1 if gid is None else gid)
            except OSError as exc:
                raise _sys(exc, f"cannot chown '{self.path}'") from None

    def create(self, fmt: str, capacity: int, allocation: int | None, backing: tuple[str, str] | None) -> None:
        """A new raw file (sparse, or preallocated up to ``allocation``) or qcow2 image (optionally backed)."""
        try:
            if fmt == "qcow2":
                create_qcow2(self.path, capacity, backing_file=backing[0] if backing else None,
                             backing_format=backing[1] if backing else None)
                return
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.ftruncate(fd, capacity)
                if allocation:
                    os.posix_fallocate(fd, 0, min(allocation, capacity) or capacity)
            finally:
                os.close(fd)
        except BlockError as exc:
            raise errors.VirError(errors.VIR_ERR_INTERNAL_ERROR, str(exc), domain=errors.VIR_FROM_STORAGE) from None
        except OSError as exc:
            raise _sys(exc, f"cannot create '{self.path}'") from None

    def read_header(self) -> FileInfo:
        """Format, capacity and backing store of the file as refvm.block sees it."""
        st = self.stat()
        fmt, capacity, backing = "raw", st.st_size, None
        if statmod.S_ISREG(st.st_mode):
            try:
                fmt = probe_format(self.path)
                if fmt == "qcow2":
                    img = open_image(self.path, "qcow2", readonly=True)
                    try:
                        capacity = img.length()
                        if img.backing_path:
                            backing = (img.backing_path, img.backing.format_name if img.backing else "raw")
                    finally:
                        img.close()
            except BlockError as exc:
                raise errors.VirError(errors.VIR_ERR_STORAGE_PROBE_FAILED, str(exc),
                                      domain=errors.VIR_FROM_STORAGE) from None
        return FileInfo(fmt, capacity, st.st_blocks * 512, st.st_size, backing, statmod.S_IMODE(st.st_mode),
                        st.st_uid, st.st_gid, (st.st_atime, st.st_mtime, st.st_ctime))
