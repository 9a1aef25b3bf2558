"""The conformance plugin's own machinery: targets files, baseline gating, clause verdicts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conformance.plugin import clause_status, compare_with_baseline
from conformance.target_file import TargetsFileError, load_targets_file

REPO = Path(__file__).resolve().parents[1]


def row(clause: str, status: str) -> dict:
    return {"spec": "s", "clause": clause, "status": status}


def test_clause_status_order() -> None:
    base = {"passed": 0, "failed": 0, "skipped": 0, "xfail": 0}
    assert clause_status({**base, "failed": 1, "passed": 3}) == "fail"
    assert clause_status({**base, "passed": 1, "skipped": 2}) == "pass"
    assert clause_status({**base, "xfail": 1, "skipped": 1}) == "deviation"
    assert clause_status({**base, "skipped": 1}) == "skip"


def test_baseline_flags_only_regressions() -> None:
    baseline = [row("a", "pass"), row("b", "skip"), row("c", "pass"), row("d", "deviation")]
    now = [row("a", "pass"), row("b", "pass"), row("c", "fail"), row("e", "fail")]
    assert compare_with_baseline(now, baseline) == ["s c: pass -> fail", "s d: deviation -> missing"]


def test_targets_file_loads_deviations(tmp_path: Path) -> None:
    path = tmp_path / "targets.yaml"
    path.write_text(
        "targets:\n"
        "  my-qemu:\n"
        "    kind: qemu\n"
        "    binary: /usr/bin/qemu-system-x86_64\n"
        "    args: [-cpu, qemu64]\n"
        "    deviations:\n"
        "      - {test: conformance/x.py::test_y, reason: documented, sentence: 'The device MUST do x.'}\n"
        "      - {test: conformance/x.py::test_z, kind: should, reason: r, sentence: s, behaviour: b,"
        " component: 'platform: bridge'}\n"
    )
    named = load_targets_file(str(path))["my-qemu"]
    assert named.target.name == "my-qemu" and named.target.extra_args == ["-cpu", "qemu64"]
    entry = named.deviation_for("conformance/x.py::test_y[param]")
    assert entry is not None and (entry.kind, entry.reason, entry.verdict) == ("must", "documented", "deviation")
    assert entry.behaviour == "conformance/x.py::test_y" and entry.applies_to("qemu", "my-qemu")
    other = named.deviation_for("conformance/x.py::test_z")
    assert other is not None
    assert (other.verdict, other.behaviour, other.component) == ("should", "b", "platform: bridge")
    assert named.deviation_for("conformance/x.py::test_yz") is None


@pytest.mark.parametrize(
    "text,message",
    [
        ("targets: 3\n", "expected a mapping with a 'targets' mapping"),
        ("targets:\n  t: {kind: bochs}\n", "targets.t.kind: must be 'refvm' or 'qemu'"),
        ("targets:\n  t: {kind: qemu, color: red}\n", "targets.t: unknown key(s) color"),
        (
            "targets:\n  t: {kind: qemu, deviations: [{test: x}]}\n",
            "targets.t.deviations[0]: needs 'test', 'sentence' and 'reason'",
        ),
        (
            "targets:\n  t: {kind: qemu, deviations: [{test: x, reason: r}]}\n",
            "targets.t.deviations[0]: sentence: a verdict of kind 'must' must quote the sentence",
        ),
        (
            "targets:\n  t: {kind: qemu, deviations: [{test: x, reason: r, sentence: 'The driver MUST NOT.'}]}\n",
            "targets.t.deviations[0]: sentence: a deviation needs a device-side MUST, not the driver's",
        ),
        (
            "targets:\n  t: {kind: qemu, deviations: [{test: x, reason: r, sentence: 'may do', kind: must}]}\n",
            "targets.t.deviations[0]: sentence: a deviation needs a MUST",
        ),
        (
            "targets:\n  t: {kind: qemu, deviations: [{test: x, reason: r, sentence: s, kind: maybe}]}\n",
            "targets.t.deviations[0]: kind 'maybe' is not one of must",
        ),
    ],
)
def test_targets_file_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "targets.yaml"
    path.write_text(text)
    with pytest.raises(TargetsFileError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_targets_file(str(path))


def test_baseline_regression_fails_the_run(tmp_path: Path) -> None:
    """A clause that passed in the baseline and no longer exists makes pytest exit non-zero."""
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps([row("no/such-clause", "pass")]))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "conformance/qmp/test_runstate.py",
         "-k", "greeting", "--target=qemu", f"--baseline={baseline}", f"--report-dir={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "s no/such-clause: pass -> missing" in proc.stdout
