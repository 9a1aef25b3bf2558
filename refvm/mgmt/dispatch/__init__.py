"""Procedure dispatch: REMOTE program procedure numbers mapped to driver calls, one small module per area.

Each handler gets the calling ``Session`` (one per client connection), an ``Unpacker`` on the call's arguments
and a ``Packer`` for its return value. It raises ``VirError`` for libvirt errors; the daemon turns that into the
error reply. ``table()`` gathers the handlers of every area module.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from refvm.mgmt import errors
from refvm.mgmt.rpc.xdr import Packer, Unpacker

if TYPE_CHECKING:
    from refvm.mgmt.drivers.base import Driver
    from refvm.mgmt.session import Session

Handler = Callable[["Session", Unpacker, Packer], None]

_HANDLERS: dict[int, Handler] = {}


def procedure(number: int) -> Callable[[Handler], Handler]:
    """Register a handler for a REMOTE procedure number."""

    def register(fn: Handler) -> Handler:
        if number in _HANDLERS:
            raise RuntimeError(f"procedure {number} registered twice")
        _HANDLERS[number] = fn
        return fn

    return register


def table() -> dict[int, Handler]:
    """Every handler, importing the area modules (they register themselves)."""
    from refvm.mgmt.dispatch import connection, console, domain, domain_stats, events, migration, storage  # noqa: F401,E501

    return dict(_HANDLERS)


def driver_of(session: Session) -> Driver:
    """The session's driver; libvirt's daemon says "connection not open" to calls made before CONNECT_OPEN."""
    if session.driver is None:
        raise errors.VirError(errors.VIR_ERR_INTERNAL_ERROR, "connection not open", domain=errors.VIR_FROM_RPC)
    return session.driver


def check_flags(flags: int, allowed: int, function: str) -> None:
    """libvirt's virCheckFlags: unknown bits give VIR_ERR_INVALID_ARG naming the function."""
    if flags & ~allowed:
        raise errors.VirError(errors.VIR_ERR_INVALID_ARG,
                              f"unsupported flags (0x{flags & ~allowed:x}) in function {function}",
                              domain=errors.VIR_FROM_RPC)
