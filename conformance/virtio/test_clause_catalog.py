"""Consistency of the virtio clause catalog (conformance/clauses/virtio-1.2.yaml) with the spec and the tests.

The clause report counts coverage from the tests' `clause` marks and this catalog, so both must name real
labels of conformance.tex, every catalogued test must exist, and every (test, label) mark must be listed
under that label. No target is started.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
import yaml

from conformance.plugin import require

HERE = Path(__file__).resolve().parent
CATALOG = HERE.parent / "clauses" / "virtio-1.2.yaml"
SPEC_DIR = HERE.parents[2] / "shared" / "specs" / "virtio-1.2"
#: Label prefixes of the device conformance targets in scope (conformance.tex, "Device Conformance").
IN_SCOPE = (
    "devicenormative:Basic Facilities of a Virtio Device",
    "devicenormative:Reserved Feature Bits",
    "devicenormative:Virtio Transport Options / Virtio Over PCI Bus",
    "devicenormative:Device Types / Network Device",
    "devicenormative:Device Types / Block Device",
    "devicenormative:Device Types / Console Device",
    "devicenormative:Device Types / Entropy Device",
    "devicenormative:Device Types / Memory Balloon Device",
)
LEVELS = {"MUST", "SHOULD", "MAY"}
VERDICTS = ("tests", "not_applicable", "not_covered")


@pytest.fixture(scope="module")
def spec_labels() -> set[str]:
    tex = SPEC_DIR / "conformance.tex"
    require(tex.exists(), f"VIRTIO 1.2 sources not found at {SPEC_DIR}")
    return set(re.findall(r"\\ref\{(devicenormative:[^}]*)\}", tex.read_text()))


@pytest.fixture(scope="module")
def catalog() -> dict:
    return yaml.safe_load(CATALOG.read_text())


@pytest.fixture(scope="module")
def marks() -> dict[str, set[str]]:
    """test id ('test_x.py::test_name') -> labels of its clause marks, read from the imported modules."""
    found: dict[str, set[str]] = {}
    for path in sorted(HERE.glob("test_*.py")):
        module = importlib.import_module(f"conformance.virtio.{path.stem}")
        for name, fn in vars(module).items():
            if name.startswith("test_") and callable(fn):
                labels = {m.args[1] for m in getattr(fn, "pytestmark", []) if m.name == "clause"}
                found[f"{path.name}::{name}"] = labels
    return found


def test_catalog_covers_exactly_the_labels_in_scope(catalog: dict, spec_labels: set[str]) -> None:
    assert catalog["spec"] == "virtio-1.2"
    in_scope = {label for label in spec_labels if label.startswith(IN_SCOPE)}
    assert len(in_scope) == 49
    assert set(catalog["clauses"]) == in_scope


def test_statements_are_well_formed(catalog: dict) -> None:
    for label, entry in catalog["clauses"].items():
        assert entry.get("section"), label
        assert entry["statements"], label
        for st in entry["statements"]:
            assert st["level"] in LEVELS, (label, st)
            verdicts = [v for v in VERDICTS if v in st]
            assert len(verdicts) == 1, f"{label}: {st['text']!r} needs exactly one of {VERDICTS}"
            if "tests" in st:
                assert st["tests"], (label, st)
            else:
                assert str(st[verdicts[0]]).strip(), f"{label}: {st['text']!r} gives no reason"


def test_catalogued_tests_exist(catalog: dict, marks: dict[str, set[str]]) -> None:
    for label, entry in catalog["clauses"].items():
        listed = [t for st in entry["statements"] for t in st.get("tests", [])] + entry.get("supplementary", [])
        for test in listed:
            assert test in marks, f"{label}: catalogued test {test} does not exist"
            assert label in marks[test], f"{test} is catalogued under {label} but has no clause mark for it"


def test_every_clause_mark_is_catalogued(catalog: dict, marks: dict[str, set[str]], spec_labels: set[str]) -> None:
    for test, labels in marks.items():
        if test.startswith("test_clause_catalog.py"):
            continue
        assert labels, f"{test} has no clause mark"
        for label in labels:
            assert label in spec_labels, f"{test}: {label!r} is not a label of conformance.tex"
            entry = catalog["clauses"].get(label)
            assert entry is not None, f"{test}: {label!r} is not in the catalog"
            listed = {t for st in entry["statements"] for t in st.get("tests", [])}
            listed |= set(entry.get("supplementary", []))
            assert test in listed, f"{test} is marked with {label!r} but not catalogued under it"
