"""Fixtures of the libvirt_api suite: a connection to the URI under test, guest XML it can run, events.

The target is a libvirt URI (`--libvirt-uri`), so the same tests judge libvirt's own test driver, libvirtd
with QEMU and refvmd. Every domain and pool a test makes is named `tck-...` and removed after the test, so a
shared daemon is left as it was found.
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

libvirt = pytest.importorskip("libvirt", reason="libvirt-python is not installed (pip install libvirt-python)")

from conformance.drivers.libvirt import (  # noqa: E402 - after the importorskip above
    PREFIX,
    EventLoop,
    GuestKind,
    LifecycleRecorder,
    call_error,
    cleanup,
    domain_xml,
    guest_kind,
)

_counter = itertools.count(1)


def _start_refvmd(tmp: Path, command: str) -> tuple[subprocess.Popen, str]:
    """refvmd in a private state directory, listening on a socket of its own; returns (process, URI)."""
    sock = tmp / "refvmd.sock"
    argv = [*shlex.split(command), "--socket", str(sock), "--state-dir", str(tmp / "state")]
    log = open(tmp / "refvmd.log", "wb")  # noqa: SIM115 - the daemon writes to it for the whole session
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"refvmd did not start: {(tmp / 'refvmd.log').read_text()[-2000:]}")
        time.sleep(0.05)
    return proc, f"refvm+unix:///session?socket={sock}"


@pytest.fixture(scope="session")
def libvirt_uri(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URI under test; `refvmd` starts a private refvmd for the session."""
    uri = pytestconfig.getoption("--libvirt-uri")
    if uri != "refvmd":
        yield uri
        return
    command = pytestconfig.getoption("--refvmd-command") or f"{sys.executable} -m refvm.mgmt.refvmd"
    proc, real_uri = _start_refvmd(tmp_path_factory.mktemp("refvmd"), command)
    yield real_uri
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="session")
def conn(libvirt_uri: str) -> Iterator[libvirt.virConnect]:
    EventLoop.ensure()  # before the connection: libvirt binds event callbacks to the loop it had at open
    connection = libvirt.open(libvirt_uri)
    cleanup(connection)
    yield connection
    cleanup(connection)
    connection.close()


@pytest.fixture(scope="session")
def kind(conn: libvirt.virConnect) -> GuestKind:
    return guest_kind(conn)


@pytest.fixture(scope="session")
def driver_error_domain(conn: libvirt.virConnect) -> int:
    """The driver's own error domain (VIR_FROM_TEST, VIR_FROM_QEMU, ...), read from a lookup that fails.

    Driver-level misuse is reported in the driver's domain; the suite learns it once rather than hard-coding
    one driver's.
    """
    err = call_error(lambda: conn.lookupByName(PREFIX + "surely-missing"))
    assert err is not None, "looking up a missing domain succeeded"
    return err.domain


@pytest.fixture
def name(request: pytest.FixtureRequest) -> Callable[[], str]:
    """Fresh domain names for this test: tck-<test>-<n> (libvirt names allow [A-Za-z0-9_.+-])."""
    base = re.sub(r"[^A-Za-z0-9_.+-]", "-", request.node.name.removeprefix("test_"))[:40]
    return lambda: f"{PREFIX}{base}-{next(_counter)}"


@pytest.fixture
def make_xml(kind: GuestKind, request: pytest.FixtureRequest, conn: libvirt.virConnect) -> Iterator[Callable[..., str]]:
    """Domain XML the target can run (the probe guest where guests run); the test's domains go afterwards."""
    kernel = request.getfixturevalue("probe_kernel") if kind.runs_guests else None

    def make(dom_name: str, **kw: object) -> str:
        return domain_xml(kind, dom_name, kernel=kernel, **kw)  # type: ignore[arg-type]

    yield make
    cleanup(conn)


@pytest.fixture
def lifecycle(conn: libvirt.virConnect) -> Iterator[LifecycleRecorder]:
    """Lifecycle events the target sends while the test runs."""
    recorder = LifecycleRecorder()
    cb_id = conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, recorder.callback, None)
    yield recorder
    conn.domainEventDeregisterAny(cb_id)


def skip_unsupported(err: object, what: str) -> None:
    """A documented driver limitation (VIR_ERR_NO_SUPPORT) is a skip carrying the driver's own message."""
    if err is not None and getattr(err, "code", None) == libvirt.VIR_ERR_NO_SUPPORT:
        pytest.skip(f"{what}: the driver says: {err.message}")  # type: ignore[attr-defined]


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")

