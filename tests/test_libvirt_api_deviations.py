"""Proof that the libvirt_api suite can fail: each of refvmd's deliberate deviations turns a named test red.

refvmd is started by the suite (`--libvirt-uri=refvmd`) with `--x-deviation NAME`; the test that guards the
behaviour must fail, and without deviations the same tests pass.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from refvm.mgmt.deviations import KNOWN

REPO = Path(__file__).resolve().parents[1]
libvirt = pytest.importorskip("libvirt", reason="libvirt-python is not installed (.ci/setup installs it)")


def run_suite(tmp_path: Path, tests: list[str], deviation: str | None) -> subprocess.CompletedProcess[str]:
    command = f"{sys.executable} -m refvm.mgmt.refvmd" + (f" --x-deviation {deviation}" if deviation else "")
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests, "--libvirt-uri=refvmd",
         f"--refvmd-command={command}", f"--report-dir={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_catchers_pass_without_deviations(tmp_path: Path) -> None:
    proc = run_suite(tmp_path, sorted({test for _, test in KNOWN.values()}), None)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout


@pytest.mark.parametrize("deviation", sorted(KNOWN))
def test_deviation_turns_its_test_red(tmp_path: Path, deviation: str) -> None:
    proc = run_suite(tmp_path, [KNOWN[deviation][1]], deviation)
    assert proc.returncode == 1, f"{deviation} was not caught:\n{proc.stdout[-3000:]}"
    assert "failed" in proc.stdout


def test_unknown_deviation_is_refused() -> None:
    argv = [sys.executable, "-m", "refvm.mgmt.refvmd", "--x-deviation", "nope", "--socket", "/nonexistent/s"]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("refvmd: --x-deviation: unknown deviation(s) nope; known: ")
