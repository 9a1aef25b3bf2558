"""Pre-copy's grouping of dirty pages into runs (refvm/migration/precopy.py ``PreCopy._runs``), against the
page-by-page rule it replaces: adjacent pages in one region, at most PAGES_PER_PART a run, non-RAM skipped."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from refvm.migration.precopy import PAGES_PER_PART, PreCopy
from refvm.migration.wire import TARGET_PAGE_SIZE as PAGE

# Two regions as a PC has them (below the 3 GiB hole and above 4 GiB), concatenated in the RAM block.
REGIONS = [(0, 64 * PAGE, 0), (1024 * PAGE, 600 * PAGE, 64 * PAGE)]


def _reference(gpas: list[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    run_gpa = run_len = region_end = run_off = 0
    for gpa in gpas:
        if run_len and gpa == run_gpa + run_len and run_len < PAGES_PER_PART * PAGE and gpa < region_end:
            run_len += PAGE
            continue
        if run_len:
            runs.append((run_off, run_len))
        region = next((r for r in REGIONS if r[0] <= gpa < r[0] + r[1]), None)
        if region is None:
            run_len = 0
            continue
        region_end = region[0] + region[1]
        run_gpa, run_off, run_len = gpa, gpa - region[0] + region[2], PAGE
    if run_len:
        runs.append((run_off, run_len))
    return runs


def _runs(gpas: list[int]) -> list[tuple[int, int]]:
    precopy = PreCopy.__new__(PreCopy)  # only the grouping: no machine, no stream
    precopy.bases = REGIONS
    precopy._view = lambda gpa, length: memoryview(bytes(0))  # type: ignore[method-assign]
    return [(offset, length) for offset, length, _ in precopy._runs([gpa // PAGE for gpa in gpas])]


@settings(max_examples=300, deadline=None)
@given(st.sets(st.integers(0, 1700), max_size=700))
def test_runs_match_the_page_by_page_rule(pages: set[int]) -> None:
    gpas = sorted(p * PAGE for p in pages)
    assert _runs(gpas) == _reference(gpas)


def test_a_long_run_splits_into_parts_and_at_the_region_end() -> None:
    gpas = [p * PAGE for p in range(0, 64)] + [p * PAGE for p in range(1024, 1024 + 600)]
    runs = _runs(gpas)
    assert runs[0] == (0, 64 * PAGE)  # region 0 ends; region 1 is adjacent in the block but a new run
    assert runs[1] == (64 * PAGE, PAGES_PER_PART * PAGE)
    assert sum(length for _, length in runs) == len(gpas) * PAGE
    assert _runs([]) == []
