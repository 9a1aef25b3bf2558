"""A small synchronous QMP client for refvmd: commands from any thread, events to a callback.

refvmd needs no asyncio here: each hypervisor gets one reader thread that routes replies to the waiting caller
(matched by ``id``) and events to ``on_event``; when the socket closes ``on_event(None, {})`` reports it, which
is how the driver learns that a hypervisor exited or crashed.
"""
from __future__ import annotations

import itertools
import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

EventCallback = Callable[[str | None, dict[str, Any]], None]


class QmpError(Exception):
    """The hypervisor answered with an error (QMP's class and desc)."""

    def __init__(self, klass: str, desc: str) -> None:
        super().__init__(desc)
        self.klass = klass
        self.desc = desc


class QmpClosed(Exception):
    """The monitor socket closed (the hypervisor exited) before a reply came."""


class QmpClient:
    """One QMP connection: ``connect`` waits for the socket, negotiates capabilities, then starts the reader."""

    def __init__(self, path: str, on_event: EventCallback) -> None:
        self.path = path
        self.on_event = on_event
        self.sock: socket.socket | None = None
        self._ids = itertools.count(1)
        self._pending: dict[str, list[Any]] = {}
        self._cond = threading.Condition()
        self._closed = False
        self._send_lock = threading.Lock()
        self.greeting: dict[str, Any] = {}

    def connect(self, timeout: float = 30.0, alive: Callable[[], bool] = lambda: True) -> None:
        """Connect (retrying until the hypervisor listens, ``timeout`` or ``alive()`` false) and negotiate."""
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(self.path)
                break
            except OSError:
                sock.close()
                if time.monotonic() > deadline or not alive():
                    raise QmpClosed(f"cannot connect to the monitor at {self.path}") from None
                time.sleep(0.02)
        sock.settimeout(max(1.0, deadline - time.monotonic()))
        self.sock = sock
        self._file = sock.makefile("rb")
        try:
            self._negotiate()
        except OSError as err:  # the hypervisor exited (reset) or hung (timeout) right after accepting
            sock.close()
            raise QmpClosed(f"the monitor failed during negotiation: {err}") from None
        sock.settimeout(None)
        threading.Thread(target=self._reader, name=f"qmp:{self.path}", daemon=True).start()

    def _negotiate(self) -> None:
        self.greeting = self._read_message() or {}
        if "QMP" not in self.greeting:
            raise QmpClosed("the monitor sent no QMP greeting")
        self._write({"execute": "qmp_capabilities", "id": "cap"})
        while True:
            msg = self._read_message()
            if msg is None:
                raise QmpClosed("the monitor closed during capabilities negotiation")
            if msg.get("id") == "cap":
                return

    def _read_message(self) -> dict[str, Any] | None:
        line = self._file.readline()
        if not line:
            return None
        try:
            msg = json.loads(line)
        except ValueError:
            return {}
        return msg if isinstance(msg, dict) else {}

    def _write(self, msg: dict[str, Any]) -> None:
        assert self.sock is not None
        with self._send_lock:
            self.sock.sendall(json.dumps(msg).encode() + b"\r\n")

    def _reader(self) -> None:
        try:
            while True:
                msg = self._read_message()
                if msg is None:
                    break
                if "event" in msg:
                    self.on_event(str(msg["event"]), msg.get("data") or {})
                elif "id" in msg:
                    with self._cond:
                        if msg["id"] in self._pending:
                            self._pending[msg["id"]].append(msg)
                            self._cond.notify_all()
        except OSError:
            pass
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self.on_event(None, {})

    def execute(self, command: str, arguments: dict[str, Any] | None = None, timeout: float = 30.0) -> Any:
        """Run one command and return its ``return`` value; QmpError for an error reply."""
        ident = f"r{next(self._ids)}"
        msg: dict[str, Any] = {"execute": command, "id": ident}
        if arguments:
            msg["arguments"] = arguments
        with self._cond:
            if self._closed:
                raise QmpClosed("the monitor is closed")
            self._pending[ident] = []
        try:
            self._write(msg)
        except OSError:
            raise QmpClosed("the monitor is closed") from None
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._pending[ident]:
                left = deadline - time.monotonic()
                if self._closed:
                    del self._pending[ident]
                    raise QmpClosed("the monitor closed before replying")
                if left <= 0:
                    del self._pending[ident]
                    raise TimeoutError(f"no reply to {command} within {timeout} s")
                self._cond.wait(left)
            reply = self._pending.pop(ident)[0]
        if "error" in reply:
            err = reply["error"]
            raise QmpError(str(err.get("class", "GenericError")), str(err.get("desc", "")))
        return reply.get("return")

    def close(self) -> None:
        """Drop the connection (the hypervisor keeps running)."""
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()
