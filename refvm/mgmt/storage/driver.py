"""The storage pools of one URI: definitions persisted in the state dir, autostart, lookups, volume locks.

Layout under the URI's config dir: storage/NAME.xml (definition), storage/autostart/NAME; under its run dir:
storage/NAME (the pool is active). Volumes are the files found in the pool's target directory by refresh.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from refvm.mgmt import errors
from refvm.mgmt.storage.backend import PoolBackend, backend_for
from refvm.mgmt.storage.files import FileInfo, StorageFile
from refvm.mgmt.storage.xml import PoolDef, VolDef, check_name, format_volume

RUNNING, INACTIVE = 2, 0
RESIZE_ALLOCATE, RESIZE_DELTA, RESIZE_SHRINK = 1, 2, 4


def _err(code: int, detail: str) -> errors.VirError:
    return errors.VirError(code, detail, domain=errors.VIR_FROM_STORAGE)


@dataclass
class Pool:
    defn: PoolDef
    backend: PoolBackend
    persistent: bool = True
    active: bool = False
    sizes: tuple[int, int, int] = (0, 0, 0)
    volumes: dict[str, str] = field(default_factory=dict)  # name -> path
    busy: dict[str, threading.Lock] = field(default_factory=dict)


class StorageDriver:
    """libvirt's storage driver for one URI."""

    def __init__(self, config: Path, run: Path) -> None:
        self.dir = config / "storage"
        self.run = run / "storage"
        for d in (self.dir, self.dir / "autostart", self.run):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.lock = threading.RLock()
        self.pools: dict[str, Pool] = {}
        #: set by the domain driver: which running domain uses a path (None: no domain)
        self.in_use = lambda path: None
        for path in sorted(self.dir.glob("*.xml")):
            try:
                defn = PoolDef.parse(path.read_text())
                pool = Pool(defn, backend_for(defn.type))
            except errors.VirError:
                continue
            self.pools[defn.name] = pool
            if (self.run / defn.name).exists() and pool.backend.check_pool(defn) or self.autostart(defn.name):
                try:
                    self.start(defn.name, 0)
                except errors.VirError:
                    pass

    # ---- pools ----
    def get(self, name: str) -> Pool:
        pool = self.pools.get(name)
        if pool is None:
            raise _err(errors.VIR_ERR_NO_STORAGE_POOL, f"no storage pool with matching name '{name}'")
        return pool

    def by_uuid(self, uid: bytes) -> Pool:
        for pool in self.pools.values():
            if pool.defn.uuid == uid:
                return pool
        raise _err(errors.VIR_ERR_NO_STORAGE_POOL, "no storage pool with matching uuid")

    def active(self, name: str) -> Pool:
        pool = self.get(name)
        if not pool.active:
            raise _err(errors.VIR_ERR_OPERATION_INVALID, f"storage pool '{name}' is not active")
        return pool

    def define(self, xml: str, persistent: bool = True) -> Pool:
        defn = PoolDef.parse(xml)
        with self.lock:
            old = self.pools.get(defn.name)
            for other in self.pools.values():
                if other.defn.name != defn.name and other.defn.uuid == defn.uuid:
                    raise _err(errors.VIR_ERR_OPERATION_FAILED, f"pool '{other.defn.name}' already exists with "
                               "uuid")
                if other.defn.name != defn.name and other.defn.target == defn.target:
                    raise _err(errors.VIR_ERR_OPERATION_FAILED,
                               f"Storage source conflict with pool: '{other.defn.name}'")
            if old is not None:
                if old.active and not persistent:
                    raise _err(errors.VIR_ERR_OPERATION_INVALID, f"pool '{defn.name}' is already active")
                defn.uuid = old.defn.uuid
                old.defn, old.persistent = defn, old.persistent or persistent
                pool = old
            else:
                pool = Pool(defn, backend_for(defn.type), persistent)
                self.pools[defn.name] = pool
            if persistent:
                (self.dir / f"{defn.name}.xml").write_text(defn.format())
            return pool

    def undefine(self, name: str) -> None:
        with self.lock:
            pool = self.get(name)
            if pool.active:
                raise _err(errors.VIR_ERR_OPERATION_INVALID, f"storage pool '{name}' is still active")
            if not pool.persistent:
                raise _err(errors.VIR_ERR_OPERATION_INVALID, f"storage pool '{name}' is not persistent")
            (self.dir / f"{name}.xml").unlink(missing_ok=True)
            (self.dir / "autostart" / name).unlink(missing_ok=True)
            del self.pools[name]

    def start(self, name: str, flags: int) -> None:
        with self.lock:
            pool = self.get(name)
            if pool.active:
                raise _err(errors.VIR_ERR_OPERATION_INVALID, f"storage pool '{name}' is already active")
            if flags & 1:  # VIR_STORAGE_POOL_CREATE_WITH_BUILD
                pool.backend.build_pool(pool.defn, 0)
            pool.backend.start_pool(pool.defn)
            pool.active = True
            (self.run / name).write_text("")
            self.refresh(name)

    def build(self, name: str, flags: int) -> None:
        pool = self.get(name)
        if pool.active:
            raise _err(errors.VIR_ERR_OPERATION_INVALID, f"storage pool '{name}' is already active")
        if flags & 4 and flags & 8:
            raise _err(errors.VIR_ERR_OPERATION_INVALID, "Overwrite and no overwrite flags are mutually exclusive")
        pool.backend.build_pool(pool.defn, flags)

    def destroy(self, name: str) -> None:
        with self.lock:
            pool = self.active(name)
            if any(lock.locked() for lock in pool.busy.values()):
                raise _err(errors.VIR_ERR_OPERATION_INVALID, f"pool '{name}' has asynchronous jobs running.")
            pool.backend.stop_pool(pool.defn)
            pool.active = False
            pool.volumes.clear()
            (self.run / name).unlink(missing_ok=True)
            if not pool.persistent:
                del self.pools[name]

    def delete(self, name: str, flags: int) -> None:
        pool = self.get(name)
        if pool.active:
            raise _err(errors.VIR_ERR_OPERATION_INVALID, f"storage pool '{name}' is still active")
        pool.backend.delete_pool(pool.defn, flags)

    def refresh(self, name: str) -> Pool:
        """Sizes from the backend, volumes from the target directory (files added behind refvmd's back too)."""
        with self.lock:
            pool = self.active(name)
            pool.sizes = pool.backend.refresh_pool(pool.defn)
            found: dict[str, str] = {}
            for entry in sorted(os.scandir(pool.defn.target), key=lambda e: e.name):
                if entry.is_file(follow_symlinks=False) and entry.name != "lost+found":
                    found[entry.name] = entry.path
            pool.volumes = found
            return pool

    def refresh_flags(self, name: str, flags: int) -> None:
        check = self.active(name)
        if any(lock.locked() for lock in check.busy.values()):
            raise _err(errors.VIR_ERR_INTERNAL_ERROR, f"pool '{name}' has asynchronous jobs running.")
        self.refresh(name)

    def autostart(self, name: str) -> bool:
        return (self.dir / "autostart" / name).exists()

    def set_autostart(self, name: str, on: bool) -> None:
        pool = self.get(name)
        if not pool.persistent:
            raise _err(errors.VIR_ERR_INTERNAL_ERROR, "cannot set autostart for transient pool")
        mark = self.dir / "autostart" / name
        mark.write_text("") if on else mark.unlink(missing_ok=True)

    def pool_xml(self, name: str, inactive: bool = False) -> str:
        pool = self.get(name)
        return pool.defn.format(*((0, 0, 0) if inactive or not pool.active else pool.sizes))

    # ---- volumes ----
    def vol(self, pool_name: str, name: str) -> tuple[Pool, str]:
        pool = self.active(pool_name)
        path = pool.volumes.get(name)
        if path is None:
            raise _err(errors.VIR_ERR_NO_STORAGE_VOL, f"no storage vol with matching name '{name}'")
        return pool, path

    def by_path(self, path: str, what: str = "path") -> tuple[Pool, str]:
        real = os.path.realpath(path)
        with self.lock:
            for pool in self.pools.values():
                for name, p in pool.volumes.items():
                    if p == path or os.path.realpath(p) == real:
                        return pool, name
        shown = path if what == "key" else f"'{path}'"  # libvirtd quotes the path, not the key
        raise _err(errors.VIR_ERR_NO_STORAGE_VOL, f"no storage vol with matching {what} {shown}")

    def info(self, path: str) -> FileInfo:
        return StorageFile(path).read_header()

    def vol_xml(self, pool: Pool, name: str) -> str:
        path = pool.volumes[name]
        i = self.info(path)
        from refvm.mgmt.storage.xml import Perms
        return format_volume(name, path, i.format, i.capacity, i.allocation, i.physical,
                             Perms(i.mode, i.uid, i.gid), i.backing, i.times)

    def job(self, pool: Pool, name: str) -> threading.Lock:
        """The volume's lock, taken without waiting: a second operation gets libvirt's 'in use' error."""
        user = self.in_use(pool.volumes.get(name, ""))
        if user is not None:
            raise _err(errors.VIR_ERR_OPERATION_INVALID, f"volume '{name}' is in use by running domain '{user}'")
        lock = pool.busy.setdefault(name, threading.Lock())
        if not lock.acquire(blocking=False):
            raise _err(errors.VIR_ERR_OPERATION_INVALID, f"volume '{name}' is still in use.")
        return lock

    def create_vol(self, pool_name: str, xml: str, clone_from: str | None = None) -> str:
        pool = self.active(pool_name)
        vol = VolDef.parse(xml, "raw")
        with self.lock:
            if vol.name in pool.volumes or os.path.lexists(os.path.join(pool.defn.target, vol.name)):
                raise _err(errors.VIR_ERR_STORAGE_VOL_EXIST, f"'{vol.name}'")
            path = pool.backend.create_vol(pool.defn, vol)
            lock = pool.busy.setdefault(vol.name, threading.Lock())
            lock.acquire()
            pool.volumes[vol.name] = path
        try:
            if clone_from is not None:
                pool.backend.build_vol_from(pool.defn, vol, path, clone_from, 0)
            else:
                pool.backend.build_vol(pool.defn, vol, path, 0)
        except BaseException:
            pool.volumes.pop(vol.name, None)
            raise
        finally:
            lock.release()
        pool.sizes = pool.backend.refresh_pool(pool.defn)
        return vol.name

    def delete_vol(self, pool: Pool, name: str, flags: int) -> None:
        lock = self.job(pool, name)
        try:
            path = pool.volumes[name]
            if os.path.dirname(path) != pool.defn.target:
                raise _err(errors.VIR_ERR_OPERATION_INVALID, f"volume '{name}' is outside its pool")
            pool.backend.delete_vol(pool.defn, path, flags)
            pool.volumes.pop(name, None)
        finally:
            lock.release()

    def resize(self, pool: Pool, name: str, capacity: int, flags: int) -> None:
        lock = self.job(pool, name)
        try:
            i = self.info(pool.volumes[name])
            if flags & RESIZE_DELTA:
                if flags & RESIZE_SHRINK:  # below zero ends at 0, then fails the allocation check as in libvirtd
                    capacity = max(0, i.capacity - capacity)
                else:
                    capacity += i.capacity
            if capacity < i.allocation:
                raise _err(errors.VIR_ERR_INVALID_ARG, "can't shrink capacity below existing allocation")
            if capacity < i.capacity and not flags & RESIZE_SHRINK:
                raise _err(errors.VIR_ERR_INVALID_ARG, "Can't shrink capacity below current capacity unless "
                           "shrink flag explicitly specified")
            if capacity > i.capacity and flags & RESIZE_SHRINK:
                raise _err(errors.VIR_ERR_INVALID_ARG, "Can't expand capacity when shrink flag is specified")
            if flags & RESIZE_ALLOCATE and capacity - i.capacity > pool.sizes[2]:
                raise _err(errors.VIR_ERR_OPERATION_FAILED, "Not enough space left in storage pool")
            pool.backend.resize_vol(pool.defn, pool.volumes[name], capacity, flags)
        finally:
            lock.release()

    def wipe(self, pool: Pool, name: str, algorithm: int, flags: int) -> None:
        lock = self.job(pool, name)
        try:
            pool.backend.wipe_vol(pool.defn, pool.volumes[name], algorithm, flags)
        finally:
            lock.release()


_drivers: dict[Path, StorageDriver] = {}
_lock = threading.Lock()


def for_paths(config: Path, run: Path) -> StorageDriver:
    """The one storage driver of a URI's state tree."""
    with _lock:
        drv = _drivers.get(config)
        if drv is None:
            drv = _drivers[config] = StorageDriver(config, run)
        return drv


__all__ = ["StorageDriver", "for_paths", "check_name"]
