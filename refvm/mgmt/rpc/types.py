"""Structures shared by many procedures of remote_protocol.x: domains and typed parameters."""
from __future__ import annotations

from refvm.mgmt import errors
from refvm.mgmt.drivers.base import DomainRef
from refvm.mgmt.rpc.xdr import Packer, Unpacker, XdrError

UUID_LEN = 16

# virTypedParameterType: the discriminant of remote_typed_param_value.
PARAM_INT = 1
PARAM_UINT = 2
PARAM_LLONG = 3
PARAM_ULLONG = 4
PARAM_DOUBLE = 5
PARAM_BOOLEAN = 6
PARAM_STRING = 7
#: VIR_TYPED_PARAM_FIELD_LENGTH: a field name must be shorter than this.
FIELD_LENGTH = 80


def pack_domain(p: Packer, dom: DomainRef) -> None:
    """remote_nonnull_domain: name, uuid[16], id."""
    p.string(dom.name)
    p.fopaque(dom.uuid, UUID_LEN)
    p.int(dom.id)


def unpack_domain(u: Unpacker) -> DomainRef:
    name = u.string()
    uuid = u.fopaque(UUID_LEN)
    return DomainRef(name, uuid, u.int())


def unpack_opt_domain(u: Unpacker) -> DomainRef | None:
    """remote_domain (a pointer that may be NULL)."""
    return u.optional(lambda: unpack_domain(u))


def pack_typed_param(p: Packer, name: str, type_: int, value: int | float | str) -> None:
    """remote_typed_param: field name, then the union discriminated by the type."""
    p.string(name)
    p.int(type_)
    if type_ in (PARAM_INT, PARAM_BOOLEAN):
        p.int(int(value))
    elif type_ == PARAM_UINT:
        p.uint(int(value))
    elif type_ == PARAM_LLONG:
        p.hyper(int(value))
    elif type_ == PARAM_ULLONG:
        p.uhyper(int(value))
    elif type_ == PARAM_DOUBLE:
        p.double(float(value))
    elif type_ == PARAM_STRING:
        p.string(str(value))
    else:
        raise XdrError(f"typed parameter type {type_}")


def unpack_typed_params(u: Unpacker, limit: int) -> dict[str, int | float | str]:
    """A remote_typed_param array as {field: value}; an unknown type is a decoding error, as in libvirt."""
    out: dict[str, int | float | str] = {}
    for _ in range(_count(u, limit)):
        name = u.string()
        if len(name) >= FIELD_LENGTH:
            raise errors.VirError(errors.VIR_ERR_INTERNAL_ERROR, f"Parameter name '{name}' too big",
                                  domain=errors.VIR_FROM_RPC)
        type_ = u.int()
        readers = {PARAM_INT: u.int, PARAM_BOOLEAN: u.int, PARAM_UINT: u.uint, PARAM_LLONG: u.hyper,
                   PARAM_ULLONG: u.uhyper, PARAM_DOUBLE: u.double, PARAM_STRING: u.string}
        if type_ not in readers:
            raise errors.VirError(errors.VIR_ERR_INTERNAL_ERROR, f"unknown parameter type: {type_}",
                                  domain=errors.VIR_FROM_RPC)
        out[name] = readers[type_]()
    return out


def _count(u: Unpacker, limit: int) -> int:
    n = u.uint()
    if n > limit:
        raise errors.VirError(errors.VIR_ERR_RPC, f"too many parameters '{n}' for limit '{limit}'",
                              domain=errors.VIR_FROM_RPC)
    return n
