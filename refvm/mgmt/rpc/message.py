"""Packets of libvirt's RPC: a 4-byte length (counting itself), a 24-byte header, then the payload.

Also the error reply body (virNetMessageError), filled as libvirt's virNetMessageSaveError fills it from a
virError raised by virReportError: str1 is the message template ("internal error: %s"), str2 the detail,
int1 = int2 = -1, dom and net absent.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from refvm.mgmt import errors
from refvm.mgmt.rpc.protocol import HEADER_SIZE, LEN_SIZE, MESSAGE_MAX, MsgType, Status
from refvm.mgmt.rpc.xdr import Packer, Unpacker, XdrError

_HEADER = struct.Struct(">IIiiII")


class FrameError(Exception):
    """The byte stream cannot be framed: libvirt closes the connection on these."""


@dataclass
class Header:
    """virNetMessageHeader."""

    prog: int
    vers: int
    proc: int
    type: int
    serial: int
    status: int

    def pack(self) -> bytes:
        return _HEADER.pack(self.prog & 0xFFFFFFFF, self.vers & 0xFFFFFFFF, self.proc, self.type,
                            self.serial & 0xFFFFFFFF, self.status & 0xFFFFFFFF)

    def reply(self, status: int = Status.OK, type_: int = MsgType.REPLY) -> Header:
        """The header of the answer to this call (same program, version, procedure and serial)."""
        return Header(self.prog, self.vers, self.proc, type_, self.serial, status)


def frame_length(word: bytes) -> int:
    """The body length announced by a length word; outside libvirt's limits the connection must close."""
    (total,) = struct.unpack(">I", word)
    if total < LEN_SIZE + HEADER_SIZE:
        raise FrameError(f"packet {total} bytes received from client too small, want {LEN_SIZE + HEADER_SIZE}")
    if total > LEN_SIZE + MESSAGE_MAX:
        raise FrameError(f"packet {total} bytes received from client too large, want {LEN_SIZE + MESSAGE_MAX}")
    return total - LEN_SIZE


def parse_header(body: bytes) -> Header:
    """The header of a packet body (length word already removed)."""
    if len(body) < HEADER_SIZE:
        raise FrameError("truncated message header")
    return Header(*_HEADER.unpack_from(body))


def encode(header: Header, payload: bytes = b"") -> bytes:
    """A complete packet: length word, header, payload."""
    total = LEN_SIZE + HEADER_SIZE + len(payload)
    if total > LEN_SIZE + MESSAGE_MAX:
        raise XdrError(f"message of {total} bytes exceeds the protocol's maximum")
    return struct.pack(">I", total) + header.pack() + payload


def error_template(code: int) -> str:
    """The format libvirt's virErrorMsg picks for a code when a detail is present (str1 of the error)."""
    return errors._MESSAGES.get(code, ("", "%s"))[1]


def encode_error(err: errors.VirError) -> bytes:
    """virNetMessageError for a VirError."""
    p = Packer()
    p.int(err.code)
    p.int(err.domain)
    p.opt_string(err.message)
    p.int(err.level)
    p.bool(False)  # dom: unused
    if err.detail:
        p.opt_string(error_template(err.code))
        p.opt_string(err.detail)
    else:
        p.opt_string(err.message)
        p.opt_string(None)
    p.opt_string(None)
    p.int(-1)
    p.int(-1)
    p.bool(False)  # net: unused
    return p.bytes()


def decode_error(data: bytes) -> tuple[int, int, str | None, int]:
    """(code, domain, message, level) of a virNetMessageError (tests read replies with it)."""
    u = Unpacker(data)
    code, domain, message, level = u.int(), u.int(), u.opt_string(), u.int()
    return code, domain, message, level


def rpc_error(detail: str) -> errors.VirError:
    """VIR_ERR_RPC from the RPC layer (VIR_FROM_RPC), as virnetserverprogram.c reports protocol misuse."""
    return errors.VirError(errors.VIR_ERR_RPC, detail, domain=errors.VIR_FROM_RPC)
