"""QMP, the QEMU Machine Protocol, server side: JSON commands and events over a unix socket.

The wire behaviour is QEMU 7.2's, observed on the installed QEMU and kept byte for byte where
a client could notice: the greeting, the capabilities-negotiation gate (every command but
``qmp_capabilities`` answers ``CommandNotFound`` until then), error classes and texts for bad
requests and bad arguments, ``id`` echo (first member of an error reply, last of a success),
events only to negotiated clients, ``\\r\\n`` after each message. That is what lets the
``qemu.qmp`` library and our conformance drivers talk to refvm and to QEMU alike.

Machine operations are not in here: the machine registers handlers (:meth:`QmpServer.register`)
with an argument schema that is validated the way QAPI's input visitor does it, so handlers only
ever see well-typed arguments. :class:`QmpMachineCommands` wires the run-state commands.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from refvm.monitor.sockets import Connection, StreamService

__all__ = ["QmpError", "QmpServer", "QmpMachineCommands", "JsonStreamer", "QEMU_VERSION", "PACKAGE"]

#: The QEMU release whose QMP we speak; clients gate features on it.
QEMU_VERSION = {"micro": 0, "minor": 2, "major": 7}
PACKAGE = "refvm-0.1.0"

#: Largest single JSON message we buffer, and deepest nesting (QEMU: 64 MiB, 1024).
MAX_MESSAGE = 4 << 20
MAX_NESTING = 1024

ArgSchema = dict[str, type | tuple[type, ...]]
Handler = Callable[[dict[str, Any]], object]


class QmpError(Exception):
    """Raise from a handler to answer ``{"error": {"class": error_class, "desc": desc}}``."""

    def __init__(self, desc: str, error_class: str = "GenericError") -> None:
        super().__init__(desc)
        self.desc = desc
        self.error_class = error_class


# ---- framing ------------------------------------------------------------------------------------------

_WS = b" \t\r\n"
_DELIM = b' \t\r\n{}[]",:'
_KEYWORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class JsonStreamer:
    """Cut a byte stream into top-level JSON texts, like QEMU's json-streamer.

    ``feed`` returns a list of ``(text, None)`` for complete values and ``(None, error)`` for
    framing errors; after an error the streamer starts afresh, so one bad message never wedges
    the connection. A raw control character inside a string is an error (as in QEMU's lexer),
    which is also what lets a client recover from an unterminated string by sending a newline.
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.buf = bytearray()
        self.depth = 0
        self.in_string = False
        self.escape = False
        self.bare = False  # accumulating a top-level scalar such as 42 or true

    def feed(self, data: bytes) -> list[tuple[bytes | None, str | None]]:
        out: list[tuple[bytes | None, str | None]] = []
        for byte in data:
            self._byte(byte, out)
            if len(self.buf) > MAX_MESSAGE:
                self._reset()
                out.append((None, "JSON token size limit exceeded"))
        return out

    def _emit(self, out: list[tuple[bytes | None, str | None]]) -> None:
        out.append((bytes(self.buf), None))
        self._reset()

    def _byte(self, b: int, out: list[tuple[bytes | None, str | None]]) -> None:
        if self.in_string:
            if b < 0x20:
                self._reset()
                out.append((None, "JSON parse error, invalid control character in string"))
                return
            self.buf.append(b)
            if self.escape:
                self.escape = False
            elif b == 0x5C:  # backslash
                self.escape = True
            elif b == 0x22:  # closing quote
                self.in_string = False
                if self.depth == 0:
                    self._emit(out)
            return
        if self.bare:
            if b not in _DELIM:
                self.buf.append(b)
                return
            self._emit(out)
        if b in _WS:
            if self.depth:
                self.buf.append(b)
            return
        if b in b"{[":
            self.depth += 1
            self.buf.append(b)
            if self.depth > MAX_NESTING:
                self._reset()
                out.append((None, "JSON nesting depth limit exceeded"))
        elif b in b"}]":
            if self.depth == 0:
                out.append((None, f"JSON parse error, stray '{chr(b)}'"))
                return
            self.depth -= 1
            self.buf.append(b)
            if self.depth == 0:
                self._emit(out)
        elif b == 0x22:
            self.in_string = True
            self.buf.append(b)
        else:
            self.buf.append(b)
            if self.depth == 0:
                self.bare = True


def _reject_constant(name: str) -> object:
    raise ValueError(f"invalid keyword '{name}'")


def parse_json(text: bytes) -> object:
    """Decode one JSON text; ValueError carries QEMU's ``JSON parse error, ...`` wording."""
    try:
        s = text.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("JSON parse error, invalid UTF-8 sequence in string") from None
    try:
        return json.loads(s, parse_constant=_reject_constant)
    except json.JSONDecodeError as err:
        word = _KEYWORD.match(s, err.pos)
        if word and word.group() not in ("true", "false", "null"):
            raise ValueError(f"JSON parse error, invalid keyword '{word.group()}'") from None
        raise ValueError(f"JSON parse error, {err.msg[:1].lower()}{err.msg[1:]}") from None
    except ValueError as err:
        raise ValueError(f"JSON parse error, {err}") from None


# ---- argument validation (QAPI input visitor rules) ----------------------------------------------------

_TYPE_NAMES: dict[type, str] = {
    str: "string", int: "integer", float: "number", bool: "boolean", dict: "object", list: "array",
    type(None): "null",
}  # fmt: skip


def _matches(value: object, t: type) -> bool:
    if t is bool:
        return isinstance(value, bool)
    if t is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if t is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, t)


