"""A model of a host power loss under a qcow2 image, for tests/test_qcow2_crash_order.py.

:class:`RecordingFile` is the image's :class:`HostFile` with every write, truncate, hole punch and sync
logged. A crash state is the file as of the last sync plus *any* subset of the writes issued since (the page
cache may have written back each one, or not, in any order). :func:`crash_states` enumerates them: every
subset of a short epoch (the operations between two syncs), and for a long one the prefixes, the single
omissions and random subsets.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field

from refvm.block.qcow2.hostfile import HostFile

Op = tuple  # ("w", offset, bytes) | ("t", size) | ("z", offset, length) | ("s",)

EXHAUSTIVE = 8  # epochs with at most this many operations: every subset
SAMPLES = 48  # random subsets of a longer epoch


class RecordingFile(HostFile):
    """A HostFile that logs what reaches the page cache (and what a sync makes durable)."""

    def __init__(self, path: str, readonly: bool) -> None:
        super().__init__(path, readonly)
        self.ops: list[Op] = []
        with open(path, "rb") as src:
            self.base = src.read()

    def pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        self.ops.append(("w", offset, bytes(data)))
        super().pwrite(offset, data)

    def pwritev(self, offset: int, buffers: object) -> None:
        self.ops.append(("w", offset, b"".join(bytes(b) for b in buffers)))  # type: ignore[attr-defined]
        super().pwritev(offset, buffers)  # type: ignore[arg-type]

    def truncate(self, size: int) -> None:
        self.ops.append(("t", size))
        super().truncate(size)

    def punch_hole(self, offset: int, length: int) -> None:
        self.ops.append(("z", offset, length))
        super().punch_hole(offset, length)

    def sync(self) -> None:
        self.ops.append(("s",))
        super().sync()


def apply(state: bytearray, ops: list[Op]) -> None:
    """Replay ``ops`` (in issue order) on ``state``."""
    for op in ops:
        if op[0] == "w":
            _, off, data = op
            if len(state) < off + len(data):
                state.extend(bytes(off + len(data) - len(state)))
            state[off : off + len(data)] = data
        elif op[0] == "t":
            del state[op[1] :]
            state.extend(bytes(op[1] - len(state)))
        elif op[0] == "z":
            _, off, length = op
            end = min(len(state), off + length)
            if end > off:
                state[off:end] = bytes(end - off)


def epochs(ops: list[Op]) -> list[list[Op]]:
    """The operations between syncs (the last epoch may be empty)."""
    out: list[list[Op]] = [[]]
    for op in ops:
        if op[0] == "s":
            out.append([])
        else:
            out[-1].append(op)
    return out


def _masks(n: int, rng: random.Random) -> Iterator[int]:
    if n <= EXHAUSTIVE:
        yield from range(1 << n)
        return
    full = (1 << n) - 1
    yield from ((1 << k) - 1 for k in range(n + 1))  # prefixes: a crash of the process
    yield from (full & ~(1 << k) for k in range(n))  # everything but one write
    yield from (rng.getrandbits(n) for _ in range(SAMPLES))


@dataclass
class CrashState:
    """One possible file after a power loss; ``synced_ops`` operations of the log were durable for sure."""

    data: bytes
    synced_ops: int


@dataclass
class Seen:
    """Distinct crash states already produced (equal files are checked once)."""

    hashes: set[int] = field(default_factory=set)

    def new(self, data: bytes) -> bool:
        key = hash(data)
        if key in self.hashes:
            return False
        self.hashes.add(key)
        return True


def crash_states(base: bytes, ops: list[Op], seed: int = 0) -> Iterator[CrashState]:
    """Every distinct crash state of the log (see the module docstring)."""
    rng = random.Random(seed)
    seen = Seen()
    durable = bytearray(base)
    done = 0
    for epoch in epochs(ops):
        for mask in _masks(len(epoch), rng):
            state = bytearray(durable)
            apply(state, [op for k, op in enumerate(epoch) if mask >> k & 1])
            data = bytes(state)
            if seen.new(data):
                yield CrashState(data, done)
        apply(durable, epoch)
        done += len(epoch) + 1
