"""XDR (RFC 4506) as refvmd encodes libvirt's payloads: sizes, padding, round trips, bounds on bad input."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from refvm.mgmt.rpc.xdr import Packer, Unpacker, XdrError


def test_strings_are_length_prefixed_and_padded_to_four_bytes():
    p = Packer()
    p.string("abcde")
    assert p.bytes() == b"\0\0\0\x05abcde\0\0\0"


def test_optional_string_has_a_presence_word():
    p = Packer()
    p.opt_string(None)
    p.opt_string("x")
    assert p.bytes() == b"\0\0\0\0" + b"\0\0\0\x01" + b"\0\0\0\x01x\0\0\0"


@given(st.lists(st.tuples(st.integers(-2**31, 2**31 - 1), st.integers(0, 2**64 - 1), st.text(max_size=40),
                          st.binary(min_size=16, max_size=16))))
def test_round_trip(items):
    p = Packer()
    p.array(items, lambda t: (p.int(t[0]), p.uhyper(t[1]), p.string(t[2]), p.fopaque(t[3], 16)))
    u = Unpacker(p.bytes())
    assert u.array(lambda: (u.int(), u.uhyper(), u.string(), u.fopaque(16)), 1000) == items
    assert u.remaining == 0


@given(st.binary(max_size=64))
def test_arbitrary_bytes_never_crash_the_decoder(data):
    u = Unpacker(data)
    try:
        u.opt_string()
        u.array(u.string, 16)
    except XdrError:
        pass


def test_limits_refuse_oversized_items_before_reading_them():
    with pytest.raises(XdrError):
        Unpacker(b"\0\0\x10\0").opaque(limit=1024)
    with pytest.raises(XdrError):
        Unpacker(b"\xff\xff\xff\xff").array(lambda: 0, 100)
    with pytest.raises(XdrError):
        Unpacker(b"\0\0\0\x08abc").string()
