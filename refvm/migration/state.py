"""Device state as data: a dataclass per device whose fields carry a versioned schema.

The idea of QEMU's VMStateDescription, in Python: one description per device from which encoding, decoding,
validation and the stream's vmdesc JSON all come, so they cannot disagree.  A device provides
`save() -> State` and `load(State)`; `load` receives a State that `decode` (or `validate`) has already checked
field by field, because on a destination every byte of it came from the stream and, before that, from a guest.
Loading assigns the device's attributes directly instead of going through register writes, whose side effects
(clearing FIFOs, re-arming interrupts) are for a guest's accesses, not for restoring them.

Field encodings are big-endian as in QEMU's vmstate: unsigned ints of 1, 2, 4 or 8 bytes, booleans as one byte,
byte strings with a be32 length, fixed arrays of unsigned ints.
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
    max_len: int = 0  # bytes: the longest allowed

    def check(self, value: Any) -> str | None:
        """The problem with `value` for this kind, or None when it fits."""
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
        if self.vmdesc_type == "bool":
            return b"\x01" if value else b"\x00"
        if self.vmdesc_type == "buffer":
            return be32(len(value)) + value
        values = value if self.count else (value,)
        return b"".join(v.to_bytes(self.width, "big") for v in values)

    def decode(self, cur: Cursor, name: str) -> Any:
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

    def validate(self: S) -> S:
        """Check every field against its schema; returns self so `dev.load(state.validate())` reads well."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            problem = f.metadata["kind"].check(value)
            if problem is None and f.metadata["check"] is not None and not f.metadata["check"](value):
                problem = f"{value!r} is not {f.metadata['rule']}"
            if problem:
                raise self._fail(f.name, problem)
        cross = self.cross_check()
        if cross:
            raise self._fail(*cross)
        return self

    def encode(self) -> bytes:
        """The section payload (fields of the current VERSION, in declaration order)."""
        self.validate()
        return b"".join(f.metadata["kind"].encode(getattr(self, f.name)) for f in dataclasses.fields(self))

    @classmethod
    def decode(cls: type[S], payload: bytes, version: int) -> S:
        """Parse and validate a payload written at `version`; fields newer than it keep their defaults."""
        cur = Cursor(payload)
        cur.where = f"section '{cls.VMSD_NAME}'"
        if not 1 <= version <= cls.VERSION:
            raise StateError(f"migration stream: {cur.where}: field 'version id': {version} not in 1..{cls.VERSION}")
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.metadata["since"] <= version:
                try:
                    values[f.name] = f.metadata["kind"].decode(cur, f.name)
                except StateError:
                    raise
                except StreamError as exc:
                    raise StateError(str(exc)) from None
        if not cur.at_end():
            raise StateError(f"migration stream: {cur.where}: field 'end': {len(payload) - cur.pos} extra bytes")
        return cls(**values).validate()

    def describe(self) -> dict[str, Any]:
        """This state's vmdesc entry fields (name and instance are added by the stream writer)."""
        fields: list[dict[str, Any]] = []
        for f in dataclasses.fields(self):
            fields.extend(f.metadata["kind"].describe(f.name, getattr(self, f.name)))
        return {"vmsd_name": self.VMSD_NAME, "version": self.VERSION, "fields": fields}
