"""pytest plugin of the conformance suites: target selection, guest consoles, clause report.

Tests never import refvm: they get a `target` (how to start the implementation under test) and talk to it
through the drivers. Every test names the clause it checks with `@pytest.mark.clause(SPEC, LABEL)`; at the
end of a run the verdicts are grouped by clause and by kind (conformance/verdicts.py) into
`reports/clauses-<target>.{json,md}` (conformance/report.py).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from conformance import report
from conformance.drivers.console import SerialConsole
from conformance.drivers.guests import GuestBuildError, probe_elf
from conformance.report import STATUS_RANK, TestVerdict, clause_status, compare_with_baseline  # noqa: F401
from conformance.target_file import NamedTarget, TargetsFileError, load_targets_file
from conformance.targets import Target, libvirt_target, make_target, qemu_available, select_suites_for_target
from conformance.verdicts import NOT_MET, Known, VerdictError, apply_known, check_declaration

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
    group.addoption(
        "--target", default="refvm", help="implementation under test: refvm, qemu, or a name from --targets-file"
    )
    group.addoption("--targets-file", default=None, help="YAML file of named targets (binary, args, deviations)")
    group.addoption(
        "--baseline",
        default=None,
        help="clause report JSON of an earlier run: fail this run if any clause got worse than there",
    )
    group.addoption("--qemu-binary", default=None, help="QEMU binary for --target=qemu")
    group.addoption("--refvm-binary", default=None, help="refvm binary for --target=refvm (default: python -m refvm)")
    group.addoption("--report-dir", default="reports", help="where the clause report is written")
    group.addoption(
        "--libvirt-uri",
        default=None,
        help="run the libvirt_api suite (only) against this libvirt URI; 'refvmd' starts a private refvmd",
    )
    group.addoption("--refvmd-command", default=None, help="how to start refvmd for --libvirt-uri=refvmd")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "clause(spec, label): the spec clause this test checks")
    config.addinivalue_line("markers", "verdict(kind, sentence): what the test's expectation rests on, if not a "
                            "device-side MUST (see conformance/verdicts.py)")
    config.addinivalue_line("markers", "known(entry): a conformance.verdicts.Known behaviour of a target that does "
                            "not meet this test's expectation (strict xfail raising ClauseViolation)")
    config._tests = {}  # type: ignore[attr-defined]
    config._named_target = _resolve_target(config)  # type: ignore[attr-defined]


def _resolve_target(config: pytest.Config) -> NamedTarget:
    """--target names refvm, qemu, or an entry of --targets-file; errors are usage errors, not tracebacks."""
    opt = config.getoption
    if opt("--libvirt-uri"):
        return NamedTarget(libvirt_target(opt("--libvirt-uri")))
    name = opt("--target")
    if opt("--targets-file"):
        try:
            named = load_targets_file(opt("--targets-file"))
        except TargetsFileError as err:
            raise pytest.UsageError(str(err)) from None
        if name in named:
            return named[name]
    if name not in ("refvm", "qemu"):
        known = "refvm, qemu" + (", " + ", ".join(named) if opt("--targets-file") else "")
        raise pytest.UsageError(f"--target {name}: unknown target (known: {known})")
    return NamedTarget(make_target(name, opt("--qemu-binary"), opt("--refvm-binary")))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Known behaviours (`@pytest.mark.known`, or a targets file's deviations) of the chosen target become
    strict xfails that only a ClauseViolation satisfies; every `verdict` mark is checked for a known kind and
    its sentence."""
    named: NamedTarget = config._named_target  # type: ignore[attr-defined]
    select_suites_for_target(config, items, named.target.kind)
    tgt = named.target
    for item in items:
        for mark in item.iter_markers("verdict"):
            try:
                check_declaration(*(list(mark.args) + ["", ""])[:2], where=f"{item.nodeid}: verdict")
            except VerdictError as err:
                raise pytest.UsageError(str(err)) from None
        entries = [m.args[0] for m in item.iter_markers("known")]
        from_file = named.deviation_for(item.nodeid)
        for entry in [*entries, *([from_file] if from_file else [])]:
            if not isinstance(entry, Known):
                raise pytest.UsageError(f"{item.nodeid}: known: expects a conformance.verdicts.Known, not {entry!r}")
            apply_known(item, entry, tgt.kind, tgt.name)


