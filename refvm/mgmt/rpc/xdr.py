"""XDR (RFC 4506), the encoding of every libvirt RPC payload: big-endian 4-byte units, padded opaques.

Written for untrusted input: every read is bounds-checked and every variable-length item is capped, so a
malformed payload raises ``XdrError`` (the daemon answers libvirt's "Unable to decode message payload")
instead of allocating or crashing.
"""
from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

#: VIR_NET_MESSAGE_STRING_MAX: the longest string any libvirt message may carry.
STRING_MAX = 4194304


class XdrError(ValueError):
    """The bytes are not a valid XDR encoding of the expected type."""


def _pad(n: int) -> int:
    return (4 - n % 4) % 4


class Packer:
    """Appends XDR items to a byte buffer."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def bytes(self) -> bytes:
        return b"".join(self._parts)

    def int(self, v: int) -> None:
        self._parts.append(struct.pack(">i", v))

    def uint(self, v: int) -> None:
        self._parts.append(struct.pack(">I", v & 0xFFFFFFFF))

    def hyper(self, v: int) -> None:
        self._parts.append(struct.pack(">q", v))

    def uhyper(self, v: int) -> None:
        self._parts.append(struct.pack(">Q", v & 0xFFFFFFFFFFFFFFFF))

    def double(self, v: float) -> None:
        self._parts.append(struct.pack(">d", v))

    def bool(self, v: bool) -> None:
        self.int(1 if v else 0)

    def fopaque(self, data: bytes, size: int) -> None:
        """Fixed-length opaque (e.g. a 16-byte UUID)."""
        if len(data) != size:
            raise XdrError(f"fixed opaque of {size} bytes got {len(data)}")
        self._parts.append(data + b"\0" * _pad(size))

    def opaque(self, data: bytes) -> None:
        self.uint(len(data))
        self._parts.append(data + b"\0" * _pad(len(data)))

    def string(self, s: str) -> None:
        self.opaque(s.encode())

    def opt_string(self, s: str | None) -> None:
        """A ``string *`` (remote_string): present flag, then the string."""
        self.optional(s, self.string)

    def optional(self, v: T | None, pack: Callable[[T], None]) -> None:
        if v is None:
            self.bool(False)
        else:
            self.bool(True)
            pack(v)

    def array(self, items: list[T], pack: Callable[[T], None]) -> None:
        """A variable-length array ``T x<>``: count, then the items."""
        self.uint(len(items))
        for item in items:
            pack(item)

    def raw(self, data: bytes) -> None:
        """Bytes appended as they are (stream data is not XDR-encoded)."""
        self._parts.append(data)


class Unpacker:
    """Reads XDR items from a byte buffer; every read is checked against what is left."""

    def __init__(self, data: bytes, offset: int = 0) -> None:
        self._data = data
        self._pos = offset

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def _take(self, n: int) -> bytes:
        if n < 0 or self._pos + n > len(self._data):
            raise XdrError("truncated XDR data")
        chunk = self._data[self._pos:self._pos + n]
        self._pos += n
        return chunk

    def int(self) -> int:
        return struct.unpack(">i", self._take(4))[0]

    def uint(self) -> int:
        return struct.unpack(">I", self._take(4))[0]

    def hyper(self) -> int:
        return struct.unpack(">q", self._take(8))[0]

    def uhyper(self) -> int:
        return struct.unpack(">Q", self._take(8))[0]

    def double(self) -> float:
        return struct.unpack(">d", self._take(8))[0]

    def bool(self) -> bool:
        v = self.int()
        if v not in (0, 1):
            raise XdrError(f"boolean is {v}")
        return v == 1

    def fopaque(self, size: int) -> bytes:
        data = self._take(size)
        self._take(_pad(size))
        return data

    def opaque(self, limit: int = STRING_MAX) -> bytes:
        n = self.uint()
        if n > limit:
            raise XdrError(f"opaque of {n} bytes exceeds {limit}")
        return self.fopaque(n)

    def string(self, limit: int = STRING_MAX) -> str:
        try:
            return self.opaque(limit).decode()
        except UnicodeDecodeError as exc:
            raise XdrError("string is not UTF-8") from exc

    def opt_string(self) -> str | None:
        return self.optional(self.string)

    def optional(self, unpack: Callable[[], T]) -> T | None:
        return unpack() if self.bool() else None

    def array(self, unpack: Callable[[], T], limit: int) -> list[T]:
        n = self.uint()
        if n > limit:
            raise XdrError(f"array of {n} items exceeds {limit}")
        return [unpack() for _ in range(n)]
