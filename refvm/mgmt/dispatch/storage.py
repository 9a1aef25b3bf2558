"""Storage pool and volume procedures of remote_protocol.x (numbers and XDR types from there).

remote_nonnull_storage_pool is (name, uuid[16]); remote_nonnull_storage_vol is (pool, name, key), the key of a
file volume being its path. Pools live in the storage driver of the connection's URI (its state tree).
"""
from __future__ import annotations

from refvm.mgmt import errors
from refvm.mgmt.dispatch import check_flags, driver_of, procedure
from refvm.mgmt.dispatch.storage_stream import Download, Upload
from refvm.mgmt.rpc.types import UUID_LEN
from refvm.mgmt.rpc.xdr import Packer, Unpacker
from refvm.mgmt.storage.driver import Pool, StorageDriver, for_paths

LIST_MAX = 16384
VOL_FILE = 0


def storage_of(session) -> StorageDriver:
    driver = driver_of(session)
    store = getattr(driver, "store", None)
    if store is None:
        raise errors.VirError(errors.VIR_ERR_NO_SUPPORT, "storage pools", domain=errors.VIR_FROM_STORAGE)
    storage = for_paths(store.paths.config, store.paths.run)
    storage.in_use = getattr(driver, "_volume_user", storage.in_use)
    return storage


def _pool_ref(p: Packer, pool: Pool) -> None:
    p.string(pool.defn.name)
    p.fopaque(pool.defn.uuid, UUID_LEN)


def _read_pool(session, args: Unpacker) -> tuple[StorageDriver, Pool]:
    drv = storage_of(session)
    name = args.string()
    args.fopaque(UUID_LEN)
    return drv, drv.get(name)


def _vol_ref(p: Packer, pool: Pool, name: str) -> None:
    p.string(pool.defn.name)
    p.string(name)
    p.string(pool.volumes[name])


def _read_vol(session, args: Unpacker) -> tuple[StorageDriver, Pool, str]:
    drv = storage_of(session)
    pool_name, name = args.string(), args.string()
    args.string()
    pool, _ = drv.vol(pool_name, name)
    return drv, pool, name


def _names(ret: Packer, names: list[str], limit: int) -> None:
    ret.array(names[:limit], ret.string)


def _filtered(drv: StorageDriver, flags: int) -> list[Pool]:
    out = []
    for pool in drv.pools.values():
        checks = [(1, not pool.active), (2, pool.active), (4, pool.persistent), (8, not pool.persistent),
                  (16, drv.autostart(pool.defn.name)), (32, not drv.autostart(pool.defn.name))]
        if any(flags & (a | b) and not (flags & a and ok_a or flags & b and ok_b)
               for (a, ok_a), (b, ok_b) in zip(checks[::2], checks[1::2], strict=False)):
            continue
        types = flags >> 6
        if types and not (pool.defn.type == "dir" and types & 1 or pool.defn.type == "fs" and types & 2):
            continue
        out.append(pool)
    return sorted(out, key=lambda p: p.defn.name)


@procedure(71)
def num_pools(session, args: Unpacker, ret: Packer) -> None:
    ret.int(len(_filtered(storage_of(session), 2)))


@procedure(72)
def list_pools(session, args: Unpacker, ret: Packer) -> None:
    _names(ret, [p.defn.name for p in _filtered(storage_of(session), 2)], args.int())


@procedure(73)
def num_defined_pools(session, args: Unpacker, ret: Packer) -> None:
    ret.int(len(_filtered(storage_of(session), 1)))


@procedure(74)
def list_defined_pools(session, args: Unpacker, ret: Packer) -> None:
    _names(ret, [p.defn.name for p in _filtered(storage_of(session), 1)], args.int())


@procedure(75)
def find_sources(session, args: Unpacker, ret: Packer) -> None:
    from refvm.mgmt.storage.backend import backend_for

    type_, spec, flags = args.string(), args.opt_string(), args.uint()
    storage_of(session)
    ret.string(backend_for(type_).find_pool_sources(spec, flags))


