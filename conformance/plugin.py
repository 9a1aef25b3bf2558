"""pytest plugin of the conformance suites: target selection, guest consoles, clause report.

Tests never import refvm: they get a `target` (how to start the implementation under test) and talk to it
through the drivers. Every test names the clause it checks with `@pytest.mark.clause(SPEC, LABEL)`; at the
end of a run the verdicts are grouped by clause into `reports/clauses-<target>.{json,md}`.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from conformance.drivers.console import SerialConsole
from conformance.drivers.guests import GuestBuildError, probe_elf
from conformance.targets import Target, make_target, qemu_available

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, reason: str) -> None:
    """Skip when something is missing, except in CI where `.ci/run` should have installed it."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI setup is missing a dependency: {reason}")
    pytest.skip(reason)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("conformance", "refvm conformance suites")
    group.addoption("--target", choices=("refvm", "qemu"), default="refvm", help="implementation under test")
    group.addoption("--qemu-binary", default=None, help="QEMU binary for --target=qemu")
    group.addoption("--refvm-binary", default=None, help="refvm binary for --target=refvm (default: python -m refvm)")
    group.addoption("--report-dir", default="reports", help="where the clause report is written")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "clause(spec, label): the spec clause this test checks")
    config._clause_results = defaultdict(list)  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def target(pytestconfig: pytest.Config) -> Target:
    """The implementation under test, as chosen with --target."""
    opt = pytestconfig.getoption
    tgt = make_target(opt("--target"), opt("--qemu-binary"), opt("--refvm-binary"))
    if tgt.kind == "qemu":
        require(qemu_available(tgt), f"QEMU binary {tgt.binary[0]} not found (apt-get install qemu-system-x86)")
    else:
        require(os.access("/dev/kvm", os.R_OK | os.W_OK), "/dev/kvm is missing or not accessible")
    return tgt


@pytest.fixture(scope="session")
def probe_kernel() -> str:
    """The probe guest, built from source once per session."""
    try:
        return str(probe_elf())
    except (GuestBuildError, FileNotFoundError) as err:
        require(False, f"probe guest could not be built: {err}")
        raise


@pytest.fixture
def consoles(request: pytest.FixtureRequest) -> Iterator[Callable[[Sequence[str]], SerialConsole]]:
    """Start targets with a serial console; every console is closed after the test and its log kept."""
    opened: list[SerialConsole] = []
    request.node._consoles = opened

    def start(argv: Sequence[str], timeout: float = 60.0, name: str = "guest") -> SerialConsole:
        con = SerialConsole(argv, timeout=timeout, name=name)
        opened.append(con)
        return con

    yield start
    for con in opened:
        con.close()


@pytest.fixture
def probe(target: Target, probe_kernel: str, consoles) -> SerialConsole:  # noqa: ANN001
    """A probe guest booted on the target, sitting at its first prompt."""
    con = consoles(target.probe_argv(probe_kernel), name=target.name)
    con.banner = con.wait_prompt()  # type: ignore[attr-defined]
    return con


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for con in getattr(item, "_consoles", []):
            report.sections.append((f"serial log of {con.name}", con.transcript[-8000:]))
    if report.when == "call" or (report.when == "setup" and not report.passed):
        verdict = "xfail" if hasattr(report, "wasxfail") else report.outcome
        for mark in item.iter_markers("clause"):
            spec, label = mark.args[:2]
            item.config._clause_results[(spec, label)].append((item.nodeid, verdict))  # type: ignore[attr-defined]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    results = getattr(session.config, "_clause_results", None)
    if not results:
        return
    target = session.config.getoption("--target")
    out = Path(session.config.getoption("--report-dir"))
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for (spec, label), verdicts in sorted(results.items()):
        counts = {v: sum(1 for _, x in verdicts if x == v) for v in ("passed", "failed", "skipped", "xfail")}
        status = "fail" if counts["failed"] else "pass" if counts["passed"] else "skip"
        rows.append(
            {
                "spec": spec,
                "clause": label,
                "target": target,
                "status": status,
                **counts,
                "tests": [t for t, _ in verdicts],
            }
        )
    (out / f"clauses-{target}.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = [
        f"# Clause report: {target}",
        "",
        "| spec | clause | status | pass | fail | skip |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['spec']} | {r['clause']} | {r['status']} | {r['passed']} | {r['failed']} | {r['skipped']} |"
        )
    (out / f"clauses-{target}.md").write_text("\n".join(lines) + "\n")
