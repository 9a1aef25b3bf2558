"""Coverage by statement: the clause catalogs (conformance/clauses/*.yaml) against a run's verdicts.

A label is too coarse to say how much of a spec is judged: each catalog breaks every label into its
MUST/SHOULD statements, each naming the tests that check it (or why none does). A statement's verdict is
the worst of its tests' verdicts in this run; statements without tests keep the catalog's reason.
Catalog entries may be plain strings (then every test marked with the label judges them) or mappings
with `text`, `tests`, `not_applicable` or `not_covered`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import yaml

CLAUSES_DIR = Path(__file__).resolve().parent / "clauses"
#: Worst first: one failing test makes its statement fail.
VERDICT_ORDER = ("fail", "deviation", "should", "policy", "implementation-defined", "erratum", "pass", "skip",
                 "not run")  # fmt: skip
#: Test verdicts (conformance/report.py) as statement verdicts; a bare "xfail" is an old-style deviation.
_TEST_VERDICT = {"passed": "pass", "failed": "fail", "skipped": "skip", "xfail": "deviation",
                 **{v: v for v in VERDICT_ORDER}}  # fmt: skip


@dataclass
class Statement:
    spec: str
    clause: str
    text: str
    verdict: str  # one of VERDICT_ORDER | not applicable | not covered
    reason: str = ""


def _matches(ref: str, nodeid: str) -> bool:
    """Does the catalog's test reference (e.g. "test_basic.py::test_x") name this node (params ignored)?"""
    base = nodeid.split("[", 1)[0]
    ref = ref.split("[", 1)[0]
    return base == ref or base.endswith("/" + ref)


def _verdict_of(refs: list[str], results: dict[str, str]) -> str:
    seen = [_TEST_VERDICT[v] for nodeid, v in results.items() if any(_matches(r, nodeid) for r in refs)]
    if not seen:
        return "not run"
    return min(seen, key=VERDICT_ORDER.index)


def load_statements(results: dict[str, str], by_label: dict[tuple[str, str], list[str]]) -> list[Statement]:
    """Every statement of every catalog with its verdict in this run.

    `results` maps node ids to test verdicts (passed/failed/skipped or a not-met kind); `by_label` maps (spec, label)
    to the node ids carrying that clause mark, for catalog statements that name no tests of their own.
    """
    statements: list[Statement] = []
    for path in sorted(CLAUSES_DIR.glob("*.yaml")):
        catalog = yaml.safe_load(path.read_text()) or {}
        spec = catalog.get("spec", path.stem)
        for label, entry in (catalog.get("clauses") or {}).items():
            for item in (entry or {}).get("statements", []):
                if isinstance(item, str):
                    refs = by_label.get((spec, label), [])
                    verdict = _verdict_of(refs, results) if refs else "not run"
                    statements.append(Statement(spec, label, item, verdict))
                elif "not_applicable" in item:
                    statements.append(Statement(spec, label, item["text"], "not applicable", item["not_applicable"]))
                elif "not_covered" in item:
                    statements.append(Statement(spec, label, item["text"], "not covered", item["not_covered"]))
                else:
                    statements.append(Statement(spec, label, item["text"], _verdict_of(item.get("tests", []), results)))
    return statements


def summary(statements: list[Statement]) -> dict[str, Counter]:
    per_spec: dict[str, Counter] = {}
    for st in statements:
        per_spec.setdefault(st.spec, Counter())[st.verdict] += 1
    return per_spec


COLUMNS = ("pass", "fail", "deviation", "should", "policy", "implementation-defined", "erratum", "skip", "not run",
           "not covered", "not applicable")  # fmt: skip


def markdown(statements: list[Statement]) -> list[str]:
    """The coverage section of the clause report."""
    lines = ["", "## Coverage by statement", "", "| spec | statements | " + " | ".join(COLUMNS) + " |",
             "|---|---|" + "---|" * len(COLUMNS)]  # fmt: skip
    for spec, counts in sorted(summary(statements).items()):
        total = sum(counts.values())
        lines.append(f"| {spec} | {total} | " + " | ".join(str(counts.get(c, 0)) for c in COLUMNS) + " |")
    failing = [st for st in statements if st.verdict == "fail"]
    if failing:
        lines += ["", "Failing statements:", ""]
        lines += [f"- {st.spec} {st.clause}: {st.text}" for st in failing]
    return lines
