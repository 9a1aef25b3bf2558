"""The clause report of a run: verdicts per clause, per kind and per known target behaviour; baseline gating.

Written to `reports/`: `clauses-<target>.json` (one row per clause; what `--baseline` reads),
`statements-<target>.json` (catalog statements), `verdicts-<target>.json` (counts by kind, every known
behaviour once with the tests that observed it, every test's verdict) and `clauses-<target>.md` (all of it).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from conformance.coverage import load_statements
from conformance.coverage import markdown as coverage_markdown
from conformance.verdicts import KINDS

#: Verdicts of a target that did not meet a test's expectation, worst first.
NOT_MET_VERDICTS = ("deviation", "should", "policy", "implementation-defined", "erratum")
#: How good a clause verdict is; a clause whose rank drops against the baseline is a regression. A clause
#: re-classified from deviation to a milder kind ranks higher, so it never reads as a regression.
STATUS_RANK = {"fail": 0, "skip": 1, "deviation": 2, "should": 3, "policy": 4, "implementation-defined": 5,
               "erratum": 6, "pass": 7}  # fmt: skip
COUNT_KEYS = ("passed", "failed", "skipped", *NOT_MET_VERDICTS)


@dataclass
class TestVerdict:
    """One test's verdict on this run's target and what it rests on."""

    nodeid: str
    verdict: str  # passed | failed | skipped | one of NOT_MET_VERDICTS
    kind: str = "must"
    sentence: str = ""
    known: dict[str, str] = field(default_factory=dict)  # the Known entry applied on this target, if any
    clauses: list[tuple[str, str]] = field(default_factory=list)


def clause_status(counts: dict[str, int]) -> str:
    """A failure decides; then the worst kind of not-met expectation; then pass; nothing ran: skip.

    Old-style counts with only `xfail` (no kinds) read as deviations."""
    if counts.get("failed"):
        return "fail"
    for verdict in NOT_MET_VERDICTS:
        if counts.get(verdict):
            return verdict
    if counts.get("xfail") and not any(counts.get(v) for v in NOT_MET_VERDICTS):
        return "deviation"
    if counts.get("passed"):
        return "pass"
    return "skip"


def compare_with_baseline(rows: list[dict], baseline: list[dict]) -> list[str]:
    """Clauses that got worse than in the baseline (or vanished), as one line each."""
    now = {(r["spec"], r["clause"]): r["status"] for r in rows}
    worse = []
    for old in baseline:
        key = (old["spec"], old["clause"])
        status = now.get(key, "missing")
        if status == "missing" or STATUS_RANK[status] < STATUS_RANK.get(old["status"], STATUS_RANK["pass"]):
            worse.append(f"{old['spec']} {old['clause']}: {old['status']} -> {status}")
    return worse


def clause_rows(tests: list[TestVerdict], target: str) -> list[dict]:
    by_clause: dict[tuple[str, str], list[TestVerdict]] = {}
    for t in tests:
        for key in t.clauses:
            by_clause.setdefault(key, []).append(t)
    rows = []
    for (spec, label), members in sorted(by_clause.items()):
        counts = {k: sum(1 for t in members if t.verdict == k) for k in COUNT_KEYS}
        counts["xfail"] = sum(counts[v] for v in NOT_MET_VERDICTS)
        rows.append({"spec": spec, "clause": label, "target": target, "status": clause_status(counts), **counts,
                     "tests": [t.nodeid for t in members]})  # fmt: skip
    return rows


def by_kind(tests: list[TestVerdict]) -> dict[str, dict[str, int]]:
    """Tests per kind of expectation and outcome: {kind: {pass, fail, skip, not met}}."""
    table = {k: Counter() for k in KINDS}
    for t in tests:
        outcome = {"passed": "pass", "failed": "fail", "skipped": "skip"}.get(t.verdict, "not met")
        table[t.kind][outcome] += 1
    return {k: {o: c[o] for o in ("pass", "fail", "skip", "not met")} for k, c in table.items()}


def behaviours(tests: list[TestVerdict]) -> list[dict]:
    """Each known target behaviour once, with the tests that observed it (met or not) on this run."""
    seen: dict[str, dict] = {}
    for t in tests:
        if t.known:
            entry = seen.setdefault(t.known["behaviour"], {**t.known, "tests": {}})
            entry["tests"][t.nodeid] = t.verdict
    return [seen[k] for k in sorted(seen, key=lambda b: (NOT_MET_VERDICTS.index(seen[b]["verdict"]), b))]


def summary(tests: list[TestVerdict]) -> dict[str, object]:
    """Verdict counts: tests per verdict, and distinct behaviours per not-met verdict."""
    per_test = Counter(t.verdict for t in tests)
    behav = Counter(b["verdict"] for b in behaviours(tests) if any(v in NOT_MET_VERDICTS for v in b["tests"].values()))
    return {"tests": {v: per_test.get(v, 0) for v in COUNT_KEYS},
            "behaviours": {v: behav.get(v, 0) for v in NOT_MET_VERDICTS}}  # fmt: skip


def _markdown(target: str, rows: list[dict], tests: list[TestVerdict], statement_lines: list[str]) -> str:
    counts = summary(tests)
    lines = [f"# Clause report: {target}", "", "## Verdicts", "",
             "| verdict | tests | distinct target behaviours |", "|---|---|---|"]  # fmt: skip
    for v in COUNT_KEYS:
        behav = counts["behaviours"].get(v, "")  # type: ignore[union-attr]
        lines.append(f"| {v} | {counts['tests'][v]} | {behav} |")  # type: ignore[index]
    lines += ["", "Tests by the kind of statement they rest on:", "",
              "| kind | pass | fail | skip | not met |", "|---|---|---|---|---|"]  # fmt: skip
    for kind, c in by_kind(tests).items():
        lines.append(f"| {kind} | {c['pass']} | {c['fail']} | {c['skip']} | {c['not met']} |")
    known = behaviours(tests)
    if known:
        lines += ["", "## Known target behaviours", "",
                  "| verdict | behaviour | of | what the target does | rests on | tests |", "|---|---|---|---|---|---|"]
        for b in known:
            names = ", ".join(f"`{n.split('::', 1)[-1]}` ({v})" for n, v in b["tests"].items())
            lines.append(f"| {b['verdict']} | {b['behaviour']} | {b['component'] or 'device under test'} | "
                         f"{b['reason']} | {b['sentence']} | {names} |")
    lines += ["", "## Clauses", "", "| spec | clause | status | pass | fail | skip | " +
              " | ".join(NOT_MET_VERDICTS) + " |", "|---|---|---|---|---|---|" + "---|" * len(NOT_MET_VERDICTS)]
    for r in rows:
        lines.append(f"| {r['spec']} | {r['clause']} | {r['status']} | {r['passed']} | {r['failed']} | "
                     f"{r['skipped']} | " + " | ".join(str(r[v]) for v in NOT_MET_VERDICTS) + " |")
    return "\n".join(lines + statement_lines) + "\n"


def write(out: Path, target: str, tests: list[TestVerdict], results: dict[str, str]) -> tuple[Path, list[dict]]:
    """Write every report file; returns the Markdown path and the clause rows (for --baseline)."""
    out.mkdir(parents=True, exist_ok=True)
    rows = clause_rows(tests, target)
    by_label: dict[tuple[str, str], list[str]] = {}
    for t in tests:
        for key in t.clauses:
            by_label.setdefault(key, []).append(t.nodeid)
    statements = load_statements(results, by_label)
    (out / f"clauses-{target}.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out / f"statements-{target}.json").write_text(json.dumps([vars(s) for s in statements], indent=2) + "\n")
    verdicts = {"target": target, "counts": summary(tests), "by_kind": by_kind(tests),
                "known_behaviours": behaviours(tests),
                "tests": [{"test": t.nodeid, "verdict": t.verdict, "kind": t.kind, "sentence": t.sentence,
                           "behaviour": t.known.get("behaviour", "")} for t in tests]}  # fmt: skip
    (out / f"verdicts-{target}.json").write_text(json.dumps(verdicts, indent=2) + "\n")
    md = out / f"clauses-{target}.md"
    md.write_text(_markdown(target, rows, tests, coverage_markdown(statements)))
    return md, rows
