"""QMP ``query-qmp-schema``, generated from the server's own command registry at each call.

Management tools (libvirt above all) probe the schema to learn which commands and arguments a VMM has. A
hand-written list would drift from what refvm dispatches; this one is built from :meth:`QmpServer.describe`,
so a command is in the schema exactly when refvm answers it, with exactly the argument members the dispatcher
validates. The shape is QEMU 7.2's SchemaInfo (qapi/introspect.json): builtin types by name, every other type
under a masked numeric name ("0", "1", ...), identical types shared, optional members with ``"default": null``.

What refvm cannot know from the registry it states honestly: return types are the builtin ``any`` (refvm's
handlers do not declare their reply shapes), and event data members are those of :data:`EVENTS`, the events
refvm emits (tests/test_qmp_platform.py checks the table against the source).
"""

from __future__ import annotations

import json
from typing import Any

from refvm.monitor.qmp import QmpServer

__all__ = ["EVENTS", "SchemaCommands", "build_schema"]

_BUILTINS = (("str", "string"), ("any", "value"), ("bool", "boolean"), ("int", "int"), ("null", "null"),
             ("number", "number"))  # fmt: skip
_PY_TYPES = {str: "str", int: "int", float: "number", bool: "bool", dict: "any", type(None): "null"}

#: Events refvm emits, with their data members ("*name" optional) as builtin type names.
EVENTS: dict[str, dict[str, str]] = {
    "SHUTDOWN": {"guest": "bool", "reason": "str"},
    "RESET": {"guest": "bool", "reason": "str"},
    "STOP": {},
    "RESUME": {},
    "POWERDOWN": {},
    "SUSPEND": {},
    "WAKEUP": {},
    "BALLOON_CHANGE": {"actual": "int"},
    "MIGRATION": {"status": "str"},
}


class _Builder:
    """Collects SchemaInfo entries, naming each distinct non-builtin type once."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = [{"name": n, "json-type": j, "meta-type": "builtin"} for n, j in _BUILTINS]
        self._names: dict[str, str] = {}

    def _named(self, body: dict[str, Any]) -> str:
        key = json.dumps(body, sort_keys=True)
        if key not in self._names:
            name = str(len(self._names))
            self._names[key] = name
            self.entries.append({"name": name, **body})
        return self._names[key]

    def type_of(self, t: object) -> str:
        if isinstance(t, tuple):
            if len(t) == 1:
                return self.type_of(t[0])
            return self._named({"meta-type": "alternate", "members": [{"type": self.type_of(x)} for x in t]})
        if t is list:
            name = "[any]"
            if name not in self._names:
                self._names[name] = name
                self.entries.append({"name": name, "element-type": "any", "meta-type": "array"})
            return name
        return _PY_TYPES.get(t, "any")  # type: ignore[arg-type]

    def object_type(self, members: list[tuple[str, str]]) -> str:
        out = []
        for key, type_name in members:
            if key.startswith("*"):
                out.append({"name": key[1:], "default": None, "type": type_name})
            else:
                out.append({"name": key, "type": type_name})
        return self._named({"members": out, "meta-type": "object"})


def build_schema(server: QmpServer) -> list[dict[str, Any]]:
    """The SchemaInfo list for everything ``server`` dispatches now, and the events refvm emits."""
    b = _Builder()
    empty = b.object_type([])
    commands = []
    for name, args, allow_oob in sorted(server.describe()):
        arg_type = b.object_type([(key, b.type_of(t)) for key, t in args.items()])
        entry: dict[str, Any] = {"name": name, "ret-type": "any", "meta-type": "command", "arg-type": arg_type}
        if allow_oob:
            entry["allow-oob"] = True
        commands.append(entry)
    events = []
    for name, members in EVENTS.items():
        events.append({"name": name, "meta-type": "event", "arg-type": b.object_type(list(members.items()))})
    assert empty == "0"
    return commands + events + b.entries


class SchemaCommands:
    """Registers ``query-qmp-schema`` on one server."""

    def __init__(self, server: QmpServer) -> None:
        self.server = server
        server.register("query-qmp-schema", lambda args: build_schema(server))
