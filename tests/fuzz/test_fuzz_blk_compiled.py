"""Fuzz target: virtio-blk's compiled fast path (blk_fast.c) against the Python model (issue 15).

The generic queue target (test_fuzz_virtqueues.py) throws random descriptor tables at every device; almost
none of them is a well-formed blk request, so the C code would only ever see its first rejection. This
target generates request streams that are mostly well formed, each mutated in one hostile way (a buffer
outside RAM or across two RAM regions, a next index out of range, a loop, a short header, a status
descriptor missing or read-only, an out-of-range sector, an indirect table too big), and runs them through
two devices, one with the compiled path and one without. Besides "never crash, never hang", the finding is
any difference: guest RAM, the image, device status, interrupts and blockstats must be equal byte for byte,
so a hostile chain the C side took gets the same answer (IOERR, UNSUPP, NEEDS_RESET) as the reference.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fuzzing import FUZZ, example, require
from hypothesis import given
from hypothesis import strategies as st
from test_virtio_blk_fast import DISK_SECTORS, FEATS, assert_same, batches, run_stream, twins
from test_virtio_helpers import EVENT_IDX, INDIRECT

from refvm.virtio.devices import blk_fast_build


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    (tmp_path / "base.img").write_bytes(bytes((i * 7 + 3) & 0xFF for i in range(DISK_SECTORS * 512)))
    return tmp_path


def test_fuzz_blk_compiled_against_python(image_dir: Path) -> None:
    require(blk_fast_build.load() is not None, f"the compiled path cannot be built: {blk_fast_build.load_error()}")
    served = [0]

    @FUZZ
    @given(stream=batches, feats=st.sampled_from([0, EVENT_IDX, INDIRECT, EVENT_IDX | INDIRECT]))
    def target(stream, feats: int) -> None:
        with example():
            for name in ("fast.img", "slow.img"):
                (image_dir / name).unlink(missing_ok=True)
            fast, slow = twins(image_dir, FEATS | feats)
            try:
                for twin in (fast, slow):
                    run_stream(twin, stream)
                assert_same(fast, slow)
                served[0] += fast.dev.fast_requests_served
            finally:  # 10,000 examples: give back each example's image files and guest RAM
                for twin in (fast, slow):
                    twin.dev.backend.close()
                    twin.mem.close()

    target()
    assert served[0] > 0, "no generated request reached the compiled path: the target would test nothing"
