"""Verdict kinds (conformance/verdicts.py): a known behaviour is satisfied only by the clause assertion.

The plugin is run for real, in a pytest subprocess over a small suite written here, and judged by the
report it writes: a harness error (a timeout, a broken fixture, a plain assert) inside a test with a known
behaviour is an error, never an xfail; behaviours are counted once however many tests observe them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conformance.verdicts import ClauseViolation, Known, VerdictError, clause_check, expect

REPO = Path(__file__).resolve().parents[1]

SUITE = '''
import pytest
from conformance.drivers.virtqueue import QueueTimeout
from conformance.verdicts import Known, clause_check, expect, known

WCE = Known(target="qemu", kind="must", behaviour="wce", sentence="5.2.5: the device MUST set writeback to 0",
            reason="keeps it at 1", component="virtio-blk")
OPEN = Known(target="qemu", kind="implementation-defined", behaviour="open", sentence="the device MAY present it",
             reason="accepts")
ABORT = Known(target="qemu", kind="must", behaviour="abort", sentence="the host bridge must return all ones",
              reason="reads 0", component="platform: host bridge")
OTHER = Known(target="refvm", kind="should", behaviour="other", sentence="the device SHOULD x", reason="y")

@pytest.fixture
def broken():
    raise RuntimeError("the fixture broke")

@pytest.mark.clause("s", "c1")
@pytest.mark.known(WCE)
@pytest.mark.parametrize("mode", ["a", "b", "c"])
def test_violation(mode):
    expect(False, "writeback is 1")

@pytest.mark.clause("s", "c1")
@pytest.mark.known(WCE)
def test_timeout():
    raise QueueTimeout("no used buffer within 2 s")

@pytest.mark.clause("s", "c2")
@pytest.mark.known(WCE)
def test_fixture_error(broken):
    expect(False, "never reached")

@pytest.mark.clause("s", "c2")
@pytest.mark.known(WCE)
def test_plain_assert():
    assert False, "a harness assert, not the clause's"

@pytest.mark.clause("s", "c3")
@pytest.mark.known(ABORT)
def test_fixed():
    expect(True, "")

@pytest.mark.clause("s", "c4")
def test_runtime(request, target):
    known(request, target, OPEN, OTHER)
    with clause_check():
        assert 1 == 2

@pytest.mark.clause("s", "c5")
@pytest.mark.verdict("erratum", "5.1.4: 0x01 for full duplex (the normative line's 0x00 is the typo)")
def test_erratum():
    pass

@pytest.mark.clause("s", "c5")
@pytest.mark.known(OTHER)
def test_other_target_only():
    pass
'''


def run_suite(tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    suite = tmp_path / "suite"
    suite.mkdir(exist_ok=True)
    (suite / "test_suite.py").write_text(SUITE)
    reports = tmp_path / "reports"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "-p", "conformance.plugin",
         f"--rootdir={suite}", str(suite), "--target=qemu", f"--report-dir={reports}", *extra],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    path = reports / "verdicts-qemu.json"
    assert path.exists(), proc.stdout + proc.stderr
    return proc, json.loads(path.read_text())


def test_only_the_clause_assertion_satisfies_a_known_behaviour(tmp_path: Path) -> None:
    proc, report = run_suite(tmp_path)
    out = proc.stdout
    verdicts = {t["test"].split("::", 1)[1]: t["verdict"] for t in report["tests"]}
    assert verdicts == {
        "test_violation[a]": "deviation", "test_violation[b]": "deviation", "test_violation[c]": "deviation",
        "test_timeout": "failed",  # QueueTimeout is a harness error, even inside a known behaviour's test
        "test_fixture_error": "failed",  # reported as a setup ERROR by pytest
        "test_plain_assert": "failed",
        "test_fixed": "failed",  # XPASS(strict): a fixed behaviour shows up
        "test_runtime": "implementation-defined",
        "test_erratum": "passed",
        "test_other_target_only": "passed",
    }, out  # fmt: skip
    assert "ERROR" in out and "test_fixture_error" in out and "the fixture broke" in out, out
    assert "FAILED" in out and "QueueTimeout" in out and "[XPASS(strict)]" in out, out
    assert proc.returncode == 1
    # one behaviour, however many tests observe it; the erratum test is counted under its kind
    counts = report["counts"]
    assert counts["behaviours"]["deviation"] == 1 and counts["behaviours"]["implementation-defined"] == 1
    assert counts["tests"]["deviation"] == 3 and counts["tests"]["failed"] == 4 and counts["tests"]["passed"] == 2
    assert report["by_kind"]["erratum"] == {"pass": 1, "fail": 0, "skip": 0, "not met": 0}
    assert report["by_kind"]["must"]["not met"] == 3
    abort = next(b for b in report["known_behaviours"] if b["behaviour"] == "abort")
    assert abort["component"] == "platform: host bridge"
    md = (tmp_path / "reports" / "clauses-qemu.md").read_text()
    assert "| deviation | 3 | 1 |" in md and "platform: host bridge" in md, md


def test_baseline_ranks_kinds(tmp_path: Path) -> None:
    """A clause reclassified from deviation to implementation-defined is no regression; one that was an
    implementation-defined difference and now fails is."""
    baseline = tmp_path / "baseline.json"
    rows = [{"spec": "s", "clause": "c4", "status": "deviation"}, {"spec": "s", "clause": "c1", "status": "should"}]
    baseline.write_text(json.dumps(rows))
    proc, _ = run_suite(tmp_path, f"--baseline={baseline}")
    assert "s c1: should -> fail" in proc.stdout
    assert "s c4:" not in proc.stdout


def test_expect_and_clause_check_raise_the_dedicated_type() -> None:
    with pytest.raises(ClauseViolation, match="x is 1"):
        expect(False, "x is 1")
    expect(True, "never")
    with pytest.raises(ClauseViolation), clause_check():
        assert 1 == 2
    with pytest.raises(KeyError), clause_check():
        raise KeyError("a harness error passes through unchanged")


@pytest.mark.parametrize(
    "kind,sentence,message",
    [
        ("must", "The driver MUST NOT accept a feature the device did not offer.", "device-side MUST"),
        ("must", "The device SHOULD set DEVICE_NEEDS_RESET.", "needs a MUST"),
        ("maybe", "The device MUST x.", "is not one of"),
        ("should", " ", "must quote the sentence"),
    ],
)
def test_declarations_are_checked(kind: str, sentence: str, message: str) -> None:
    with pytest.raises(VerdictError, match=message):
        Known(target="qemu", kind=kind, behaviour="b", sentence=sentence, reason="r")


def test_a_device_must_in_a_sentence_that_mentions_the_driver_is_a_deviation() -> None:
    Known(target="qemu", kind="must", behaviour="b", reason="r",
          sentence="If the driver does not accept it, the device MUST fail FEATURES_OK.")  # fmt: skip
