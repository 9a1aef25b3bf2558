"""Statement coverage: catalog statements get the worst verdict of the tests that judge them."""

from __future__ import annotations

from conformance.coverage import _verdict_of, load_statements


def test_worst_verdict_wins_and_params_are_ignored() -> None:
    results = {
        "conformance/virtio/test_basic.py::test_a[blk]": "passed",
        "conformance/virtio/test_basic.py::test_a[rng]": "failed",
        "conformance/virtio/test_basic.py::test_b": "xfail",
        "conformance/virtio/test_basic.py::test_c": "skipped",
    }
    assert _verdict_of(["test_basic.py::test_a"], results) == "fail"
    assert _verdict_of(["test_basic.py::test_b", "test_basic.py::test_c"], results) == "deviation"
    assert _verdict_of(["test_basic.py::test_c"], results) == "skip"
    assert _verdict_of(["test_basic.py::test_zzz"], results) == "not run"


def test_every_catalog_loads_and_every_statement_has_a_verdict() -> None:
    statements = load_statements({}, {})
    specs = {s.spec for s in statements}
    assert {"virtio-1.2", "pci-3.0", "refvm-platform", "qmp"} <= specs
    assert all(s.text for s in statements)
    assert {s.verdict for s in statements} <= {"not run", "not applicable", "not covered"}
