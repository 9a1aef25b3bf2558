"""Domain procedures: lookup, definition, lifecycle, autostart, XML, devices."""
from __future__ import annotations

from refvm.mgmt import vir
from refvm.mgmt.dispatch import driver_of, procedure
from refvm.mgmt.rpc.protocol import Proc
from refvm.mgmt.rpc.types import UUID_LEN, pack_domain, unpack_domain
from refvm.mgmt.rpc.xdr import Packer, Unpacker

#: virDomainGetOSType: refvmd's drivers run full-virtualisation guests only.
_OS_TYPE = "hvm"


@procedure(Proc.DOMAIN_LOOKUP_BY_NAME)
def lookup_by_name(session, args: Unpacker, ret: Packer) -> None:
    pack_domain(ret, driver_of(session).lookup_by_name(args.string()))


@procedure(Proc.DOMAIN_LOOKUP_BY_UUID)
def lookup_by_uuid(session, args: Unpacker, ret: Packer) -> None:
    pack_domain(ret, driver_of(session).lookup_by_uuid(args.fopaque(UUID_LEN)))


@procedure(Proc.DOMAIN_LOOKUP_BY_ID)
def lookup_by_id(session, args: Unpacker, ret: Packer) -> None:
    pack_domain(ret, driver_of(session).lookup_by_id(args.int()))


@procedure(Proc.DOMAIN_DEFINE_XML)
def define_xml(session, args: Unpacker, ret: Packer) -> None:
    pack_domain(ret, driver_of(session).define_xml(args.string(), 0))


@procedure(Proc.DOMAIN_DEFINE_XML_FLAGS)
def define_xml_flags(session, args: Unpacker, ret: Packer) -> None:
    xml = args.string()
    pack_domain(ret, driver_of(session).define_xml(xml, args.uint()))


@procedure(Proc.DOMAIN_CREATE_XML)
def create_xml(session, args: Unpacker, ret: Packer) -> None:
    xml = args.string()
    pack_domain(ret, driver_of(session).create_xml(xml, args.uint()))


@procedure(Proc.DOMAIN_CREATE)
def create(session, args: Unpacker, ret: Packer) -> None:
    driver_of(session).create(unpack_domain(args), 0)


@procedure(Proc.DOMAIN_CREATE_WITH_FLAGS)
def create_with_flags(session, args: Unpacker, ret: Packer) -> None:
    dom = unpack_domain(args)
    pack_domain(ret, driver_of(session).create(dom, args.uint()))


def _dom_only(method: str):
    """A procedure whose arguments are just the domain and whose return is void."""

    def handler(session, args: Unpacker, ret: Packer) -> None:
        getattr(driver_of(session), method)(unpack_domain(args))

    return handler


def _dom_flags(method: str):
    """A procedure with (domain, unsigned flags) arguments and a void return."""

    def handler(session, args: Unpacker, ret: Packer) -> None:
        dom = unpack_domain(args)
        getattr(driver_of(session), method)(dom, args.uint())

    return handler


procedure(Proc.DOMAIN_SUSPEND)(_dom_only("suspend"))
procedure(Proc.DOMAIN_RESUME)(_dom_only("resume"))
procedure(Proc.DOMAIN_UNDEFINE_FLAGS)(_dom_flags("undefine"))
procedure(Proc.DOMAIN_SHUTDOWN_FLAGS)(_dom_flags("shutdown"))
procedure(Proc.DOMAIN_REBOOT)(_dom_flags("reboot"))
procedure(Proc.DOMAIN_RESET)(_dom_flags("reset"))
procedure(Proc.DOMAIN_DESTROY_FLAGS)(_dom_flags("destroy"))


@procedure(Proc.DOMAIN_UNDEFINE)
def undefine(session, args: Unpacker, ret: Packer) -> None:
    driver_of(session).undefine(unpack_domain(args), 0)


@procedure(Proc.DOMAIN_SHUTDOWN)
def shutdown(session, args: Unpacker, ret: Packer) -> None:
    driver_of(session).shutdown(unpack_domain(args), 0)


@procedure(Proc.DOMAIN_DESTROY)
def destroy(session, args: Unpacker, ret: Packer) -> None:
    driver_of(session).destroy(unpack_domain(args), 0)


@procedure(Proc.DOMAIN_GET_XML_DESC)
def get_xml_desc(session, args: Unpacker, ret: Packer) -> None:
    dom = unpack_domain(args)
    ret.string(driver_of(session).xml_desc(dom, args.uint()))


@procedure(Proc.DOMAIN_GET_AUTOSTART)
def get_autostart(session, args: Unpacker, ret: Packer) -> None:
    ret.int(1 if driver_of(session).get_autostart(unpack_domain(args)) else 0)


@procedure(Proc.DOMAIN_SET_AUTOSTART)
def set_autostart(session, args: Unpacker, ret: Packer) -> None:
    dom = unpack_domain(args)
    driver_of(session).set_autostart(dom, args.int() != 0)


@procedure(Proc.DOMAIN_IS_ACTIVE)
def is_active(session, args: Unpacker, ret: Packer) -> None:
    ret.int(1 if driver_of(session).is_active(unpack_domain(args)) else 0)


@procedure(Proc.DOMAIN_IS_PERSISTENT)
def is_persistent(session, args: Unpacker, ret: Packer) -> None:
    ret.int(1 if driver_of(session).is_persistent(unpack_domain(args)) else 0)


@procedure(Proc.DOMAIN_GET_OS_TYPE)
def get_os_type(session, args: Unpacker, ret: Packer) -> None:
    driver_of(session).info(unpack_domain(args))  # VIR_ERR_NO_DOMAIN for a domain that is gone
    ret.string(_OS_TYPE)


@procedure(Proc.DOMAIN_HAS_MANAGED_SAVE_IMAGE)
def has_managed_save_image(session, args: Unpacker, ret: Packer) -> None:
    dom = unpack_domain(args)
    args.uint()
    driver_of(session).info(dom)
    ret.int(0)  # refvmd has no managed save


def _device(method: str, with_flags: bool):
    """attach/detach device: (domain, xml[, flags]) -> void; the legacy calls act on the live domain."""

    def handler(session, args: Unpacker, ret: Packer) -> None:
        dom = unpack_domain(args)
        xml = args.string()
        flags = args.uint() if with_flags else vir.VIR_DOMAIN_AFFECT_LIVE
        getattr(driver_of(session), method)(dom, xml, flags)

    return handler


procedure(Proc.DOMAIN_ATTACH_DEVICE)(_device("attach_device", False))
procedure(Proc.DOMAIN_ATTACH_DEVICE_FLAGS)(_device("attach_device", True))
procedure(Proc.DOMAIN_DETACH_DEVICE)(_device("detach_device", False))
procedure(Proc.DOMAIN_DETACH_DEVICE_FLAGS)(_device("detach_device", True))
