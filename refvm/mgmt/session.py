"""One client connection of refvmd: reads packets, answers keepalive, dispatches calls, queues replies.

A reader thread takes packets off the socket and runs each call in turn; a writer thread sends everything
queued (replies, events, stream data), so driver threads that emit events never block on a slow client.
Malformed input follows libvirt's daemon: a bad length closes the connection; an unknown program, version
or procedure, or an undecodable payload, gets an RPC error reply and the connection stays up.
"""
from __future__ import annotations

import queue
import socket
import sys
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from refvm.mgmt import errors
from refvm.mgmt.rpc import message
from refvm.mgmt.rpc.message import FrameError, Header
from refvm.mgmt.rpc.protocol import (
    KEEPALIVE_PROGRAM,
    KEEPALIVE_PROTOCOL_VERSION,
    LEN_SIZE,
    REMOTE_PROGRAM,
    REMOTE_PROTOCOL_VERSION,
    KeepaliveProc,
    MsgType,
    Status,
)
from refvm.mgmt.rpc.xdr import Packer, Unpacker, XdrError

if TYPE_CHECKING:
    from refvm.mgmt.daemon import Daemon
    from refvm.mgmt.drivers.base import Driver

#: libvirtd's max_client_requests default: calls of one client that may run at once.
MAX_CLIENT_REQUESTS = 5

#: Stream packets from the client go to the handler registered for the call's serial.
StreamHandler = Callable[[Header, bytes], None]


