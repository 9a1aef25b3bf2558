"""Migration procedures: protocol v3 with typed parameters (what virsh migrate uses), plain v3 (what
virDomainMigrate, libvirt-python's dom.migrate, uses), peer-to-peer Perform, and the job calls virsh makes
while a migration runs (domjobinfo, domjobabort, migrate-setmaxdowntime, migrate-setspeed/getspeed).

Arguments are decoded as remote_protocol.x lays them out; the driver does the work (drivers/migration.py).
"""
from __future__ import annotations

from refvm.mgmt import vir
from refvm.mgmt.dispatch import check_flags, driver_of, procedure
from refvm.mgmt.dispatch.migration_stream import TunnelStream
from refvm.mgmt.domain_xml import parse_domain
from refvm.mgmt.drivers.base import DomainRef
from refvm.mgmt.errors import VirError, invalid_arg, no_domain
from refvm.mgmt.rpc import protocol as P
from refvm.mgmt.rpc.protocol import Proc
from refvm.mgmt.rpc.types import PARAM_ULLONG, pack_domain, pack_typed_param, unpack_domain, unpack_typed_params
from refvm.mgmt.rpc.xdr import Packer, Unpacker

Params = dict[str, int | float | str]


def _params(args: Unpacker) -> Params:
    return unpack_typed_params(args, P.MIGRATE_PARAM_LIST_MAX)


def _cookie(args: Unpacker) -> bytes:
    return args.opaque(P.MIGRATE_COOKIE_MAX)


def _str(params: Params, name: str) -> str | None:
    value = params.get(name)
    return value if isinstance(value, str) and value else None


def _finish_name(params: Params) -> str:
    """The destination domain's name: destination_name, else the name in destination_xml."""
    name = _str(params, vir.VIR_MIGRATE_PARAM_DEST_NAME)
    if name is None and _str(params, vir.VIR_MIGRATE_PARAM_DEST_XML):
        try:
            name = parse_domain(str(params[vir.VIR_MIGRATE_PARAM_DEST_XML])).name
        except VirError:
            name = None
    if name is None:
        raise no_domain("missing domain name in migration parameters")
    return name


# ---- protocol v3 with parameters ------------------------------------------------------------------------

@procedure(Proc.DOMAIN_MIGRATE_BEGIN3_PARAMS)
def begin3_params(session, args: Unpacker, ret: Packer) -> None:
    dom = unpack_domain(args)
    params = _params(args)
    drv = driver_of(session)
    cookie, xml = drv.migrate_begin(dom, _str(params, vir.VIR_MIGRATE_PARAM_DEST_XML), args.uint())
    session.on_close.append(drv.migration_close_callback(dom.name))
    ret.opaque(cookie)
    ret.string(xml)


@procedure(Proc.DOMAIN_MIGRATE_PREPARE3_PARAMS)
def prepare3_params(session, args: Unpacker, ret: Packer) -> None:
    params = _params(args)
    cookie = _cookie(args)
    flags = args.uint()
    xml = _str(params, vir.VIR_MIGRATE_PARAM_DEST_XML)
    if xml is None:
        raise invalid_arg("missing destination_xml in migration parameters")
    _prepare(session, ret, cookie, _str(params, vir.VIR_MIGRATE_PARAM_URI), flags,
             _str(params, vir.VIR_MIGRATE_PARAM_DEST_NAME), xml, _str(params, vir.VIR_MIGRATE_PARAM_LISTEN_ADDRESS))


def _prepare(session, ret: Packer, cookie: bytes, uri_in: str | None, flags: int, dname: str | None, xml: str,
             listen: str | None = None) -> None:
    """Prepare3: the incoming domain is killed if this client leaves before Finish (libvirt's auto-destroy)."""
    drv = driver_of(session)
    cookie_out, uri = drv.migrate_prepare(cookie, uri_in, flags, dname, xml, listen)
    session.on_close.append(drv.migration_close_callback(dname or parse_domain(xml).name))
    ret.opaque(cookie_out)
    ret.opt_string(uri)


