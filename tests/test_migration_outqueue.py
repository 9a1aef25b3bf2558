"""The source's background channel writer (refvm/migration/outqueue.py) over a real socket pair."""
from __future__ import annotations

import socket
import threading

import pytest

from refvm.migration.outqueue import DEPTH, QueuedWriter


def test_writes_arrive_in_order_and_flush_waits_for_them() -> None:
    a, b = socket.socketpair()
    got = bytearray()
    reader = threading.Thread(target=lambda: got.extend(b.makefile("rb").read()))
    reader.start()
    out = QueuedWriter(a.makefile("wb"))
    chunks = [bytes([i]) * (100_000 + i) for i in range(40)]
    for chunk in chunks:
        out.write(chunk)
    out.write(bytearray(b"tail"))  # a reusable buffer is copied when queued
    out.flush()
    out.stop()
    out.out.close()
    a.close()
    reader.join(10)
    b.close()
    assert bytes(got) == b"".join(chunks) + b"tail"


def test_a_dead_peer_fails_the_next_write_and_never_blocks_the_producer() -> None:
    a, b = socket.socketpair()
    b.close()  # the destination died
    out = QueuedWriter(a.makefile("wb", buffering=0))
    with pytest.raises(OSError):
        for _ in range(DEPTH * 10):  # more than the queue holds: the failed thread keeps draining it
            out.write(b"x" * 65536)
        out.flush()
    out.stop()
    a.close()
