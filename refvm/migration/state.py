"""Device state as data: a dataclass per device whose fields carry a versioned schema.

The idea of QEMU's VMStateDescription, in Python: one description per device from which encoding, decoding,
validation and the stream's vmdesc JSON all come, so they cannot disagree.  A device provides
`save() -> State` and `load(State)`; `load` receives a State that `decode` (or `validate`) has already checked
field by field, because on a destination every byte of it came from the stream and, before that, from a guest.
Loading assigns the device's attributes directly instead of going through register writes, whose side effects
(clearing FIFOs, re-arming interrupts) are for a guest's accesses, not for restoring them.

Field encodings are big-endian as in QEMU's vmstate: unsigned ints of 1, 2, 4 or 8 bytes, booleans as one byte,
byte strings with a be32 length, fixed arrays of unsigned ints; a nested State (`struct(cls)`, QEMU's VMS_STRUCT)
as its own fields, and a list of States (`struct_list(cls, max)`) as a be32 count then each one. Errors in a
nested field name its path, e.g. `queues[1].size`. Nested States have no version of their own on the wire: a
field's `since` is a version of the section that encloses it.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from refvm.migration.wire import Cursor, StreamError, be32

S = TypeVar("S", bound="DeviceState")


class StateError(StreamError):
    """A device state that fails its schema; one line naming the device and the field."""


@dataclass(frozen=True)
class Kind:
    """How one field is encoded, how big it is and which values its type allows."""

    vmdesc_type: str
    width: int = 0  # bytes per unsigned int (scalar or array element); 0 for bool and bytes
    count: int = 0  # array length; 0 for a scalar
    max_len: int = 0  # bytes (buffer) or States (struct list): the most allowed
    state: Any = None  # the DeviceState class of a struct or struct list
    is_list: bool = False

    def problem(self, name: str, value: Any) -> tuple[str, str] | None:
        """(field path, problem) for `value`, descending into nested States; None when it fits."""
        if self.state is None:
            found = self.check(value)
            return (name, found) if found else None
        items = value if self.is_list else (value,)
        if self.is_list:
            if not isinstance(value, tuple):
                return name, f"{type(value).__name__} is not a tuple"
            if len(value) > self.max_len:
                return name, f"{len(value)} entries, at most {self.max_len} allowed"
        for i, item in enumerate(items):
            path = f"{name}[{i}]" if self.is_list else name
            if not isinstance(item, self.state):
                return path, f"{type(item).__name__} is not {self.state.__name__}"
            nested = item.first_problem()
            if nested:
                return f"{path}.{nested[0]}", nested[1]
        return None

    def check(self, value: Any) -> str | None:
        """The problem with `value` for this scalar, array or buffer kind, or None when it fits."""
        if self.vmdesc_type == "bool":
            return None if isinstance(value, bool) else f"{value!r} is not a bool"
        if self.vmdesc_type == "buffer":
            if not isinstance(value, bytes):
                return f"{type(value).__name__} is not bytes"
            return None if len(value) <= self.max_len else f"{len(value)} bytes, at most {self.max_len} allowed"
        values = value if self.count else (value,)
        if self.count and (not isinstance(value, tuple) or len(value) != self.count):
            return f"{value!r} is not a tuple of {self.count}"
        limit = 1 << (8 * self.width)
        for v in values:
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < limit:
                return f"{v!r} outside 0..{limit - 1:#x}"
        return None

    def encode(self, value: Any) -> bytes:
        if self.state is not None:
            if self.is_list:
                return be32(len(value)) + b"".join(item.encode_fields() for item in value)
            return value.encode_fields()
        if self.vmdesc_type == "bool":
            return b"\x01" if value else b"\x00"
        if self.vmdesc_type == "buffer":
            return be32(len(value)) + value
        values = value if self.count else (value,)
        return b"".join(v.to_bytes(self.width, "big") for v in values)

    def decode(self, cur: Cursor, name: str, version: int = 1) -> Any:
        """One field from `cur`; a nested State's fields are read at the enclosing section's `version` (their
        `since` counts in the section's versions: a field added to a nested State bumps the section)."""
        if self.state is not None:
            if not self.is_list:
                return self.state.decode_fields(cur, version, name + ".")
            count = cur.be32(name + " count")
            if count > self.max_len:
                cur.pos -= 4
                raise cur.fail(name, f"{count} entries, at most {self.max_len} allowed")
            return tuple(self.state.decode_fields(cur, version, f"{name}[{i}].") for i in range(count))
        if self.vmdesc_type == "bool":
            raw = cur.u8(name)
            if raw > 1:
                cur.pos -= 1
                raise cur.fail(name, f"{raw} is not a bool (0 or 1)")
            return bool(raw)
        if self.vmdesc_type == "buffer":
            length = cur.be32(name + " length")
            if length > self.max_len:
                cur.pos -= 4
                raise cur.fail(name, f"{length} bytes, at most {self.max_len} allowed")
            return cur.take(length, name)
        values = tuple(int.from_bytes(cur.take(self.width, name), "big") for _ in range(self.count or 1))
        return values if self.count else values[0]

    def describe(self, name: str, value: Any) -> list[dict[str, Any]]:
        """vmdesc entries for this field as saved (a buffer is described as its length, then its bytes)."""
        if self.state is not None:  # QEMU's analyze-migration reads a struct by its own field list
            items = value if self.is_list else (value,)
            entries: list[dict[str, Any]] = []
            if self.is_list:
                entries.append({"name": name + "_count", "type": "uint32", "size": 4})
            described = [item.describe() for item in items]
            same = bool(items) and all(d == described[0] for d in described)
            for item, desc in zip(items, described[:1] if same and self.is_list else described, strict=False):
                entry = {"name": name, "type": "struct", "size": len(item.encode_fields()), "struct": desc}
                if same and self.is_list:
                    entry["array_len"] = len(items)  # identical layouts: one entry, as QEMU's arrays
                entries.append(entry)
            return entries
        if self.vmdesc_type == "buffer":
            return [{"name": name + "_len", "type": "uint32", "size": 4},
                    {"name": name, "type": "buffer", "size": len(value)}]
        entry: dict[str, Any] = {"name": name, "type": self.vmdesc_type, "size": self.width or 1}
        if self.count:
            entry["array_len"] = self.count
        return [entry]


U8, U16, U32, U64 = (Kind(f"uint{8 * w}", width=w) for w in (1, 2, 4, 8))
BOOL = Kind("bool")


def u8_array(count: int) -> Kind:
    return Kind("uint8", width=1, count=count)


def u16_array(count: int) -> Kind:
    return Kind("uint16", width=2, count=count)


def buffer(max_len: int) -> Kind:
    return Kind("buffer", max_len=max_len)


def struct(state: type[DeviceState]) -> Kind:
    """A nested State (QEMU's VMS_STRUCT): encoded as its fields, validated with its own schema."""
    return Kind("struct", state=state)


def struct_list(state: type[DeviceState], max_len: int) -> Kind:
    """A tuple of up to `max_len` nested States (e.g. one per virtqueue): be32 count, then each."""
    return Kind("struct", state=state, max_len=max_len, is_list=True)


def sfield(kind: Kind, default: Any, check: Callable[[Any], bool] | None = None, rule: str = "",
           since: int = 1) -> Any:
    """A State field: its kind, an extra `check` (described by `rule` in errors), the version it appeared in."""
    return dataclasses.field(default=default, metadata={"kind": kind, "check": check, "rule": rule, "since": since})


@dataclass
class DeviceState:
    """Base of every device's State; subclasses set VMSD_NAME and VERSION and declare fields with sfield()."""

    VMSD_NAME: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1

    def cross_check(self) -> tuple[str, str] | None:
        """A (field, problem) that no single field shows, e.g. a FIFO longer than the FIFO; None when fine."""
        return None

    def _fail(self, name: str, problem: str) -> StateError:
        return StateError(f"migration stream: section '{self.VMSD_NAME}': field '{name}': {problem}")

    def first_problem(self) -> tuple[str, str] | None:
        """The first (field path, problem) of this State, nested States included; None when all is well."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            found = f.metadata["kind"].problem(f.name, value)
            if found:
                return found
            if f.metadata["check"] is not None and not f.metadata["check"](value):
                return f.name, f"{value!r} is not {f.metadata['rule']}"
        return self.cross_check()

    def validate(self: S, where: str = "") -> S:
        """Check every field against its schema; returns self so `dev.load(state.validate())` reads well."""
        found = self.first_problem()
        if found:
            raise self._fail(*found) if not where else StateError(
                f"migration stream: {where}: field '{found[0]}': {found[1]}")
        return self

    def encode_fields(self) -> bytes:
        return b"".join(f.metadata["kind"].encode(getattr(self, f.name)) for f in dataclasses.fields(self))

    def encode(self) -> bytes:
        """The section payload (fields of the current VERSION, in declaration order)."""
        self.validate()
        return self.encode_fields()

    @classmethod
    def decode_fields(cls: type[S], cur: Cursor, version: int, prefix: str = "") -> S:
        """Read the fields written at `version` from `cur` (not validated yet); names in errors get `prefix`."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.metadata["since"] <= version:
                values[f.name] = f.metadata["kind"].decode(cur, prefix + f.name, version)
        return cls(**values)

    @classmethod
    def decode(cls: type[S], payload: bytes, version: int, where: str = "") -> S:
        """Parse and validate a payload written at `version`; fields newer than it keep their defaults.

        `where` names the section in errors (the stream's idstr, e.g. `0000:00:04.0/virtio-blk`); by
        default the State's VMSD_NAME."""
        cur = Cursor(payload)
        cur.where = f"section '{where or cls.VMSD_NAME}'"
        if not 1 <= version <= cls.VERSION:
            raise StateError(f"migration stream: {cur.where}: field 'version id': {version} not in 1..{cls.VERSION}")
        try:
            state = cls.decode_fields(cur, version)
        except StateError:
            raise
        except StreamError as exc:
            raise StateError(str(exc)) from None
        if not cur.at_end():
            raise StateError(f"migration stream: {cur.where}: field 'end': {len(payload) - cur.pos} extra bytes")
        return state.validate(cur.where)

    def describe(self) -> dict[str, Any]:
        """This state's vmdesc entry fields (name and instance are added by the stream writer)."""
        fields: list[dict[str, Any]] = []
        for f in dataclasses.fields(self):
            fields.extend(f.metadata["kind"].describe(f.name, getattr(self, f.name)))
        return {"vmsd_name": self.VMSD_NAME, "version": self.VERSION, "fields": fields}