@procedure(Proc.DOMAIN_MIGRATE_PREPARE_TUNNEL3_PARAMS)
def prepare_tunnel3_params(session, args: Unpacker, ret: Packer) -> None:
    """PrepareTunnel3Params: as Prepare3Params, but the migration data then comes as this call's stream."""
    params = _params(args)
    cookie = _cookie(args)
    flags = args.uint()
    xml = _str(params, vir.VIR_MIGRATE_PARAM_DEST_XML)
    if xml is None:
        raise invalid_arg("missing destination_xml in migration parameters")
    dname = _str(params, vir.VIR_MIGRATE_PARAM_DEST_NAME)
    drv = driver_of(session)
    cookie_out, sink = drv.migrate_prepare_tunnel(cookie, flags, dname, xml)
    session.on_close.append(drv.migration_close_callback(dname or parse_domain(xml).name))
    hdr = session.current_call
    with session.lock:
        session.streams[hdr.serial] = TunnelStream(session, hdr, sink)
    ret.opaque(cookie_out)


@procedure(Proc.DOMAIN_MIGRATE_PERFORM3_PARAMS)
def perform3_params(session, args: Unpacker, ret: Packer) -> None:
    dom = unpack_domain(args)
    dconnuri = args.opt_string()
    params = _params(args)
    _cookie(args)
    flags = args.uint()
    _perform(session, dom, dconnuri, params, flags, ret)


def _perform(session, dom: DomainRef, dconnuri: str | None, params: Params, flags: int, ret: Packer) -> None:
    """Perform3: the source daemon drives the destination itself with PEER2PEER, else streams to migrate_uri."""
    drv = driver_of(session)
    if flags & vir.VIR_MIGRATE_TUNNELLED and not flags & vir.VIR_MIGRATE_PEER2PEER:
        raise invalid_arg("cannot perform tunnelled migration without using peer2peer flag")
    if flags & vir.VIR_MIGRATE_PEER2PEER:
        from refvm.mgmt.drivers.migration_p2p import perform_p2p
        ret.opaque(perform_p2p(drv, dom, dconnuri or "", params, flags))
        return
    bandwidth = int(params.get(vir.VIR_MIGRATE_PARAM_BANDWIDTH, 0) or 0)
    ret.opaque(drv.migrate_perform(dom, _str(params, vir.VIR_MIGRATE_PARAM_URI), flags, bandwidth))


@procedure(Proc.DOMAIN_MIGRATE_FINISH3_PARAMS)
def finish3_params(session, args: Unpacker, ret: Packer) -> None:
    params = _params(args)
    _cookie(args)
    flags = args.uint()
    cancelled = args.int() != 0
    pack_domain(ret, driver_of(session).migrate_finish(_finish_name(params), flags, cancelled))
    ret.opaque(b"")


@procedure(Proc.DOMAIN_MIGRATE_CONFIRM3_PARAMS)
def confirm3_params(session, args: Unpacker, ret: Packer) -> None:
    dom = unpack_domain(args)
    _params(args)
    _cookie(args)
    flags = args.uint()
    driver_of(session).migrate_confirm(dom, flags, args.int() != 0)


# ---- protocol v3 (virDomainMigrate without parameters) --------------------------------------------------

@procedure(Proc.DOMAIN_MIGRATE_BEGIN3)
def begin3(session, args: Unpacker, ret: Packer) -> None:
    dom = unpack_domain(args)
    xmlin = args.opt_string()
    flags = args.uhyper()
    args.opt_string()  # dname: Prepare gets it too
    args.uhyper()      # resource (bandwidth): Perform gets it too
    drv = driver_of(session)
    cookie, xml = drv.migrate_begin(dom, xmlin, flags)
    session.on_close.append(drv.migration_close_callback(dom.name))
    ret.opaque(cookie)
    ret.string(xml)


@procedure(Proc.DOMAIN_MIGRATE_PREPARE3)
def prepare3(session, args: Unpacker, ret: Packer) -> None:
    cookie = _cookie(args)
    uri_in = args.opt_string()
    flags = args.uhyper()
    dname = args.opt_string()
    args.uhyper()
    _prepare(session, ret, cookie, uri_in, flags, dname, args.string())


