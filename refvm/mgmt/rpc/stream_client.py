"""The sending end of a libvirt stream opened by a call on an RpcClient (tunnelled migration's data path).

After the call's reply, data goes as STREAM packets (status CONTINUE) with the call's procedure and serial;
the end is an empty STREAM OK, which the server answers with STREAM OK (or STREAM ERROR carrying its
virError); an abort is an empty STREAM ERROR. A STREAM ERROR the server sends while data still flows (its
end failed) is noticed between packets, so the sender stops instead of pushing into a dead stream.
"""
from __future__ import annotations

import select
import socket
import struct

from refvm.mgmt import errors
from refvm.mgmt.rpc import message
from refvm.mgmt.rpc.client import RpcClient, peer_error
from refvm.mgmt.rpc.message import Header
from refvm.mgmt.rpc.protocol import LEN_SIZE, REMOTE_PROGRAM, REMOTE_PROTOCOL_VERSION, MsgType, Status

#: data per packet, as libvirt's streams send it (VIR_NET_MESSAGE_LEGACY_PAYLOAD_MAX)
CHUNK = 256 * 1024


def _rpc_error(text: str) -> errors.VirError:
    return errors.VirError(errors.VIR_ERR_RPC, text, domain=errors.VIR_FROM_RPC)


class OutStream:
    """Data to the peer over the stream that call ``serial`` of procedure ``proc`` opened."""

    def __init__(self, client: RpcClient, proc: int, serial: int) -> None:
        self.client, self.proc, self.serial = client, proc, serial
        self.done = False

    def _packet(self, status: int, data: bytes | memoryview = b"") -> None:
        """One packet: its length word and header, then the data as it is (no copy into one buffer)."""
        hdr = Header(REMOTE_PROGRAM, REMOTE_PROTOCOL_VERSION, self.proc, MsgType.STREAM, self.serial, status)
        head = message.encode(hdr)
        head = struct.pack(">I", len(head) + len(data)) + head[LEN_SIZE:]
        try:
            sent = self.client.sock.sendmsg([head, data])
            if sent < len(head):
                self.client.sock.sendall(head[sent:])
                sent = len(head)
            if sent - len(head) < len(data):
                self.client.sock.sendall(memoryview(data)[sent - len(head):])
        except OSError as err:
            self.done = True
            raise _rpc_error(f"Cannot write data: {err.strerror or err}") from None

    def _check_peer(self) -> None:
        """A packet waiting from the peer mid-stream can only be its error (or an event): raise the error."""
        sock = self.client.sock
        while select.select([sock], [], [], 0)[0]:
            got, data = self.client.receive_one()
            if got.type == MsgType.STREAM and got.serial == self.serial and got.status == Status.ERROR:
                self.done = True
                raise peer_error(data)

    def send(self, data: bytes | memoryview) -> None:
        for start in range(0, len(data), CHUNK):
            self._check_peer()
            self._packet(Status.CONTINUE, data[start:start + CHUNK])

    def finish(self, timeout: float = 60.0) -> None:
        """End the stream and wait for the peer's confirmation (its error, if its end failed); a peer that does
        not answer within ``timeout`` (a cable pulled at the very end) fails it instead of hanging the job."""
        self.done = True
        self._packet(Status.OK)
        self.client.sock.settimeout(timeout)
        try:
            got, data = self.client.receive(MsgType.STREAM, self.serial)
        finally:
            self.client.sock.settimeout(None)
        if got.status == Status.ERROR:
            raise peer_error(data)

    def abort(self) -> None:
        """Tell the peer the data will not all come (its VMM's incoming migration fails)."""
        if self.done:
            return
        self.done = True
        try:
            self._packet(Status.ERROR)
        except errors.VirError:
            pass  # the peer is gone already

    def kill(self) -> None:
        """Cut the whole connection (a sender is stuck in a send the peer no longer reads)."""
        self.done = True
        try:
            self.client.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