def validate_args(schema: ArgSchema, args: dict[str, Any]) -> dict[str, Any]:
    """Check ``args`` against ``schema`` ({"name": type, "*optional": type}); QEMU's error texts.

    Members are visited in schema order (missing / wrong type), then leftovers are unexpected.
    """
    for key, types in schema.items():
        optional = key.startswith("*")
        name = key[1:] if optional else key
        if name not in args:
            if optional:
                continue
            raise QmpError(f"Parameter '{name}' is missing")
        options = types if isinstance(types, tuple) else (types,)
        if not any(_matches(args[name], t) for t in options):
            expected = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in options)
            raise QmpError(f"Invalid parameter type for '{name}', expected: {expected}")
    known = {k.lstrip("*") for k in schema}
    for name in args:
        if name not in known:
            raise QmpError(f"Parameter '{name}' is unexpected")
    return args


# ---- the server ------------------------------------------------------------------------------------------


@dataclass
class _Command:
    handler: Handler
    args: ArgSchema
    allow_oob: bool = False


class _Session:
    """One client's stream and negotiation state."""

    def __init__(self) -> None:
        self.streamer = JsonStreamer()
        self.negotiated = False
        self.oob = False


_NEGOTIATE_FIRST = "Expecting capabilities negotiation with 'qmp_capabilities'"


