"""Tunnelled migration's data path through the daemons (virsh migrate --p2p --tunnelled).

The VMMs never talk to each other. On the source, refvmd listens on a unix socket of its own and has the VMM
``migrate`` to it; a pump thread reads the stream and sends it as libvirt stream packets over the peer-to-peer
connection (PrepareTunnel3Params' stream). On the destination, the VMM waits in ``migrate-incoming`` on a unix
socket, refvmd connects to it and writes each packet it receives. Unix sockets work for any VMM that speaks
QEMU's migration URIs (QEMU and refvm), and a failure on either end closes the socket, so the VMM's own
migration fails and the usual recovery (source resumes, destination killed) follows.
"""
from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from pathlib import Path
from typing import Protocol

from refvm.mgmt.errors import VirError, operation_failed

#: how much the source pump reads from its VMM at once
READ_CHUNK = 1 << 20
#: how long the destination waits for its VMM's listening socket, the source for its VMM to connect
CONNECT_TIMEOUT_S = 10.0


class StreamSink(Protocol):
    """Where the source's pump sends the stream (refvm.mgmt.rpc.stream_client.OutStream)."""

    def send(self, data: bytes | memoryview) -> None: ...
    def finish(self) -> None: ...
    def abort(self) -> None: ...
    def kill(self) -> None: ...


def socket_path(run_dir: Path, tag: str) -> str:
    """A socket path in the daemon's run directory (unlinked first: a stale one from a crash is in the way)."""
    path = str(run_dir / f"mig-{tag}.sock")
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    return path


class TunnelIn:
    """Destination: the stream's packets written into the VMM's incoming migration socket."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while True:
            try:
                self.sock.connect(path)
                break
            except OSError as err:
                if time.monotonic() > deadline:
                    self.sock.close()
                    raise operation_failed(f"cannot connect to the hypervisor's incoming migration socket "
                                           f"{path}: {err.strerror or err}") from None
                time.sleep(0.02)
        self.closed = False

    def write(self, data: bytes | memoryview) -> None:
        self.sock.sendall(data)

    def finish(self) -> None:
        """The whole stream is in: the VMM sees its end."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self.close()

    def close(self) -> None:
        """Abort (or after finish): a VMM still reading sees a truncated stream and fails its migration."""
        if not self.closed:
            self.closed = True
            self.sock.close()


class TunnelOut:
    """Source: a listening socket for the VMM's ``migrate unix:PATH`` and the thread pumping it to the peer."""

    def __init__(self, path: str, sink: StreamSink) -> None:
        self.path, self.sink = path, sink
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.listener.bind(path)
            self.listener.listen(1)
        except OSError as err:
            self.listener.close()
            raise operation_failed(f"cannot listen for the migration stream on {path}: {err}") from None
        self.listener.settimeout(CONNECT_TIMEOUT_S)
        self.conn: socket.socket | None = None
        self.error: VirError | None = None
        self.thread = threading.Thread(target=self._pump, name="refvmd-tunnel", daemon=True)
        self.thread.start()

    @property
    def uri(self) -> str:
        return f"unix:{self.path}"

    def _pump(self) -> None:
        try:
            try:
                self.conn, _ = self.listener.accept()
            except OSError as err:
                raise operation_failed(f"the hypervisor did not connect to the tunnel: {err}") from None
            finally:
                self.listener.close()
                try:
                    os.unlink(self.path)
                except OSError:
                    pass
            self.conn.settimeout(None)
            buf = bytearray(READ_CHUNK)
            while True:
                try:
                    n = self.conn.recv_into(buf)
                except OSError as err:
                    raise operation_failed(f"reading the hypervisor's migration stream failed: {err}") from None
                if not n:
                    return  # the stream is ended by wait() once the VMM said it completed, aborted otherwise
                self.sink.send(memoryview(buf)[:n])
        except VirError as err:
            self.error = err
            self._close_conn()  # the VMM's migration fails on a closed socket

    def _close_conn(self) -> None:
        if self.conn is None:
            return
        with contextlib.suppress(OSError):
            self.conn.shutdown(socket.SHUT_RDWR)  # wakes a pump blocked in recv
        self.conn.close()

    def wait(self, timeout: float) -> None:
        """After the VMM completed: the rest of the stream reaches the peer, then its end, which it confirms."""
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise operation_failed("the tunnelled migration stream did not end")
        if self.error is not None:
            raise self.error
        self.sink.finish()

    def abort(self) -> None:
        """The migration failed here: stop the pump, then tell the peer (its VMM's incoming fails). A pump
        stuck sending to a peer that reads no more cannot be joined: the connection is cut instead, which the
        peer's close callbacks clean up after."""
        self._close_conn()
        try:
            self.listener.close()
        except OSError:
            pass
        self.thread.join(5.0)
        if self.thread.is_alive():
            self.sink.kill()
            self.thread.join(5.0)
        else:
            self.sink.abort()