@procedure(76)
def pool_create_xml(session, args: Unpacker, ret: Packer) -> None:
    drv = storage_of(session)
    xml, flags = args.string(), args.uint()
    pool = drv.define(xml, persistent=False)
    try:
        drv.start(pool.defn.name, flags)
    except errors.VirError:
        drv.pools.pop(pool.defn.name, None)
        raise
    _pool_ref(ret, pool)


@procedure(77)
def pool_define_xml(session, args: Unpacker, ret: Packer) -> None:
    drv = storage_of(session)
    xml = args.string()
    check_flags(args.uint(), 1, "storagePoolDefineXML")
    _pool_ref(ret, drv.define(xml))


def _pool_flags(method: str, with_flags: bool = True):
    def handler(session, args: Unpacker, ret: Packer) -> None:
        drv, pool = _read_pool(session, args)
        extra = (args.uint(),) if with_flags else ()
        getattr(drv, method)(pool.defn.name, *extra)

    return handler


procedure(78)(_pool_flags("start"))
procedure(79)(_pool_flags("build"))
procedure(80)(_pool_flags("destroy", False))
procedure(81)(_pool_flags("delete"))
procedure(82)(_pool_flags("undefine", False))
procedure(83)(_pool_flags("refresh_flags"))


@procedure(84)
def pool_by_name(session, args: Unpacker, ret: Packer) -> None:
    _pool_ref(ret, storage_of(session).get(args.string()))


@procedure(85)
def pool_by_uuid(session, args: Unpacker, ret: Packer) -> None:
    _pool_ref(ret, storage_of(session).by_uuid(args.fopaque(UUID_LEN)))


@procedure(86)
def pool_by_volume(session, args: Unpacker, ret: Packer) -> None:
    _drv, pool, _name = _read_vol(session, args)
    _pool_ref(ret, pool)


@procedure(87)
def pool_info(session, args: Unpacker, ret: Packer) -> None:
    _drv, pool = _read_pool(session, args)
    ret.uint(2 if pool.active else 0)
    for v in pool.sizes if pool.active else (0, 0, 0):
        ret.uhyper(v)


@procedure(88)
def pool_xml(session, args: Unpacker, ret: Packer) -> None:
    drv, pool = _read_pool(session, args)
    ret.string(drv.pool_xml(pool.defn.name, bool(args.uint() & 1)))


@procedure(89)
def pool_get_autostart(session, args: Unpacker, ret: Packer) -> None:
    drv, pool = _read_pool(session, args)
    ret.int(int(drv.autostart(pool.defn.name)))


@procedure(90)
def pool_set_autostart(session, args: Unpacker, ret: Packer) -> None:
    drv, pool = _read_pool(session, args)
    drv.set_autostart(pool.defn.name, bool(args.int()))


@procedure(91)
def num_volumes(session, args: Unpacker, ret: Packer) -> None:
    drv, pool = _read_pool(session, args)
    ret.int(len(drv.active(pool.defn.name).volumes))


@procedure(92)
def list_volumes(session, args: Unpacker, ret: Packer) -> None:
    drv, pool = _read_pool(session, args)
    _names(ret, list(drv.active(pool.defn.name).volumes), args.int())


@procedure(93)
def vol_create_xml(session, args: Unpacker, ret: Packer) -> None:
    drv, pool = _read_pool(session, args)
    xml = args.string()
    check_flags(args.uint(), 1 | 2, "storageVolCreateXML")
    _vol_ref(ret, pool, drv.create_vol(pool.defn.name, xml))


@procedure(125)
def vol_create_xml_from(session, args: Unpacker, ret: Packer) -> None:
    drv, pool = _read_pool(session, args)
    xml = args.string()
    _sdrv, src_pool, src_name = _read_vol(session, args)
    check_flags(args.uint(), 1 | 2, "storageVolCreateXMLFrom")
    lock = drv.job(src_pool, src_name)
    try:
        _vol_ref(ret, pool, drv.create_vol(pool.defn.name, xml, clone_from=src_pool.volumes[src_name]))
    finally:
        lock.release()


@procedure(94)
def vol_delete(session, args: Unpacker, ret: Packer) -> None:
    drv, pool, name = _read_vol(session, args)
    drv.delete_vol(pool, name, args.uint())


@procedure(95)
def vol_by_name(session, args: Unpacker, ret: Packer) -> None:
    drv, pool = _read_pool(session, args)
    name = args.string()
    drv.vol(pool.defn.name, name)
    _vol_ref(ret, pool, name)


