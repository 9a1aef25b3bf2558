"""Connection-level procedures: the handshake (AUTH_LIST, SUPPORTS_FEATURE, OPEN), host facts, domain lists."""
from __future__ import annotations

from refvm.mgmt import errors
from refvm.mgmt.dispatch import driver_of, procedure
from refvm.mgmt.rpc import protocol as P
from refvm.mgmt.rpc.protocol import Proc
from refvm.mgmt.rpc.types import pack_domain
from refvm.mgmt.rpc.xdr import Packer, Unpacker

#: virConnectGetLibVersion: refvmd speaks the remote protocol of libvirt 9.0, so it reports that API level.
LIB_VERSION = 9000000

# VIR_CONNECT_LIST_DOMAINS_ACTIVE / _INACTIVE: the legacy list calls are listAllDomains with one of them.
LIST_ACTIVE = 1
LIST_INACTIVE = 2

#: Features the RPC layer answers itself (virsh asks for keepalive before CONNECT_OPEN).
RPC_FEATURES = {P.FEATURE_PROGRAM_KEEPALIVE: True, P.FEATURE_REMOTE_EVENT_CALLBACK: True,
                P.FEATURE_TYPED_PARAM_STRING: True, P.FEATURE_REMOTE_CLOSE_CALLBACK: False}


@procedure(Proc.AUTH_LIST)
def auth_list(session, args: Unpacker, ret: Packer) -> None:
    ret.array([P.AUTH_NONE], ret.int)


@procedure(Proc.CONNECT_SUPPORTS_FEATURE)
def supports_feature(session, args: Unpacker, ret: Packer) -> None:
    feature = args.int()
    if feature in RPC_FEATURES:
        supported = RPC_FEATURES[feature]
    else:
        supported = session.driver is not None and session.driver.supports_feature(feature)
    ret.int(1 if supported else 0)


@procedure(Proc.CONNECT_OPEN)
def connect_open(session, args: Unpacker, ret: Packer) -> None:
    name = args.opt_string()
    args.uint()  # flags: VIR_CONNECT_RO and friends; the socket mode is the access control
    if session.driver is not None:
        raise errors.VirError(errors.VIR_ERR_INTERNAL_ERROR, "connection already open", domain=errors.VIR_FROM_RPC)
    session.driver = session.daemon.open_driver(name)
    session.uri = name


@procedure(Proc.CONNECT_CLOSE)
def connect_close(session, args: Unpacker, ret: Packer) -> None:
    session.cleanup()


@procedure(Proc.CONNECT_GET_TYPE)
def get_type(session, args: Unpacker, ret: Packer) -> None:
    ret.string(driver_of(session).type_name)


@procedure(Proc.CONNECT_GET_VERSION)
def get_version(session, args: Unpacker, ret: Packer) -> None:
    ret.uhyper(driver_of(session).version())


@procedure(Proc.CONNECT_GET_LIB_VERSION)
def get_lib_version(session, args: Unpacker, ret: Packer) -> None:
    driver_of(session)
    ret.uhyper(LIB_VERSION)


@procedure(Proc.CONNECT_GET_HOSTNAME)
def get_hostname(session, args: Unpacker, ret: Packer) -> None:
    ret.string(driver_of(session).hostname())


@procedure(Proc.CONNECT_GET_URI)
def get_uri(session, args: Unpacker, ret: Packer) -> None:
    ret.string(driver_of(session).uri())


@procedure(Proc.CONNECT_IS_SECURE)
def is_secure(session, args: Unpacker, ret: Packer) -> None:
    driver_of(session)
    ret.int(1)  # a unix socket is not visible on the network: libvirt calls it secure


@procedure(Proc.CONNECT_GET_CAPABILITIES)
def get_capabilities(session, args: Unpacker, ret: Packer) -> None:
    ret.string(driver_of(session).capabilities_xml())


@procedure(Proc.NODE_GET_INFO)
def node_get_info(session, args: Unpacker, ret: Packer) -> None:
    info = driver_of(session).node_info()
    model = info.model.encode()[:31].ljust(32, b"\0")
    for byte in model:  # char model[32]: each char is one XDR int
        ret.int(byte)
    ret.uhyper(info.memory)
    for v in (info.cpus, info.mhz, info.nodes, info.sockets, info.cores, info.threads):
        ret.int(v)


@procedure(Proc.NODE_GET_SECURITY_MODEL)
def node_get_security_model(session, args: Unpacker, ret: Packer) -> None:
    driver_of(session)
    ret.uint(0)  # model<>: no security driver, as libvirt with security_driver = "none"
    ret.uint(0)  # doi<>


@procedure(Proc.CONNECT_GET_MAX_VCPUS)
def get_max_vcpus(session, args: Unpacker, ret: Packer) -> None:
    ret.int(driver_of(session).max_vcpus(args.opt_string()))


@procedure(Proc.CONNECT_NUM_OF_DOMAINS)
def num_of_domains(session, args: Unpacker, ret: Packer) -> None:
    ret.int(len(driver_of(session).list_all(LIST_ACTIVE)))


@procedure(Proc.CONNECT_NUM_OF_DEFINED_DOMAINS)
def num_of_defined_domains(session, args: Unpacker, ret: Packer) -> None:
    ret.int(len(driver_of(session).list_all(LIST_INACTIVE)))


def _check_max(value: int, name: str, limit_name: str) -> None:
    if value > P.DOMAIN_LIST_MAX:
        raise errors.VirError(errors.VIR_ERR_RPC, f"{name} > {limit_name}", domain=errors.VIR_FROM_RPC)
    if value < 0:
        raise errors.VirError(errors.VIR_ERR_INVALID_ARG, f"{name} in remoteDispatch must be >= 0",
                              domain=errors.VIR_FROM_RPC)


@procedure(Proc.CONNECT_LIST_DOMAINS)
def list_domains(session, args: Unpacker, ret: Packer) -> None:
    maxids = args.int()
    _check_max(maxids, "maxids", "REMOTE_DOMAIN_LIST_MAX")
    ids = [d.id for d in driver_of(session).list_all(LIST_ACTIVE)][:maxids]
    ret.array(ids, ret.int)


@procedure(Proc.CONNECT_LIST_DEFINED_DOMAINS)
def list_defined_domains(session, args: Unpacker, ret: Packer) -> None:
    maxnames = args.int()
    _check_max(maxnames, "maxnames", "REMOTE_DOMAIN_LIST_MAX")
    names = [d.name for d in driver_of(session).list_all(LIST_INACTIVE)][:maxnames]
    ret.array(names, ret.string)


@procedure(Proc.CONNECT_LIST_ALL_DOMAINS)
def list_all_domains(session, args: Unpacker, ret: Packer) -> None:
    need_results = args.int()
    flags = args.uint()
    doms = driver_of(session).list_all(flags)
    if len(doms) > P.DOMAIN_LIST_MAX:
        raise errors.VirError(errors.VIR_ERR_RPC, f"Too many domains '{len(doms)}' for limit "
                              f"'{P.DOMAIN_LIST_MAX}'", domain=errors.VIR_FROM_RPC)
    ret.array(doms if need_results else [], lambda d: pack_domain(ret, d))
    ret.uint(len(doms))
