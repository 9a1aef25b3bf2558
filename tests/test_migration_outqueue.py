"""The source's background channel writer (refvm/migration/outqueue.py) over a real socket pair."""
from __future__ import annotations

import socket
import threading
from collections.abc import Callable

import pytest

from refvm.migration.outqueue import DEPTH, QueuedWriter


def _received(produce: Callable[[QueuedWriter], None], send_buffer: int = 0) -> bytes:
    """What a reader at the other end of a socket pair gets from a QueuedWriter that ``produce`` fed, flushed."""
    a, b = socket.socketpair()
    if send_buffer:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
    got = bytearray()
    reader = threading.Thread(target=lambda: got.extend(b.makefile("rb").read()))
    reader.start()
    out = QueuedWriter(a.makefile("wb"))
    produce(out)
    out.flush()
    out.stop()
    out.out.close()
    a.close()
    reader.join(10)
    b.close()
    return bytes(got)


def test_writes_arrive_in_order_and_flush_waits_for_them() -> None:
    chunks = [bytes([i]) * (100_000 + i) for i in range(40)]

    def produce(out: QueuedWriter) -> None:
        for chunk in chunks:
            out.write(chunk)
        out.write(bytearray(b"tail"))  # a reusable buffer is copied when queued

    assert _received(produce) == b"".join(chunks) + b"tail"


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


def test_gather_lists_go_out_in_order_after_buffered_writes() -> None:
    """write_gather (pre-copy's parts: heads and views of guest RAM) keeps order with write, past IOV_MAX buffers
    a list and past what one writev takes (a 4 MiB view against a small socket buffer)."""
    from refvm.migration.outqueue import IOV_MAX

    big = bytes(range(256)) * (4 << 12)
    many = [bytes([i % 251]) * (i % 7 + 1) for i in range(IOV_MAX * 2 + 3)]

    def produce(out: QueuedWriter) -> None:
        out.write(b"head")
        out.write_gather([memoryview(big)[1:], b"mid", *many])
        out.unbounded()  # switchover: no bound from here on
        out.write(b"tail")

    got = _received(produce, send_buffer=65536)
    assert got == b"head" + big[1:] + b"mid" + b"".join(many) + b"tail"
