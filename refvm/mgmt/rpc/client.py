"""A small client of libvirt's remote protocol, for refvmd talking to another daemon (peer-to-peer migration).

It speaks what libvirt's remote driver speaks on a unix socket (or plain TCP, as to libvirtd's listen_tcp):
the URI minus its transport in CONNECT_OPEN, one call at a time, replies matched by serial, server-initiated
messages (events, keepalive) skipped. An error reply becomes the VirError the peer sent, with its code,
domain and message unchanged.
"""
from __future__ import annotations

import itertools
import socket
import struct
from urllib.parse import parse_qs, urlsplit

from refvm.mgmt import errors
from refvm.mgmt.rpc import message
from refvm.mgmt.rpc.message import Header
from refvm.mgmt.rpc.protocol import LEN_SIZE, REMOTE_PROGRAM, REMOTE_PROTOCOL_VERSION, MsgType, Proc, Status
from refvm.mgmt.rpc.xdr import Packer, Unpacker

#: libvirtd's TCP port (listen_tcp)
TCP_PORT = 16509


def split_uri(uri: str) -> tuple[str | tuple[str, int], str]:
    """(unix socket path or (host, port), URI to open) of 'DRIVER+unix:///PATH?socket=SOCK' or
    'DRIVER+tcp://HOST[:PORT]/PATH': the remote driver's split."""
    parts = urlsplit(uri)
    driver, _, transport = parts.scheme.partition("+")
    name = f"{driver}://{parts.path}"
    if transport == "tcp" and parts.hostname:
        try:
            return (parts.hostname, parts.port or TCP_PORT), name
        except ValueError:
            pass  # a bad port: the error below
    if transport not in ("", "unix") or parts.netloc:
        raise errors.VirError(errors.VIR_ERR_NO_CONNECT, f"{uri}: refvmd connects to daemons on unix sockets "
                              "(DRIVER+unix:///PATH?socket=SOCK) or plain TCP (DRIVER+tcp://HOST[:PORT]/PATH)",
                              domain=errors.VIR_FROM_NONE)
    sockets = parse_qs(parts.query).get("socket")
    if sockets:
        path = sockets[0]
    else:
        from refvm.mgmt.daemon import default_socket
        path = str(default_socket(parts.path.strip("/") == "system"))
    return path, name


class RpcClient:
    """One connection to a libvirt-protocol daemon (refvmd or libvirtd)."""

    def __init__(self, target: str | tuple[str, int], timeout: float | None = None) -> None:
        unix = isinstance(target, str)
        self.sock = socket.socket(socket.AF_UNIX if unix else socket.AF_INET, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(target)
        except OSError:
            self.sock.close()
            raise
        self._serials = itertools.count(1)

    @classmethod
    def open(cls, uri: str, timeout: float | None = None) -> RpcClient:
        """Connect to the daemon named by ``uri`` and open its driver (CONNECT_OPEN)."""
        target, name = split_uri(uri)
        where = target if isinstance(target, str) else "{}:{}".format(*target)
        try:
            client = cls(target, timeout)
        except OSError as err:
            raise errors.VirError(errors.VIR_ERR_SYSTEM_ERROR, f"Failed to connect socket to '{where}': "
                                  f"{err.strerror or err}", domain=errors.VIR_FROM_RPC) from None
        try:
            p = Packer()
            p.opt_string(name)
            p.uint(0)
            client.call(Proc.CONNECT_OPEN, p.bytes())
        except BaseException:
            client.sock.close()
            raise
        return client

    def __enter__(self) -> RpcClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.call(Proc.CONNECT_CLOSE)
        except (errors.VirError, OSError):
            pass
        self.sock.close()

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise errors.VirError(errors.VIR_ERR_RPC, "End of file while reading data: Input/output error",
                                      domain=errors.VIR_FROM_RPC)
            buf += chunk
        return bytes(buf)

    def call(self, proc: int, payload: bytes = b"") -> Unpacker:
        """Send one call and return an Unpacker on its reply; an error reply raises the peer's VirError."""
        return self.call_serial(proc, payload)[0]

    def call_serial(self, proc: int, payload: bytes = b"") -> tuple[Unpacker, int]:
        """``call``, also returning the call's serial (a stream opened by the call carries it)."""
        serial = next(self._serials)
        hdr = Header(REMOTE_PROGRAM, REMOTE_PROTOCOL_VERSION, proc, MsgType.CALL, serial, Status.OK)
        try:
            self.sock.sendall(message.encode(hdr, payload))
        except OSError as err:
            raise errors.VirError(errors.VIR_ERR_RPC, f"Cannot write data: {err}", domain=errors.VIR_FROM_RPC) from None
        got, data = self.receive(MsgType.REPLY, serial)
        if got.status == Status.ERROR:
            raise peer_error(data)
        return Unpacker(data), serial

    def receive(self, type_: int, serial: int) -> tuple[Header, bytes]:
        """The next packet of ``type_`` for ``serial`` (others, events and keepalives, are skipped)."""
        while True:
            got, data = self.receive_one()
            if got.type == type_ and got.serial == serial:
                return got, data

    def receive_one(self) -> tuple[Header, bytes]:
        """The next packet from the peer: its header and payload."""
        try:
            body = self._recv_exact(message.frame_length(self._recv_exact(LEN_SIZE)))
            return message.parse_header(body), body[message.HEADER_SIZE:]
        except OSError as err:
            raise errors.VirError(errors.VIR_ERR_RPC, f"Cannot recv data: {err}", domain=errors.VIR_FROM_RPC) from None
        except message.FrameError as err:
            raise errors.VirError(errors.VIR_ERR_RPC, str(err), domain=errors.VIR_FROM_RPC) from None


def peer_error(data: bytes) -> errors.VirError:
    try:
        code, domain, text, level = message.decode_error(data)
    except (ValueError, struct.error):
        return errors.VirError(errors.VIR_ERR_RPC, "Unable to decode message payload", domain=errors.VIR_FROM_RPC)
    err = errors.VirError(code, None, domain=domain, level=level)
    err.message = text or err.message
    err.args = (err.message,)
    return err
