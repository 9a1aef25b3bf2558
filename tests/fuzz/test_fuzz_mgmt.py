"""Fuzz: refvmd's untrusted inputs -- the domain XML parser and the RPC frame/XDR decoders.

Domain XML: raw text, and a valid domain with elements, attributes and texts replaced by generated ones,
either parse or raise :class:`VirError` (libvirt's error object, sent to the client); nothing else.
RPC: any 4-byte length word and any header bytes are accepted or refused with :class:`FrameError`; the
XDR unpacker refuses short or oversized input with :class:`XdrError`.
"""

from __future__ import annotations

from fuzzing import FUZZ, example
from hypothesis import given
from hypothesis import strategies as st

from refvm.mgmt.domain_xml import parse_domain
from refvm.mgmt.errors import VirError
from refvm.mgmt.rpc.message import FrameError, frame_length, parse_header
from refvm.mgmt.rpc.xdr import Unpacker, XdrError

TEMPLATE = (
    "<domain type='{type}'><name>{name}</name><memory unit='{unit}'>{mem}</memory><vcpu>{vcpu}</vcpu>"
    "<os><type arch='x86_64'>hvm</type></os><devices>{dev}</devices></domain>"
)
piece = st.one_of(st.text(max_size=12), st.sampled_from(["kvm", "qemu", "KiB", "GiB", "0", "-1", "1e9", "&amp;",
                                                          "99999999999999999999", "<x/>", "'", "\"", "]]>"]))
devices = st.sampled_from(["", "<disk type='file'><source file='/x'/><target dev='vda'/></disk>",
                           "<interface type='network'/>", "<serial type='pty'/>", "<bogus/>", "<disk/>"])
xml = st.one_of(
    st.text(max_size=200),
    st.builds(lambda t, n, u, m, v, d: TEMPLATE.format(type=t, name=n, unit=u, mem=m, vcpu=v, dev=d),
              piece, piece, piece, piece, piece, devices),
)


def test_fuzz_domain_xml() -> None:
    @FUZZ
    @given(text=xml, validate=st.booleans())
    def target(text: str, validate: bool) -> None:
        with example():
            try:
                parse_domain(text, validate=validate)
            except VirError:
                pass

    target()


def test_fuzz_rpc_frames() -> None:
    @FUZZ
    @given(word=st.binary(min_size=4, max_size=4), body=st.binary(max_size=64))
    def target(word: bytes, body: bytes) -> None:
        with example():
            try:
                assert frame_length(word) >= 0
            except FrameError:
                pass
            try:
                parse_header(body)
            except FrameError:
                pass
            u = Unpacker(body)
            for read in (u.int, u.uint, u.hyper, u.uhyper, u.bool, u.string, u.opaque, u.double):
                try:
                    read()
                except XdrError:
                    break

    target()