@procedure(Proc.DOMAIN_MIGRATE_PERFORM3)
def perform3(session, args: Unpacker, ret: Packer) -> None:
    dom = unpack_domain(args)
    args.opt_string()  # xmlin
    _cookie(args)
    dconnuri = args.opt_string()
    uri = args.opt_string()
    flags = args.uhyper()
    dname = args.opt_string()
    resource = args.uhyper()
    params: Params = {k: v for k, v in ((vir.VIR_MIGRATE_PARAM_URI, uri), (vir.VIR_MIGRATE_PARAM_DEST_NAME, dname),
                                         (vir.VIR_MIGRATE_PARAM_BANDWIDTH, resource)) if v}
    _perform(session, dom, dconnuri, params, flags, ret)


@procedure(Proc.DOMAIN_MIGRATE_FINISH3)
def finish3(session, args: Unpacker, ret: Packer) -> None:
    dname = args.string()
    _cookie(args)
    args.opt_string()
    args.opt_string()
    flags = args.uhyper()
    cancelled = args.int() != 0
    pack_domain(ret, driver_of(session).migrate_finish(dname, flags, cancelled))
    ret.opaque(b"")


@procedure(Proc.DOMAIN_MIGRATE_CONFIRM3)
def confirm3(session, args: Unpacker, ret: Packer) -> None:
    dom = unpack_domain(args)
    _cookie(args)
    flags = args.uhyper()
    driver_of(session).migrate_confirm(dom, flags, args.int() != 0)


# ---- jobs -----------------------------------------------------------------------------------------------

@procedure(Proc.DOMAIN_GET_JOB_INFO)
def get_job_info(session, args: Unpacker, ret: Packer) -> None:
    type_, elapsed, total, done, left = driver_of(session).job_info(unpack_domain(args))
    ret.int(type_)
    # timeElapsed, timeRemaining, dataTotal/Processed/Remaining, memTotal/Processed/Remaining, file*
    for value in (elapsed, 0, total, done, left, total, done, left, 0, 0, 0):
        ret.uhyper(value)


@procedure(Proc.DOMAIN_GET_JOB_STATS)
def get_job_stats(session, args: Unpacker, ret: Packer) -> None:
    dom = unpack_domain(args)
    flags = args.uint()
    drv = driver_of(session)
    check_flags(flags, vir.VIR_DOMAIN_JOB_STATS_COMPLETED, "qemuDomainGetJobStats")
    type_, elapsed, total, done, left = drv.job_info(dom)
    if flags & vir.VIR_DOMAIN_JOB_STATS_COMPLETED:
        type_ = vir.VIR_DOMAIN_JOB_NONE  # refvmd keeps no statistics of finished jobs yet
    ret.int(type_)
    stats = [] if type_ == vir.VIR_DOMAIN_JOB_NONE else [
        ("time_elapsed", elapsed), ("data_total", total), ("data_processed", done), ("data_remaining", left),
        ("memory_total", total), ("memory_processed", done), ("memory_remaining", left)]
    ret.array(stats, lambda kv: pack_typed_param(ret, kv[0], PARAM_ULLONG, kv[1]))


@procedure(Proc.DOMAIN_ABORT_JOB)
def abort_job(session, args: Unpacker, ret: Packer) -> None:
    driver_of(session).abort_job(unpack_domain(args))


def _dom_value_flags(method: str):
    """(domain, unsigned hyper value, unsigned flags) -> void: set max downtime (ms) or speed (MiB/s)."""

    def handler(session, args: Unpacker, ret: Packer) -> None:
        dom = unpack_domain(args)
        value = args.uhyper()
        getattr(driver_of(session), method)(dom, value, args.uint())

    return handler


procedure(Proc.DOMAIN_MIGRATE_SET_MAX_DOWNTIME)(_dom_value_flags("migrate_set_max_downtime"))
procedure(Proc.DOMAIN_MIGRATE_SET_MAX_SPEED)(_dom_value_flags("migrate_set_max_speed"))


@procedure(Proc.DOMAIN_MIGRATE_GET_MAX_SPEED)
def get_max_speed(session, args: Unpacker, ret: Packer) -> None:
    dom = unpack_domain(args)
    ret.uhyper(driver_of(session).migrate_get_max_speed(dom, args.uint()))
