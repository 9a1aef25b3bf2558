"""Entropy device (VIRTIO 1.2 §5.4). QEMU's virtio-rng only serves requests while the machine runs, so the
machine is resumed with a firmware that only halts (see conftest.running_vm)."""

from __future__ import annotations

from collections.abc import Callable

from conformance.virtio.conftest import RNG_ARGS, Machine, clause

OPER = "Device Types / Entropy Device / Device Operation"


@clause(OPER)
def test_fills_buffer_with_random_bytes(running_vm: Callable[..., Machine]) -> None:
    machine = running_vm(*RNG_ARGS)
    dev, (vq,) = machine.ready("rng", size=8)
    samples = []
    for size in (1, 16, 64, 4096):
        c = vq.transact([], [size])
        assert 1 <= c.used.length <= size, f"used len {c.used.length} for a {size}-byte buffer"
        samples.append(c.data[0][: c.used.length])
    long = samples[-1]
    assert len(long) < 16 or len(set(long)) > 4, "a long sample is (nearly) constant"
    assert samples[2] != samples[3][: len(samples[2])], "two samples are identical"


@clause(OPER)
def test_chained_writable_buffers(running_vm: Callable[..., Machine]) -> None:
    machine = running_vm(*RNG_ARGS)
    dev, (vq,) = machine.ready("rng", size=8)
    c = vq.transact([], [8, 8, 8])
    assert 1 <= c.used.length <= 24
    assert b"".join(c.data)[: c.used.length] != bytes([0xA5]) * c.used.length
