"""Fixtures of the platform suite's qtest tests: machines started the way libqtest starts QEMU."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from conformance.drivers.libqtest import LibqtestSession
from conformance.drivers.qtest import QtestStartError
from conformance.targets import Target


@pytest.fixture
def libqtest(target: Target, request: pytest.FixtureRequest) -> Iterator[Callable[..., LibqtestSession]]:
    """start(*args): a stopped machine connected to our qtest AND QMP listeners; stderr kept for failures."""
    sessions: list[LibqtestSession] = []
    request.node._qtest_sessions = sessions

    def start(*args: str) -> LibqtestSession:
        session = LibqtestSession(name=target.name)
        sessions.append(session)
        try:
            return session.start(target, list(args))
        except QtestStartError as err:
            if target.kind == "refvm" and err.exited:
                pytest.fail(f"refvm refused the libqtest start-up: {err.stderr_line}")
            raise

    yield start
    for session in sessions:
        session.close()