@pytest.fixture(scope="session")
def target(pytestconfig: pytest.Config) -> Target:
    """The implementation under test, as chosen with --target (and --targets-file)."""
    tgt = pytestconfig._named_target.target  # type: ignore[attr-defined]
    if tgt.kind == "qemu":
        require(qemu_available(tgt), f"QEMU binary {tgt.binary[0]} not found (apt-get install qemu-system-x86)")
    return tgt


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Needs a test declares with a marker: `kvm` (refvm runs the guest on /dev/kvm; qtest suites need none),
    `hw_kvm` (refvm runs a real OS: a software KVM is too slow and incomplete for it)."""
    named: NamedTarget = item.config._named_target  # type: ignore[attr-defined]
    if item.get_closest_marker("kvm") and named.target.kind == "refvm":
        require(os.access("/dev/kvm", os.R_OK | os.W_OK), "/dev/kvm is missing or not accessible to this user")
    if item.get_closest_marker("hw_kvm") and named.target.kind == "refvm":
        reason = hardware_kvm_missing()
        if reason:
            pytest.skip(reason)  # no package can install hardware: a skip even in CI


def hardware_kvm_missing(sys_module: Path = Path("/sys/module")) -> str | None:
    """Why this host cannot run a full OS on refvm, or None where /dev/kvm is hardware KVM."""
    if (sys_module / "kvm_pvm").exists():
        return (
            "hw_kvm: /dev/kvm is kvm-pvm, a software KVM; a Linux guest on refvm needs hardware KVM "
            "(here its boot dies, see guests/linux/README.md)"
        )
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "hw_kvm: /dev/kvm is missing or not accessible to this user"
    if not any((sys_module / m).exists() for m in ("kvm_intel", "kvm_amd")):
        return "hw_kvm: neither kvm_intel nor kvm_amd is loaded: /dev/kvm is not hardware KVM"
    return None


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
    if report.failed:  # show what every target started by the test printed, and how it was started
        for con in getattr(item, "_consoles", []):
            report.sections.append((f"serial log of {con.name}", con.transcript[-8000:]))
        for session in getattr(item, "_qtest_sessions", []):
            report.sections.append((f"qtest target stderr ({session.name})", session.stderr[-4000:] or "(empty)"))
            report.sections.append(("qtest target argv", " ".join(session.argv)))
    if report.when == "call" or not report.passed:
        _record(item, report)


def _record(item: pytest.Item, report: pytest.TestReport) -> None:
    """The test's verdict: a teardown error after a pass still fails it; an xfail gets its kind's name."""
    tests: dict[str, TestVerdict] = item.config._tests  # type: ignore[attr-defined]
    if report.when == "teardown" and item.nodeid in tests and tests[item.nodeid].verdict != "passed":
        return
    entry: Known | None = getattr(item, "_known", None)
    mark = item.get_closest_marker("verdict")
    kind, sentence = (entry.kind, entry.sentence) if entry else (mark.args[0], mark.args[1]) if mark else ("must", "")
    if hasattr(report, "wasxfail"):
        verdict = NOT_MET[kind]
    else:
        verdict = report.outcome
    clauses = [tuple(m.args[:2]) for m in item.iter_markers("clause")]
    tests[item.nodeid] = TestVerdict(item.nodeid, verdict, kind, sentence, entry.as_dict() if entry else {},
                                     clauses)  # type: ignore[arg-type]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    tests: dict[str, TestVerdict] = getattr(config, "_tests", {})
    if not any(t.clauses for t in tests.values()):
        return
    target = config._named_target.target.name  # type: ignore[attr-defined]
    results = {t.nodeid: t.verdict for t in tests.values()}
    md, rows = report.write(Path(config.getoption("--report-dir")), target, list(tests.values()), results)
    config._clause_report = md  # type: ignore[attr-defined]
    baseline_path = config.getoption("--baseline")
    if baseline_path:
        try:
            baseline = json.loads(Path(baseline_path).read_text())
        except (OSError, ValueError) as err:
            raise pytest.UsageError(f"--baseline {baseline_path}: cannot read a clause report: {err}") from None
        config._regressions = compare_with_baseline(rows, baseline)  # type: ignore[attr-defined]
        if config._regressions:  # type: ignore[attr-defined]
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:  # noqa: ANN001
    report = getattr(config, "_clause_report", None)
    if report is not None:
        terminalreporter.write_line(f"clause report: {report}")
    regressions = getattr(config, "_regressions", None)
    if regressions is not None:
        if regressions:
            terminalreporter.write_sep("=", f"{len(regressions)} clause(s) worse than the baseline", red=True)
            for line in regressions:
                terminalreporter.write_line(line)
        else:
            terminalreporter.write_line("baseline: no clause got worse")