class QmpServer:
    """A QMP endpoint: listens on ``path`` (``server=True``) or dials it; any number of clients.

    Handlers run on the server's thread, one request at a time, and may raise :class:`QmpError`;
    any other exception becomes a ``GenericError`` with its text (the client must never see the
    connection die because of a handler bug).
    """

    def __init__(self, path: str, *, server: bool = True) -> None:
        self.path = path
        self._commands: dict[str, _Command] = {}
        self._lock = threading.Lock()
        #: The connection whose request is being handled (handlers run one at a time on the service thread),
        #: so getfd/add-fd can take the descriptors that came with it (SCM_RIGHTS).
        self.current: Connection | None = None
        self._service = StreamService(
            "qmp",
            listen_path=path if server else None,
            connect_path=None if server else path,
            on_connect=self._connected,
            on_data=self._received,
        )
        self.register("qmp_capabilities", self._qmp_capabilities, args={"*enable": list})
        self.register("query-version", lambda a: {"qemu": dict(QEMU_VERSION), "package": PACKAGE})
        self.register("query-commands", lambda a: [{"name": n} for n in self.command_names()])

    # ---- public API -----------------------------------------------------------------------------------

    def register(self, name: str, handler: Handler, *, args: ArgSchema | None = None,
                 allow_oob: bool = False) -> None:  # fmt: skip
        """Add (or replace) command ``name``; ``args`` maps "member"/"*optional" to type(s)."""
        with self._lock:
            self._commands[name] = _Command(handler, dict(args or {}), allow_oob)

    def unregister(self, name: str) -> None:
        with self._lock:
            self._commands.pop(name, None)

    def command_names(self) -> list[str]:
        with self._lock:
            return list(self._commands)

    def describe(self) -> list[tuple[str, ArgSchema, bool]]:
        """(name, argument schema, allow_oob) of every registered command: what query-qmp-schema reports."""
        with self._lock:
            return [(name, dict(c.args), c.allow_oob) for name, c in self._commands.items()]

    def emit_event(self, name: str, data: dict[str, Any] | None = None) -> None:
        """Broadcast an event to every negotiated client (any thread)."""
        now = time.time()
        seconds = int(now)
        msg: dict[str, Any] = {
            "timestamp": {"seconds": seconds, "microseconds": int((now - seconds) * 1_000_000)},
            "event": name,
        }
        if data is not None:
            msg["data"] = data
        self._service.broadcast(_encode(msg), lambda c: isinstance(c.state, _Session) and c.state.negotiated)

    def start(self) -> None:
        """Listen (or connect), then serve on a daemon thread."""
        self._service.start()

    def close(self) -> None:
        """Stop serving; safe to call from a handler (the reply still goes out)."""
        self._service.close()

    @property
    def client_count(self) -> int:
        return len(self._service.connections)

    # ---- socket callbacks (service thread) ------------------------------------------------------------

    def _connected(self, conn: Connection) -> None:
        conn.state = _Session()
        greeting = {"QMP": {"version": {"qemu": dict(QEMU_VERSION), "package": PACKAGE}, "capabilities": ["oob"]}}
        conn.send(_encode(greeting))

    def _received(self, conn: Connection, data: bytes) -> None:
        session = conn.state
        assert isinstance(session, _Session)
        for text, framing_error in session.streamer.feed(data):
            if framing_error is not None:
                reply: dict[str, Any] = _error("GenericError", framing_error)
            else:
                assert text is not None
                self.current = conn
                try:
                    reply = self._handle(session, text)
                finally:
                    self.current = None
            if not conn.send(_encode(reply)):
                return

    # ---- dispatch ----------------------------------------------------------------------------------

    def _handle(self, session: _Session, text: bytes) -> dict[str, Any]:
        try:
            request = parse_json(text)
        except ValueError as err:
            return _error("GenericError", str(err))
        if not isinstance(request, dict):
            return _error("GenericError", "QMP input must be a JSON object")
        try:
            result = self._dispatch(session, request)
        except QmpError as err:
            reply = _error(err.error_class, err.desc)
            return {"id": request["id"], **reply} if "id" in request else reply
        except Exception as err:  # a handler bug: report it, keep serving
            reply = _error("GenericError", f"{type(err).__name__}: {err}")
            return {"id": request["id"], **reply} if "id" in request else reply
        reply = {"return": {} if result is None else result}
        if "id" in request:
            reply["id"] = request["id"]
        return reply

    def _dispatch(self, session: _Session, request: dict[str, Any]) -> object:
        name = self._check_request(session, request)
        oob = "exec-oob" in request
        with self._lock:
            command = self._commands.get(name)
        if not session.negotiated and name != "qmp_capabilities":
            raise QmpError(_NEGOTIATE_FIRST, "CommandNotFound")
        if command is None:
            raise QmpError(f"The command {name} has not been found", "CommandNotFound")
        if oob and not command.allow_oob:
            raise QmpError(f"The command {name} does not support OOB")
        args = validate_args(command.args, request.get("arguments", {}))
        if name == "qmp_capabilities":
            return self._negotiate(session, args)
        return command.handler(args)

    @staticmethod
    def _check_request(session: _Session, request: dict[str, Any]) -> str:
        """QEMU's qmp_dispatch_check_obj: shape of the request object; returns the command name."""
        for key, value in request.items():
            if key in ("execute", "exec-oob"):
                if key == "exec-oob" and not session.oob:
                    raise QmpError("QMP input member 'exec-oob' is unexpected")
                if not isinstance(value, str):
                    raise QmpError(f"QMP input member '{key}' must be a string")
            elif key == "arguments":
                if not isinstance(value, dict):
                    raise QmpError("QMP input member 'arguments' must be an object")
            elif key != "id":
                raise QmpError(f"QMP input member '{key}' is unexpected")
        if "execute" in request and "exec-oob" in request:
            raise QmpError("QMP input member 'execute' clashes with 'exec-oob'")
        name = request.get("execute", request.get("exec-oob"))
        if name is None:
            raise QmpError("QMP input lacks member 'execute'")
        return name

    def _negotiate(self, session: _Session, args: dict[str, Any]) -> object:
        if session.negotiated:
            raise QmpError("Capabilities negotiation is already complete, command ignored", "CommandNotFound")
        enable = args.get("enable", [])
        for cap in enable:
            if cap != "oob":
                # QEMU 7.2's wording, 'null' included (its visitor loses the member name here)
                raise QmpError(f"Parameter 'null' does not accept value '{cap}'")
        session.oob = "oob" in enable
        session.negotiated = True
        return {}

    def _qmp_capabilities(self, args: dict[str, Any]) -> object:
        raise AssertionError("qmp_capabilities is dispatched per session")  # pragma: no cover


