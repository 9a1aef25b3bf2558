"""The pool backend interface: exactly libvirt's virStorageBackend operations.

Every operation a backend does not implement raises VIR_ERR_NO_SUPPORT, as libvirt's storage driver does when
a backend's function pointer is NULL. refreshPool is the one every backend must have.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from refvm.mgmt import errors

if TYPE_CHECKING:
    from refvm.mgmt.storage.xml import PoolDef, VolDef


def no_support(what: str) -> errors.VirError:
    return errors.VirError(errors.VIR_ERR_NO_SUPPORT, what, domain=errors.VIR_FROM_STORAGE)


class PoolBackend:
    """One pool type. Volume operations take the pool definition and the volume's path."""

    type = ""

    # ---- pools ----
    def find_pool_sources(self, spec: str | None, flags: int) -> str:
        raise no_support(f"pool type '{self.type}' does not support source discovery")

    def check_pool(self, pool: PoolDef) -> bool:
        """Whether the pool is already active (daemon restart)."""
        raise no_support("checkPool")

    def start_pool(self, pool: PoolDef) -> None:
        raise no_support("startPool")

    def build_pool(self, pool: PoolDef, flags: int) -> None:
        raise no_support("storage pool does not support building")

    def refresh_pool(self, pool: PoolDef) -> tuple[int, int, int]:
        """(capacity, allocation, available); volumes are found by the driver's scan."""
        raise NotImplementedError

    def stop_pool(self, pool: PoolDef) -> None:
        raise no_support("stopPool")

    def delete_pool(self, pool: PoolDef, flags: int) -> None:
        raise no_support("pool does not support pool deletion")

    # ---- volumes ----
    def build_vol(self, pool: PoolDef, vol: VolDef, path: str, flags: int) -> None:
        raise no_support("storage pool does not support volume creation")

    def build_vol_from(self, pool: PoolDef, vol: VolDef, path: str, src: str, flags: int) -> None:
        raise no_support("storage pool does not support volume creation from an existing volume")

    def create_vol(self, pool: PoolDef, vol: VolDef) -> str:
        """The path a new volume will have."""
        raise no_support("storage pool does not support volume creation")

    def refresh_vol(self, pool: PoolDef, path: str) -> None:
        raise no_support("refreshVol")

    def delete_vol(self, pool: PoolDef, path: str, flags: int) -> None:
        raise no_support("storage pool does not support vol deletion")

    def resize_vol(self, pool: PoolDef, path: str, capacity: int, flags: int) -> None:
        raise no_support("storage pool does not support changing of volume capacity")

    def upload_vol(self, pool: PoolDef, path: str) -> None:
        raise no_support("storage pool doesn't support volume upload")

    def download_vol(self, pool: PoolDef, path: str) -> None:
        raise no_support("storage pool doesn't support volume download")

    def wipe_vol(self, pool: PoolDef, path: str, algorithm: int, flags: int) -> None:
        raise no_support("storage pool doesn't support volume wiping")


def backend_for(type_: str) -> PoolBackend:
    from refvm.mgmt.storage.dir_fs import DirBackend, FsBackend

    if type_ == "dir":
        return DirBackend()
    if type_ == "fs":
        return FsBackend()
    if type_ == "logical":
        raise no_support("logical pools need device-mapper (/dev/mapper), which this host lacks")
    raise no_support(f"missing backend for pool type {type_}")
