"""The destination's end of a tunnelled migration stream (PrepareTunnel3Params): each STREAM CONTINUE packet
from the source daemon is written into the VMM's incoming migration socket; STREAM OK ends the data (the VMM
sees its end; answered STREAM OK); STREAM ERROR, the client leaving or a failed write closes the socket, so the
VMM's incoming migration fails and Finish (cancelled) or the close callback kills it. Packets are handled on
the connection's reader thread, so a VMM that reads slowly slows the sender down (TCP-like backpressure)."""
from __future__ import annotations

from refvm.mgmt import errors
from refvm.mgmt.drivers.migration_tunnel import TunnelIn
from refvm.mgmt.rpc import message
from refvm.mgmt.rpc.message import Header
from refvm.mgmt.rpc.protocol import MsgType, Status


class TunnelStream:
    """Registered in Session.streams under the PrepareTunnel3Params call's serial."""

    def __init__(self, session, hdr: Header, sink: TunnelIn) -> None:  # noqa: ANN001 - a Session
        self.session, self.hdr, self.sink = session, hdr, sink
        self.closed = False

    def __call__(self, hdr: Header, payload: bytes) -> None:
        if self.closed:
            return
        if hdr.type == MsgType.STREAM and hdr.status == Status.CONTINUE:
            try:
                self.sink.write(payload)
            except OSError as exc:
                err = errors.VirError(errors.VIR_ERR_OPERATION_FAILED, "writing the migration stream to the "
                                      f"hypervisor failed: {exc.strerror or exc}", domain=errors.VIR_FROM_QEMU)
                self.session.send_error(self.hdr, err, MsgType.STREAM)
                self.close()
            return
        if hdr.type == MsgType.STREAM and hdr.status == Status.OK:
            self.sink.finish()
            self.session.send(message.encode(self.hdr.reply(Status.OK, MsgType.STREAM)))
        self.close()  # STREAM ERROR (the source aborted) or anything else ends it

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.sink.close()
        with self.session.lock:
            self.session.streams.pop(self.hdr.serial, None)
