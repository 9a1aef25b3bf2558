"""Migration capabilities and parameters (refvm/migration/options.py) and fd: channels (channel.py)."""
from __future__ import annotations

import os
import socket

import pytest

from refvm.migration.channel import Listener, connect, split_uri
from refvm.migration.options import CAPABILITIES, MigrationOptions, OptionError


def test_defaults_are_qemus() -> None:
    opts = MigrationOptions()
    params = opts.query_parameters()
    assert params["downtime-limit"] == 300 and params["max-bandwidth"] == 128 << 20 and params["tls-creds"] == ""
    assert "block-bitmap-mapping" not in params
    assert [c["capability"] for c in opts.query_capabilities()] == list(CAPABILITIES)
    assert not any(c["state"] for c in opts.query_capabilities())


def test_refused_entry_applies_nothing() -> None:
    opts = MigrationOptions()
    with pytest.raises(OptionError, match="does not accept value 'bogus'"):
        opts.set_capabilities([{"capability": "events", "state": True}, {"capability": "bogus", "state": True}])
    assert not opts.cap("events")
    with pytest.raises(OptionError, match="range of 0 to"):
        opts.set_parameters({"max-bandwidth": 5, "downtime-limit": 2_000_001})
    assert opts.param("max-bandwidth") == 128 << 20


def test_unimplemented_capability_only_off() -> None:
    opts = MigrationOptions()
    opts.set_capabilities([{"capability": "xbzrle", "state": False}])
    with pytest.raises(OptionError, match="'xbzrle' is not supported by refvm"):
        opts.set_capabilities([{"capability": "xbzrle", "state": True}])


def test_unimplemented_parameter_only_at_its_default() -> None:
    opts = MigrationOptions()
    opts.set_parameters({"tls-creds": "", "tls-hostname": None, "multifd-channels": 2, "block-bitmap-mapping": []})
    with pytest.raises(OptionError, match="'multifd-channels' is not supported by refvm"):
        opts.set_parameters({"multifd-channels": 4})
    with pytest.raises(OptionError, match="'compress-wait-thread' is not supported"):
        opts.set_parameters({"compress-wait-thread": 1})  # a bool member: 1 is not true


def test_uint64_as_qemu_reads_it() -> None:
    opts = MigrationOptions()
    opts.set_parameters({"max-bandwidth": -1})  # a negative JSON integer wraps, as QEMU's visitor does
    assert opts.param("max-bandwidth") == (1 << 64) - 1
    for bad in (True, 1.0, "1", 1 << 64):
        with pytest.raises(OptionError, match="Parameter 'max-bandwidth' expects uint64"):
            opts.set_parameters({"max-bandwidth": bad})


def test_fd_channel_by_name_and_number() -> None:
    assert split_uri("fd:mig") == ("fd", "mig")
    a, b = socket.socketpair()
    fds = {"out": os.dup(a.fileno())}
    a.close()
    channel = connect("fd:out", fds.pop)
    incoming = Listener(f"fd:{os.dup(b.fileno())}").accept()  # digits: a descriptor number, no lookup
    b.close()
    channel.stream.write(b"QEVM")
    channel.close()
    assert incoming.stream.read() == b"QEVM"
    incoming.close()
    with pytest.raises(KeyError):
        connect("fd:never", {}.__getitem__)
