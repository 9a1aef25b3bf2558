"""pagemap-based detection of never-touched RAM (refvm/migration/resident.py) on a real anonymous mapping."""
from __future__ import annotations

import mmap

from refvm.memory import _host_address
from refvm.migration.resident import PAGE, touched_chunks

CHUNK = 256  # pages


def test_only_chunks_with_a_touched_page_are_reported() -> None:
    size = 16 << 20
    mm = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        base = _host_address(mm)
        assert touched_chunks(base, size, CHUNK) == [False] * (size // PAGE // CHUNK)
        mm[5 * CHUNK * PAGE] = 1  # a write
        _ = mm[9 * CHUNK * PAGE + 4095]  # a read maps the zero page: it counts (it is present)
        mm[(16 * CHUNK - 1) * PAGE] = 2  # the last page of the last chunk
        chunks = touched_chunks(base, size, CHUNK)
        assert chunks is not None
        assert [i for i, held in enumerate(chunks) if held] == [5, 9, 15]
    finally:
        mm.close()


def test_unreadable_range_means_unknown() -> None:
    assert touched_chunks(1 << 62, 1 << 20, CHUNK) is None  # far past any mapping: pread returns short or fails
