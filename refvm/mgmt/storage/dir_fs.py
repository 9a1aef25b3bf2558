"""The ``dir`` pool (a directory of image files) and ``fs`` (a filesystem on a device or image file, mounted
at the target: mkfs on build, mount on start, umount on stop, blkid for source discovery)."""
from __future__ import annotations

import os
import re
import subprocess

from refvm.block.driver import BlockError, open_image
from refvm.mgmt import errors
from refvm.mgmt.storage.backend import PoolBackend
from refvm.mgmt.storage.files import StorageFile, _sys
from refvm.mgmt.storage.wipe import wipe_file
from refvm.mgmt.storage.xml import PoolDef, VolDef

RESIZE_ALLOCATE = 1
CHUNK = 1 << 20


def _run(argv: list[str]) -> str:
    out = subprocess.run(argv, capture_output=True, text=True)
    if out.returncode:
        raise errors.VirError(errors.VIR_ERR_INTERNAL_ERROR,
                              f"Child process ({' '.join(argv)}) unexpected exit status {out.returncode}: "
                              f"{out.stderr.strip()}", domain=errors.VIR_FROM_STORAGE)
    return out.stdout


class DirBackend(PoolBackend):
    type = "dir"

    def check_pool(self, pool: PoolDef) -> bool:
        return os.path.isdir(pool.target)

    def start_pool(self, pool: PoolDef) -> None:
        if not os.path.isdir(pool.target):
            raise errors.VirError(errors.VIR_ERR_OPERATION_INVALID,
                                  f"cannot open directory '{pool.target}': No such file or directory",
                                  domain=errors.VIR_FROM_STORAGE)

    def build_pool(self, pool: PoolDef, flags: int) -> None:
        try:
            os.makedirs(pool.target, mode=pool.perms.mode if pool.perms.mode is not None else 0o755, exist_ok=True)
        except OSError as exc:
            raise _sys(exc, f"cannot create path '{pool.target}'") from None

    def refresh_pool(self, pool: PoolDef) -> tuple[int, int, int]:
        st = os.statvfs(pool.target)
        capacity = st.f_frsize * st.f_blocks
        available = st.f_frsize * st.f_bavail
        return capacity, capacity - st.f_frsize * st.f_bfree, available

    def stop_pool(self, pool: PoolDef) -> None:
        """Nothing to undo for a directory."""

    def delete_pool(self, pool: PoolDef, flags: int) -> None:
        try:
            os.rmdir(pool.target)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise _sys(exc, f"failed to remove pool '{pool.target}'") from None

    def create_vol(self, pool: PoolDef, vol: VolDef) -> str:
        return os.path.join(pool.target, vol.name)

    def build_vol(self, pool: PoolDef, vol: VolDef, path: str, flags: int) -> None:
        backing = None
        if vol.backing_path:
            if vol.format != "qcow2":
                raise errors.VirError(errors.VIR_ERR_CONFIG_UNSUPPORTED,
                                      "backing storage not supported for raw volumes", domain=errors.VIR_FROM_STORAGE)
            backing = (vol.backing_path, vol.backing_format or StorageFile(vol.backing_path).read_header().format)
        capacity = vol.capacity
        if capacity is None:
            if backing is None:
                raise errors.VirError(errors.VIR_ERR_XML_ERROR, "missing capacity element",
                                      domain=errors.VIR_FROM_STORAGE)
            capacity = StorageFile(backing[0]).read_header().capacity
        f = StorageFile(path)
        f.create(vol.format, capacity, vol.allocation, backing)
        if vol.perms.mode is not None:
            os.chmod(path, vol.perms.mode)
        f.chown(vol.perms.owner, vol.perms.group)

    def build_vol_from(self, pool: PoolDef, vol: VolDef, path: str, src: str, flags: int) -> None:
        """Copy the guest-visible content of ``src`` into a new volume of ``vol.format`` (qcow2 -> raw etc.)."""
        try:
            source = open_image(src, readonly=True)
        except BlockError as exc:
            raise errors.VirError(errors.VIR_ERR_STORAGE_PROBE_FAILED, str(exc), domain=errors.VIR_FROM_STORAGE) \
                from None
        try:
            length = source.length()
            vol.capacity = max(vol.capacity or 0, length)
            vol.backing_path = None
            self.build_vol(pool, vol, path, 0)
            dest = open_image(path, vol.format)
            try:
                for pos in range(0, length, CHUNK):
                    data = source.read(pos, min(CHUNK, length - pos))
                    if data.count(0) != len(data):  # zero chunks stay holes / unallocated clusters
                        dest.write(pos, data)
                dest.flush()
            finally:
                dest.close()
        except BaseException:
            if os.path.exists(path):
                os.unlink(path)
            raise
        finally:
            source.close()

    def refresh_vol(self, pool: PoolDef, path: str) -> None:
        StorageFile(path).read_header()

    def delete_vol(self, pool: PoolDef, path: str, flags: int) -> None:
        StorageFile(path).unlink()

    def resize_vol(self, pool: PoolDef, path: str, capacity: int, flags: int) -> None:
        info = StorageFile(path).read_header()
        try:
            img = open_image(path, info.format)
            try:
                img.truncate(capacity)
            finally:
                img.close()
            if flags & RESIZE_ALLOCATE and info.format == "raw" and capacity > info.capacity:
                fd = os.open(path, os.O_WRONLY)
                try:
                    os.posix_fallocate(fd, info.capacity, capacity - info.capacity)
                finally:
                    os.close(fd)
        except (BlockError, ValueError) as exc:
            raise errors.VirError(errors.VIR_ERR_INTERNAL_ERROR, str(exc), domain=errors.VIR_FROM_STORAGE) from None
        except OSError as exc:
            raise _sys(exc, f"cannot resize '{path}'") from None

    def upload_vol(self, pool: PoolDef, path: str) -> None:
        """Uploads write the file directly (the stream code does the I/O)."""

    def download_vol(self, pool: PoolDef, path: str) -> None:
        """Downloads read the file directly (the stream code does the I/O)."""

    def wipe_vol(self, pool: PoolDef, path: str, algorithm: int, flags: int) -> None:
        info = StorageFile(path).read_header()
        wipe_file(path, info.physical, algorithm)


