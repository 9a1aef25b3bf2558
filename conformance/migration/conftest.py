"""Fixtures of the migration suite: two processes of the target under test, a source and a destination.

Both are started the way libqtest starts QEMU (conformance/drivers/libqtest.py): stopped (`-S`), with no vCPU
running (refvm `-accel qtest`, QEMU `-accel tcg -S`), driven over qtest (guest RAM) and QMP (migration).
Guest RAM is 32 MiB so a whole migration takes a fraction of a second on either target.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from conformance.drivers.libqtest import LibqtestSession
from conformance.drivers.qtest import QtestStartError
from conformance.targets import Target

RAM_MB = 32
#: Statuses after which query-migrate does not change any more.
FINAL = ("completed", "failed", "cancelled")


@pytest.fixture
def vm(target: Target, request: pytest.FixtureRequest) -> Iterator[Callable[..., LibqtestSession]]:
    """start(*args): one stopped machine (-S, 32 MiB) connected over qtest and QMP; closed after the test."""
    sessions: list[LibqtestSession] = []
    request.node._qtest_sessions = sessions  # the plugin prints their stderr when a test fails

    def start(*args: str) -> LibqtestSession:
        session = LibqtestSession(name=target.name, timeout=20.0)
        sessions.append(session)
        try:
            return session.start(target, ["-m", str(RAM_MB), "-S", *args])
        except QtestStartError as err:
            if target.kind == "refvm" and err.exited:
                pytest.fail(f"refvm refused to start: {err.stderr_line}")
            raise

    yield start
    for session in sessions:
        session.close()


def caps(session: LibqtestSession, **states: bool) -> None:
    """migrate-set-capabilities with Python names (pause_before_switchover=True)."""
    session.qmp.execute("migrate-set-capabilities",
                        capabilities=[{"capability": k.replace("_", "-"), "state": v} for k, v in states.items()])


def wait_status(session: LibqtestSession, *wanted: str, timeout: float = 20.0) -> dict[str, Any]:
    """Poll query-migrate until its status is one of `wanted` (fails early on an unexpected final one)."""
    deadline = time.monotonic() + timeout
    while True:
        info = session.qmp.execute("query-migrate")
        status = info.get("status")
        if status in wanted:
            return info
        assert status not in FINAL, f"migration ended {status} while waiting for {wanted}: {info}"
        assert time.monotonic() < deadline, f"no {wanted} within {timeout} s: {info}"
        time.sleep(0.02)


def events(session: LibqtestSession, *names: str) -> list[tuple[str, Any]]:
    """The events named `names` received so far, in order, as (name, data) (reads what is pending first)."""
    session.qmp.request("query-status")
    return [(e["event"], e.get("data")) for e in session.qmp.events if e["event"] in names]


def run_state(session: LibqtestSession) -> str:
    return session.qmp.execute("query-status")["status"]


@pytest.fixture
def sock_dir() -> Iterator[str]:
    """A short directory for migration sockets (a unix socket path must fit in 108 bytes)."""
    import shutil
    import tempfile

    path = tempfile.mkdtemp(prefix="mig-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)
