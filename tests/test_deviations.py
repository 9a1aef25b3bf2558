"""Proof that the conformance suites can fail: each deliberate deviation turns a named test red.

Every entry of refvm/deviations.py is switched on through a targets file (refvm with
`-global virtio-pci.x-deviation=NAME`), and the conformance test that guards that rule must fail; with no
deviation the same tests pass. A suite that has never been seen to fail proves nothing.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from refvm.deviations import KNOWN
from tests.conftest import kvm_available, require

REPO = Path(__file__).resolve().parents[1]

#: deviation -> the conformance test that must catch it.
CATCHERS = {
    "accept-invalid-features": "conformance/virtio/test_basic.py::test_features_ok_refused_for_bit_not_offered",
    "isr-not-cleared": "conformance/virtio/test_pci.py::test_isr_queue_bit_intx_and_read_to_clear",
    "blk-no-ro-feature": "conformance/virtio/test_blk.py::test_read_only_device",
    "used-len-zero": "conformance/virtio/test_split_ring.py::test_used_len_is_bytes_written",
    "pci-device-id-writable": "conformance/pci/test_header.py::test_identification_is_read_only",
    # under qtest (the suite's refvm) no page changed after the first pass is resent; under KVM the pages virtio
    # writes during pre-copy are not: tests/test_migration_kvm_virtio.py::test_deviation_migration_drop_dirty_loses_them
    "migration-drop-dirty": "conformance/migration/test_flow.py::test_pause_before_switchover_then_continue",
}


def run_conformance(tmp_path: Path, tests: list[str], deviation: str | None) -> subprocess.CompletedProcess[str]:
    args = f"[-global, virtio-pci.x-deviation={deviation}]" if deviation else "[]"
    targets = tmp_path / "targets.yaml"
    targets.write_text(f"targets:\n  refvm-dev:\n    kind: refvm\n    args: {args}\n")
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", *tests,
         f"--targets-file={targets}", "--target=refvm-dev", f"--report-dir={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_every_deviation_has_a_catcher() -> None:
    assert set(CATCHERS) == set(KNOWN)


def test_catchers_pass_without_deviations(tmp_path: Path) -> None:
    require(kvm_available(), "/dev/kvm is missing or not accessible")
    proc = run_conformance(tmp_path, list(CATCHERS.values()), None)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout


@pytest.mark.parametrize("deviation", sorted(CATCHERS))
def test_deviation_turns_its_test_red(tmp_path: Path, deviation: str) -> None:
    require(kvm_available(), "/dev/kvm is missing or not accessible")
    proc = run_conformance(tmp_path, [CATCHERS[deviation]], deviation)
    assert proc.returncode == 1, f"{deviation} was not caught:\n{proc.stdout[-3000:]}"
    assert "failed" in proc.stdout