class Session:
    """State of one client: its driver once opened, event callbacks, open streams."""

    def __init__(self, daemon: Daemon, sock: socket.socket) -> None:
        self.daemon = daemon
        self.sock = sock
        self.driver: Driver | None = None
        self.uri: str | None = None
        self.lock = threading.Lock()
        #: libvirt callback id -> (event id, domain uuid filter or None)
        self.callbacks: dict[int, tuple[int, bytes | None]] = {}
        self.sink_handle: int | None = None
        self.streams: dict[int, StreamHandler] = {}
        #: run when the client goes away (libvirt's close callbacks: a migration it started is cleaned up)
        self.on_close: list[Callable[[], None]] = []
        #: set once the writer stopped (client gone): later packets are dropped instead of queued
        self.closed = False
        # Calls run on a few worker threads (libvirt's max_client_requests, default 5), so a slow call does
        # not hold up keepalive answers or another thread's call; per-call state is thread-local.
        self._workers = ThreadPoolExecutor(max_workers=MAX_CLIENT_REQUESTS, thread_name_prefix="refvmd-call")
        self._call_state = threading.local()
        self._out: queue.Queue[bytes | None] = queue.Queue()
        self._handlers = daemon.handlers

    @property
    def current_call(self) -> Header:
        """The header of the call this worker thread is dispatching."""
        return self._call_state.hdr

    @property
    def after_reply(self) -> Callable[[], None] | None:
        """What to run once this call's reply is queued (a stream starts sending only then)."""
        return getattr(self._call_state, "after_reply", None)

    @after_reply.setter
    def after_reply(self, fn: Callable[[], None] | None) -> None:
        self._call_state.after_reply = fn

    # ---- sending ----------------------------------------------------------------------------------------

    def send(self, packet: bytes) -> None:
        """Queue a packet for the writer thread (safe from any thread, never blocks)."""
        if not self.closed:
            self._out.put(packet)

    def send_message(self, proc: int, payload: bytes) -> None:
        """A server-initiated MESSAGE of the REMOTE program (events), serial 0 as libvirt sends them."""
        hdr = Header(REMOTE_PROGRAM, REMOTE_PROTOCOL_VERSION, proc, MsgType.MESSAGE, 0, Status.OK)
        self.send(message.encode(hdr, payload))

    def send_error(self, hdr: Header, err: errors.VirError, type_: int = MsgType.REPLY) -> None:
        self.send(message.encode(hdr.reply(Status.ERROR, type_), message.encode_error(err)))

    def _writer(self) -> None:
        while True:
            packet = self._out.get()
            if packet is None:
                break
            try:
                self.sock.sendall(packet)
            except OSError:
                break
        self.closed = True
        self._shutdown_socket()

    # ---- receiving --------------------------------------------------------------------------------------

    def _recv_exact(self, n: int) -> bytes | None:
        """Exactly ``n`` bytes (received in place: stream data arrives in 256 KiB packets), None at EOF."""
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            try:
                k = self.sock.recv_into(view[got:])
            except OSError:
                return None
            if not k:
                return None
            got += k
        return bytes(buf) if n <= 64 else buf  # type: ignore[return-value]

    def serve(self) -> None:
        """Run the connection until the client leaves, breaks framing or closes it."""
        writer = threading.Thread(target=self._writer, name="refvmd-writer", daemon=True)
        writer.start()
        try:
            while True:
                word = self._recv_exact(LEN_SIZE)
                if word is None:
                    break
                try:
                    body = self._recv_exact(message.frame_length(word))
                except FrameError as exc:
                    self.daemon.log(f"client closed: {exc}")
                    break
                if body is None:
                    break
                self._handle(message.parse_header(body), body)
        finally:
            self._workers.shutdown(wait=True)
            self.cleanup()
            self._out.put(None)
            writer.join(timeout=5)

    def _handle(self, hdr: Header, body: bytes) -> None:
        if hdr.prog == KEEPALIVE_PROGRAM and hdr.vers == KEEPALIVE_PROTOCOL_VERSION and hdr.type == MsgType.MESSAGE:
            if hdr.proc == KeepaliveProc.PING:
                pong = Header(KEEPALIVE_PROGRAM, KEEPALIVE_PROTOCOL_VERSION, KeepaliveProc.PONG, MsgType.MESSAGE,
                              0, Status.OK)
                self.send(message.encode(pong))
            return
        if hdr.prog != REMOTE_PROGRAM or hdr.vers != REMOTE_PROTOCOL_VERSION:
            self.send_error(hdr, message.rpc_error(f"Cannot find program {_signed(hdr.prog)} version "
                                                   f"{_signed(hdr.vers)}"))
            return
        if hdr.type in (MsgType.STREAM, MsgType.STREAM_HOLE):
            handler = self.streams.get(hdr.serial)
            if handler is not None:
                handler(hdr, memoryview(body)[message.HEADER_SIZE:])
            return
        if hdr.type not in (MsgType.CALL, MsgType.CALL_WITH_FDS):
            return  # libvirt drops unexpected replies and messages without answering
        self._workers.submit(self._call, hdr, body)

    def _call(self, hdr: Header, body: bytes) -> None:
        self.daemon.log(f"call proc={hdr.proc} serial={hdr.serial}")
        if hdr.status != Status.OK:
            self.send_error(hdr, message.rpc_error(f"Unexpected message status {hdr.status}"))
            return
        handler = self._handlers.get(hdr.proc)
        if handler is None:
            self.send_error(hdr, message.rpc_error(f"unknown procedure: {hdr.proc}"))
            return
        self._call_state.hdr = hdr
        self.after_reply = None
        args = Unpacker(body, message.HEADER_SIZE + (4 if hdr.type == MsgType.CALL_WITH_FDS else 0))
        ret = Packer()
        try:
            handler(self, args, ret)
        except XdrError:
            self.send_error(hdr, message.rpc_error("Unable to decode message payload"))
            return
        except errors.VirError as err:
            self.send_error(hdr, err)
            return
        except Exception:  # a bug in refvmd: answer as libvirt does for an unset error, keep serving
            traceback.print_exc(file=sys.stderr)
            self.send_error(hdr, errors.VirError(errors.VIR_ERR_INTERNAL_ERROR,
                                                 "Library function returned error but did not set virError",
                                                 domain=errors.VIR_FROM_RPC))
            return
        self.send(message.encode(hdr.reply(), ret.bytes()))
        if self.after_reply is not None:
            self.after_reply()

    # ---- teardown ---------------------------------------------------------------------------------------

    def cleanup(self) -> None:
        """Forget event callbacks and streams of this client (the driver keeps running its domains)."""
        with self.lock:
            handle, self.sink_handle = self.sink_handle, None
            self.callbacks.clear()
            streams, self.streams = self.streams, {}
            closers, self.on_close = self.on_close, []
        if handle is not None and self.driver is not None:
            try:
                self.driver.remove_event_sink(handle)
            except errors.VirError:
                pass
        for fn in closers:
            try:
                fn()
            except errors.VirError:
                pass
        for closer in streams.values():
            close = getattr(closer, "close", None)
            if close is not None:
                close()

    def _shutdown_socket(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _signed(v: int) -> int:
    """libvirt prints program and version with %d: values above 2^31 appear negative."""
    return v - (1 << 32) if v & 0x80000000 else v
