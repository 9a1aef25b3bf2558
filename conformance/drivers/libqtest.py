"""libqtest's start-up: the test listens on a qtest socket AND a QMP socket, and the target connects to both.

That is how QEMU's own test library starts QEMU (`-qtest unix:PATH -qmp unix:PATH2`, both chardevs in client
mode), so a VMM that passes here can be driven by libqtest/libqos-style tests unchanged. The QMP side is a
plain JSON-lines client over the accepted socket (libqtest's qtest_qmp does the same): greeting, then
`qmp_capabilities`, then commands; events that arrive in between are kept.
"""

from __future__ import annotations

import json
import os
import select
import socket
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Self

from conformance.drivers.qtest import QtestError, QtestSession

if TYPE_CHECKING:
    from conformance.targets import Target


class QmpLineClient:
    """QMP over an already connected socket (the target dialled us)."""

    def __init__(self, sock: socket.socket, timeout: float = 10.0) -> None:
        self.sock = sock
        self.timeout = timeout
        self.events: list[dict[str, Any]] = []
        self._buf = b""
        self.greeting = self._read()
        if "QMP" not in self.greeting:
            raise QtestError(f"QMP greeting expected, got {self.greeting!r}")
        self.execute("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.sock], [], [], max(left, 0))
            if not ready:
                raise QtestError(f"no QMP message within {self.timeout:.0f}s")
            chunk = self.sock.recv(65536)
            if not chunk:
                raise QtestError("the target closed the QMP connection")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def request(self, command: str, **arguments: Any) -> dict[str, Any]:
        """Send a command; the whole reply object ({"return": ...} or {"error": ...})."""
        msg: dict[str, Any] = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            reply = self._read()
            if "event" in reply:
                self.events.append(reply)
                continue
            return reply

    def execute(self, command: str, **arguments: Any) -> Any:
        reply = self.request(command, **arguments)
        if "error" in reply:
            raise QtestError(f"QMP {command}: {reply['error']}")
        return reply["return"]


class LibqtestSession(QtestSession):
    """A qtest session whose target also dialled our QMP listener; `qmp` is that connection."""

    def start(self, target: Target, extra_args: Sequence[str] = (), start_timeout: float = 15.0) -> Self:
        qmp_dir = self._qmp_dir = os.path.join("/tmp", f"refvm-qmp-{os.getpid()}-{id(self)}")
        os.makedirs(qmp_dir, exist_ok=True)
        qmp_path = os.path.join(qmp_dir, "qmp.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(qmp_path)
            listener.listen(1)
            super().start(target, ["-qmp", f"unix:{qmp_path}", *extra_args], start_timeout)
            ready, _, _ = select.select([listener], [], [], start_timeout)
            if not ready:
                self.close()
                raise QtestError(self._describe("target connected to qtest but never to the QMP socket"))
            conn, _ = listener.accept()
        finally:
            listener.close()
            try:
                os.unlink(qmp_path)
                os.rmdir(qmp_dir)
            except OSError:
                pass
        self.qmp = QmpLineClient(conn, self.timeout)
        return self

    def close(self) -> None:
        qmp = getattr(self, "qmp", None)
        if qmp is not None:
            qmp.sock.close()
            self.qmp = None
        super().close()