def _error(error_class: str, desc: str) -> dict[str, Any]:
    return {"error": {"class": error_class, "desc": desc}}


def _encode(msg: object) -> bytes:
    return json.dumps(msg).encode() + b"\r\n"


# ---- run-state commands ------------------------------------------------------------------------------


class MachineControl(Protocol):
    """What :class:`QmpMachineCommands` needs from a machine."""

    name: str | None

    def status(self) -> str: ...
    def pause(self, flush: bool = True) -> None: ...
    def resume(self) -> None: ...
    def reset(self) -> None: ...
    def quit(self) -> None: ...


class QmpMachineCommands:
    """Registers query-status, stop, cont, system_reset, quit, query-name and emits their events.

    Event rules follow QEMU 7.2: STOP only when a running VM stops, RESUME only when a stopped
    one starts, RESET/SHUTDOWN with ``{"guest": false, "reason": "host-qmp-..."}``.
    """

    def __init__(self, server: QmpServer, machine: MachineControl) -> None:
        self.server = server
        self.machine = machine
        server.register("query-status", self.query_status)
        server.register("stop", self.stop)
        server.register("cont", self.cont)
        server.register("system_reset", self.system_reset)
        server.register("quit", self.quit)
        server.register("query-name", self.query_name)

    def query_status(self, args: dict[str, Any]) -> dict[str, Any]:
        status = self.machine.status()
        return {"status": status, "singlestep": False, "running": status == "running"}

    def stop(self, args: dict[str, Any]) -> dict[str, Any]:
        was_running = self.machine.status() == "running"
        self.machine.pause()
        if was_running:
            self.server.emit_event("STOP")
        return {}

    def cont(self, args: dict[str, Any]) -> dict[str, Any]:
        status = self.machine.status()
        if status == "running":
            return {}
        if status in ("internal-error", "shutdown", "guest-panicked"):
            raise QmpError("Resetting the Virtual Machine is required")
        if status == "postmigrate":  # the source of a completed migration goes on: its devices froze at the cut
            from refvm.migration.job import thaw_devices

            thaw_devices(self.machine)
        self.machine.resume()
        self.server.emit_event("RESUME")
        return {}

    def system_reset(self, args: dict[str, Any]) -> dict[str, Any]:
        self.machine.reset()
        self.server.emit_event("RESET", {"guest": False, "reason": "host-qmp-system-reset"})
        return {}

    def quit(self, args: dict[str, Any]) -> dict[str, Any]:
        self.server.emit_event("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"})
        self.machine.quit()
        return {}

    def query_name(self, args: dict[str, Any]) -> dict[str, Any]:
        name = self.machine.name
        return {"name": name} if name else {}