@procedure(96)
def vol_by_key(session, args: Unpacker, ret: Packer) -> None:
    pool, name = storage_of(session).by_path(args.string(), "key")
    _vol_ref(ret, pool, name)


@procedure(97)
def vol_by_path(session, args: Unpacker, ret: Packer) -> None:
    pool, name = storage_of(session).by_path(args.string())
    _vol_ref(ret, pool, name)


@procedure(98)
def vol_info(session, args: Unpacker, ret: Packer) -> None:
    drv, pool, name = _read_vol(session, args)
    i = drv.info(pool.volumes[name])
    ret.int(VOL_FILE)
    ret.uhyper(i.capacity)
    ret.uhyper(i.allocation)


@procedure(99)
def vol_xml(session, args: Unpacker, ret: Packer) -> None:
    drv, pool, name = _read_vol(session, args)
    args.uint()
    ret.string(drv.vol_xml(pool, name))


@procedure(100)
def vol_path(session, args: Unpacker, ret: Packer) -> None:
    _drv, pool, name = _read_vol(session, args)
    ret.string(pool.volumes[name])


@procedure(154)
def pool_is_active(session, args: Unpacker, ret: Packer) -> None:
    ret.int(int(_read_pool(session, args)[1].active))


@procedure(155)
def pool_is_persistent(session, args: Unpacker, ret: Packer) -> None:
    ret.int(int(_read_pool(session, args)[1].persistent))


@procedure(165)
def vol_wipe(session, args: Unpacker, ret: Packer) -> None:
    drv, pool, name = _read_vol(session, args)
    check_flags(args.uint(), 0, "storageVolWipe")
    drv.wipe(pool, name, 0, 0)


@procedure(259)
def vol_wipe_pattern(session, args: Unpacker, ret: Packer) -> None:
    drv, pool, name = _read_vol(session, args)
    algorithm = args.uint()
    check_flags(args.uint(), 0, "storageVolWipePattern")
    drv.wipe(pool, name, algorithm, 0)


@procedure(260)
def vol_resize(session, args: Unpacker, ret: Packer) -> None:
    drv, pool, name = _read_vol(session, args)
    capacity = args.uhyper()
    flags = args.uint()
    check_flags(flags, 7, "storageVolResize")
    drv.resize(pool, name, capacity, flags)


def _transfer(session, args: Unpacker, cls) -> None:
    drv, pool, name = _read_vol(session, args)
    offset, length, flags = args.uhyper(), args.uhyper(), args.uint()
    check_flags(flags, 1, "storageVolUpload" if cls is Upload else "storageVolDownload")
    (pool.backend.upload_vol if cls is Upload else pool.backend.download_vol)(pool.defn, pool.volumes[name])
    lock = drv.job(pool, name)
    try:
        extra = {"sparse": bool(flags & 1)} if cls is Download else {}
        stream = cls(session, session.current_call, pool.volumes[name], offset, length, lock.release, **extra)
    except BaseException:
        lock.release()
        raise
    with session.lock:
        session.streams[session.current_call.serial] = stream
    if cls is Download:
        session.after_reply = stream.start


@procedure(208)
def vol_upload(session, args: Unpacker, ret: Packer) -> None:
    _transfer(session, args, Upload)


@procedure(209)
def vol_download(session, args: Unpacker, ret: Packer) -> None:
    _transfer(session, args, Download)


@procedure(281)
def list_all_pools(session, args: Unpacker, ret: Packer) -> None:
    need = args.int()
    flags = args.uint()
    pools = _filtered(storage_of(session), flags)
    if need:
        ret.array(pools, lambda p: _pool_ref(ret, p))
    else:
        ret.uint(0)
    ret.uint(len(pools))


@procedure(282)
def list_all_volumes(session, args: Unpacker, ret: Packer) -> None:
    drv, pool = _read_pool(session, args)
    need = args.int()
    args.uint()
    drv.active(pool.defn.name)
    names = list(pool.volumes)
    if need:
        ret.array(names, lambda n: _vol_ref(ret, pool, n))
    else:
        ret.uint(0)
    ret.uint(len(names))