class FsBackend(DirBackend):
    type = "fs"

    def find_pool_sources(self, spec: str | None, flags: int) -> str:
        devices = re.findall(r"<device\s+path=['\"]([^'\"]+)['\"]", spec or "")
        if not devices:
            devices = [d for d in _run(["blkid", "-o", "device"]).split() if d]
        out = ["<sources>"]
        for dev in devices:
            fstype = subprocess.run(["blkid", "-o", "value", "-s", "TYPE", dev], capture_output=True,
                                    text=True).stdout.strip()
            if fstype:
                out.append(f"  <source>\n    <device path='{dev}'/>\n    <format type='{fstype}'/>\n  </source>")
        out.append("</sources>")
        return "\n".join(out) + "\n"

    def check_pool(self, pool: PoolDef) -> bool:
        return os.path.ismount(pool.target)

    def build_pool(self, pool: PoolDef, flags: int) -> None:
        super().build_pool(pool, flags)
        overwrite, no_overwrite = flags & 8, flags & 4
        if no_overwrite:
            found = subprocess.run(["blkid", "-o", "value", "-s", "TYPE", pool.source_device or ""],
                                   capture_output=True, text=True).stdout.strip()
            if found:
                raise errors.VirError(errors.VIR_ERR_STORAGE_POOL_BUILT,
                                      f"Device '{pool.source_device}' already formatted using '{found}'",
                                      domain=errors.VIR_FROM_STORAGE)
        if overwrite or no_overwrite:
            _run(["mkfs", "-t", pool.source_format or "ext4", "-q", "-F", pool.source_device or ""])

    def start_pool(self, pool: PoolDef) -> None:
        if os.path.ismount(pool.target):
            return
        fmt = pool.source_format if pool.source_format not in (None, "auto") else "auto"
        _run(["mount", "-t", fmt, pool.source_device or "", pool.target])

    def stop_pool(self, pool: PoolDef) -> None:
        if os.path.ismount(pool.target):
            _run(["umount", pool.target])
