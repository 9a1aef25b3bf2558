"""virDomainOpenConsole: the serial pty as a libvirt stream (what `virsh console` reads and writes).

After the call's OK reply, the pty's output goes to the client as STREAM packets (status CONTINUE, raw bytes)
with the call's procedure and serial; the client's STREAM packets are written to the pty. The client ends with
a STREAM OK (answered with STREAM OK) or aborts with STREAM ERROR (answered with libvirt's "stream aborted at
client request" error); a pty that closes sends an empty CONTINUE packet, libvirt's end of file. As in libvirtd,
the stream stays registered after that end of file until the client finishes or aborts it: a client's final
packet that found no stream would go unanswered, and `virsh console` would wait for the answer forever.
"""
from __future__ import annotations

import errno
import os
import select
import threading

from refvm.mgmt import errors
from refvm.mgmt.dispatch import driver_of, procedure
from refvm.mgmt.rpc import message
from refvm.mgmt.rpc.message import Header
from refvm.mgmt.rpc.protocol import MsgType, Proc, Status
from refvm.mgmt.rpc.types import unpack_domain
from refvm.mgmt.rpc.xdr import Packer, Unpacker

CHUNK = 64 * 1024


class ConsoleStream:
    """Pumps one pty fd to and from one client stream."""

    def __init__(self, session, hdr: Header, fd: int) -> None:
        self.session = session
        self.hdr = hdr
        self.fd = fd
        self._closed = threading.Event()
        self._fd_lock = threading.Lock()  # the pump closes the fds; a client packet must not write a reused fd
        self._fds_open = True
        self._started = False
        self._rpipe, self._wpipe = os.pipe()

    def start(self) -> None:
        self._started = True
        threading.Thread(target=self._pump, name="refvmd-console", daemon=True).start()

    def _packet(self, status: int, data: bytes = b"") -> bytes:
        return message.encode(self.hdr.reply(status, MsgType.STREAM), data)

    def _pump(self) -> None:
        while not self._closed.is_set():
            try:
                ready, _, _ = select.select([self.fd, self._rpipe], [], [])
            except (OSError, ValueError):
                break
            if self._rpipe in ready:
                break
            try:
                data = os.read(self.fd, CHUNK)
            except BlockingIOError:
                continue
            except OSError as exc:
                data = b"" if exc.errno == errno.EIO else None  # EIO: the pty's other side closed
                if data is None:
                    break
            self.session.send(self._packet(Status.CONTINUE, data))
            if not data:
                break
        self._close_fds()  # the client's finish or abort (or its leaving) unregisters the stream

    def __call__(self, hdr: Header, payload: bytes) -> None:
        """A STREAM packet from the client."""
        if hdr.status == Status.CONTINUE:
            view = memoryview(payload)
            with self._fd_lock:
                while view and self._fds_open and not self._closed.is_set():
                    try:
                        n = os.write(self.fd, view)
                    except BlockingIOError:
                        select.select([], [self.fd], [], 1.0)
                        continue
                    except OSError:
                        break
                    view = view[n:]
            return
        if hdr.status == Status.OK:
            self.session.send(self._packet(Status.OK))
        else:
            err = errors.VirError(errors.VIR_ERR_RPC, "stream aborted at client request", domain=errors.VIR_FROM_RPC)
            self.session.send_error(self.hdr, err, MsgType.STREAM)
        self.close()

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        with self.session.lock:
            self.session.streams.pop(self.hdr.serial, None)
        with self._fd_lock:
            if self._fds_open:
                os.write(self._wpipe, b"x")  # wakes the pump, which closes the fds
        if not self._started:
            self._close_fds()

    def _close_fds(self) -> None:
        with self._fd_lock:
            if not self._fds_open:
                return
            self._fds_open = False
            for fd in (self.fd, self._rpipe, self._wpipe):
                try:
                    os.close(fd)
                except OSError:
                    pass


@procedure(Proc.DOMAIN_OPEN_CONSOLE)
def open_console(session, args: Unpacker, ret: Packer) -> None:
    dom = unpack_domain(args)
    dev_name = args.opt_string()
    flags = args.uint()
    fd = driver_of(session).open_console(dom, dev_name, flags)
    stream = ConsoleStream(session, session.current_call, fd)
    with session.lock:
        session.streams[session.current_call.serial] = stream
    session.after_reply = stream.start
