"""Peer-to-peer migration: the source daemon drives the destination daemon itself, over libvirt's own wire
protocol (refvm.mgmt.rpc.client), as libvirt's QEMU driver does in qemuMigrationSrcPerformPeer2Peer3:
Begin (here) -> Prepare3Params (there) -> Perform (here) -> Finish3Params (there) -> Confirm (here).
Tunnelled, Prepare is PrepareTunnel3Params, and Perform sends the VMM's stream over that call's libvirt stream
(drivers/migration_tunnel.py), as qemuMigrationSrcPerformTunnel does.

virsh migrate --p2p (virDomainMigrateToURI3) sends one Perform3Params with the destination's URI; that call
returns when the guest runs on the destination, or has been left running here after a failure.
"""
from __future__ import annotations

from typing import Any

from refvm.mgmt import vir
from refvm.mgmt.drivers.base import DomainRef
from refvm.mgmt.errors import VirError, invalid_arg, operation_failed
from refvm.mgmt.rpc.client import RpcClient
from refvm.mgmt.rpc.protocol import MIGRATE_COOKIE_MAX, Proc
from refvm.mgmt.rpc.stream_client import OutStream
from refvm.mgmt.rpc.types import PARAM_STRING, PARAM_ULLONG, pack_typed_param, unpack_domain
from refvm.mgmt.rpc.xdr import Packer

Params = dict[str, Any]


def _pack_params(p: Packer, params: Params) -> None:
    items = [(k, v) for k, v in params.items() if v is not None]
    p.uint(len(items))
    for name, value in items:
        pack_typed_param(p, name, PARAM_STRING if isinstance(value, str) else PARAM_ULLONG, value)


def _connect(dconnuri: str) -> RpcClient:
    try:
        return RpcClient.open(dconnuri)
    except VirError as err:
        raise operation_failed(f"Failed to connect to remote libvirt URI {dconnuri}: {err.message}") from None


def _prepare(peer: RpcClient, params: Params, cookie: bytes, flags: int) -> tuple[bytes, str | None]:
    p = Packer()
    _pack_params(p, params)
    p.opaque(cookie)
    p.uint(flags)
    ret = peer.call(Proc.DOMAIN_MIGRATE_PREPARE3_PARAMS, p.bytes())
    return ret.opaque(MIGRATE_COOKIE_MAX), ret.opt_string()


def _prepare_tunnel(peer: RpcClient, params: Params, cookie: bytes, flags: int) -> tuple[bytes, OutStream]:
    """PrepareTunnel3Params: the destination's VMM waits for the stream this call opens."""
    p = Packer()
    _pack_params(p, params)
    p.opaque(cookie)
    p.uint(flags)
    ret, serial = peer.call_serial(Proc.DOMAIN_MIGRATE_PREPARE_TUNNEL3_PARAMS, p.bytes())
    return ret.opaque(MIGRATE_COOKIE_MAX), OutStream(peer, Proc.DOMAIN_MIGRATE_PREPARE_TUNNEL3_PARAMS, serial)


def _finish(peer: RpcClient, params: Params, flags: int, cancelled: bool) -> DomainRef:
    p = Packer()
    _pack_params(p, params)
    p.opaque(b"")
    p.uint(flags)
    p.int(1 if cancelled else 0)
    return unpack_domain(peer.call(Proc.DOMAIN_MIGRATE_FINISH3_PARAMS, p.bytes()))


def perform_p2p(driver, dom: DomainRef, dconnuri: str, params: Params, flags: int) -> bytes:  # noqa: ANN001
    """The whole migration, driven from the source daemon; the source keeps running if any step fails."""
    if not dconnuri:
        raise invalid_arg("a peer-to-peer migration needs the destination's libvirt URI")
    params = dict(params)
    flags |= vir.VIR_MIGRATE_CHANGE_PROTECTION
    with _connect(dconnuri) as peer:
        cookie, xml = driver.migrate_begin(dom, params.get(vir.VIR_MIGRATE_PARAM_DEST_XML), flags)
        params[vir.VIR_MIGRATE_PARAM_DEST_XML] = xml
        params.setdefault(vir.VIR_MIGRATE_PARAM_DEST_NAME, dom.name)
        stream = None
        try:
            if flags & vir.VIR_MIGRATE_TUNNELLED:
                params.pop(vir.VIR_MIGRATE_PARAM_URI, None)  # the data goes through this connection
                cookie, stream = _prepare_tunnel(peer, params, cookie, flags)
            else:
                cookie, uri = _prepare(peer, params, cookie, flags)
                if uri:
                    params[vir.VIR_MIGRATE_PARAM_URI] = uri
        except VirError:
            driver.migrate_confirm(dom, flags, cancelled=True)
            raise
        try:
            driver.migrate_perform(dom, params.get(vir.VIR_MIGRATE_PARAM_URI), flags,
                                   int(params.get(vir.VIR_MIGRATE_PARAM_BANDWIDTH) or 0), stream)
        except VirError:
            try:
                _finish(peer, params, flags, cancelled=True)
            except VirError:
                pass  # the destination reports the cancelled migration as an error: ours is the one to return
            raise
        try:
            _finish(peer, params, flags, cancelled=False)
        except VirError:
            driver.migrate_confirm(dom, flags, cancelled=True)
            raise
        driver.migrate_confirm(dom, flags, cancelled=False)
    return b""
