"""pytest hooks of the fuzz campaign: which target runs, its time and outcome, and reports/fuzz.md (see fuzzing.py)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared helpers and rigs
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fuzzing import EXAMPLES, _counts, _current  # noqa: E402

_rows: list[tuple[str, int, float, str, str]] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    _current[0] = item.nodeid
    t0 = time.monotonic()
    outcome = yield
    elapsed = time.monotonic() - t0
    exc = outcome.excinfo
    detail = "" if exc is None else "\n".join([repr(exc[1]), *getattr(exc[1], "__notes__", [])])[:6000]
    _rows.append((item.nodeid, _counts[item.nodeid], elapsed, "passed" if exc is None else "FAILED", detail))


def pytest_sessionfinish(session: pytest.Session) -> None:
    if not _rows:
        return
    out = Path(session.config.rootpath) / "reports" / "fuzz.md"
    out.parent.mkdir(exist_ok=True)
    lines = [
        f"# Fuzz campaign: REFVM_FUZZ_EXAMPLES={EXAMPLES}",
        "",
        "| target | examples run | seconds | outcome |",
        "|---|---:|---:|---|",
    ]
    lines += [f"| `{n}` | {c} | {t:.1f} | {o} |" for n, c, t, o, _ in _rows]
    found = [(n, d) for n, _c, _t, o, d in _rows if o != "passed"]
    lines += ["", f"Findings: {len(found)}", ""]
    for n, d in found:
        lines += [f"## {n}", "", "```", d, "```", ""]
    out.write_text("\n".join(lines) + "\n")
