"""A running guest migrated: the probe guest keeps rewriting its RAM during the migration and its serial shell
carries on on the destination.

Unlike the rest of the suite these machines run guest code: refvm under `-accel kvm` (pre-copy with KVM's
dirty log), QEMU under `-accel tcg`, each booting the probe guest with its serial port on the console's pty.
The destination is started with the same arguments plus `-incoming defer`, as migration requires the same
machine on both sides, and never boots the guest itself: what its console shows comes from the migrated guest.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from conformance.drivers.console import SerialConsole
from conformance.drivers.qmp import QmpDriver
from conformance.migration.conftest import RAM_MB, run_state, wait_status
from conformance.targets import Target

pytestmark = [pytest.mark.kvm, pytest.mark.guest]

#: `pattern loop` rewrites this range pass after pass, verifying each pass before the next (32 KiB: about 0.15 s
#: a pass on kvm-pvm, microseconds under TCG); STATIC is written once before the migration.
LOOP = (0x200000, 0x8000)
STATIC = (0x300000, 0x8000, 77)
LOOP_END = re.compile(r"pattern: loop stopped after (\d+) passes, last seed (\d+), every pass verified|"
                      r"(pattern: FAIL at [^\r\n]*)")
BANNER = "probe guest"  # in the probe's boot banner ("refvm probe guest ..."): printed only by a boot


@dataclass
class Peer:
    """One side of the migration: its serial console and its QMP connection (`qmp`, as conftest's helpers
    expect)."""

    con: SerialConsole
    qmp: QmpDriver


@pytest.fixture
def guest_pair(target: Target, probe_kernel: str, consoles, sock_dir: str) -> Iterator[Callable[[], tuple]]:  # noqa: ANN001
    """start(): (source at its first prompt, destination waiting in -incoming defer), both with QMP."""
    opened: list[QmpDriver] = []

    def side(name: str, *extra: str) -> Peer:
        qmp_path = f"{sock_dir}/{name}.qmp"
        argv = target.probe_argv(probe_kernel, ["-m", str(RAM_MB), "-qmp", f"unix:{qmp_path},server=on,wait=off",
                                                *extra])
        con = consoles(argv, name=f"{target.name} {name}")
        opened.append(QmpDriver(qmp_path, timeout=20.0))
        return Peer(con, opened[-1])

    def start() -> tuple[Peer, Peer]:
        src = side("source")
        src.con.wait_prompt()
        dst = side("destination", "-incoming", "defer")
        # Readiness, not the check: refvm under KVM answers QMP a moment before it enters inmigrate (its run state
        # is set after the monitor starts), QEMU already in it. test_flow checks the state itself, over qtest.
        deadline = time.monotonic() + 10
        while (state := run_state(dst)) != "inmigrate":
            assert state == "running" and time.monotonic() < deadline, f"destination in {state}, not inmigrate"
            time.sleep(0.01)
        return src, dst

    yield start
    for qmp in opened:
        qmp.close()


def _migrate(src: Peer, dst: Peer, uri: str) -> dict:
    dst.qmp.execute("migrate-incoming", uri=uri)
    assert src.qmp.execute("migrate", uri=uri) == {}
    done = wait_status(src, "completed", timeout=60)
    wait_status(dst, "completed", timeout=60)
    assert run_state(src) == "postmigrate"
    assert run_state(dst) == "running", "the destination of a running guest runs it"
    return done


@pytest.mark.clause("refvm-migration", "ram/identical-running")
def test_guest_writing_during_migration_finds_its_ram_intact(guest_pair, sock_dir) -> None:
    src, dst = guest_pair()
    start, length, seed = STATIC
    assert f"{length} bytes written" in src.con.command(f"pattern fill {start:#x} {length:#x} {seed}")
    src.con.send(f"pattern loop {LOOP[0]:#x} {LOOP[1]:#x} 1000\r")
    src.con.expect("any key stops")  # the guest is rewriting LOOP, pass after pass, from here on
    ram = _migrate(src, dst, f"unix:{sock_dir}/m")["ram"]
    assert ram["normal"] + ram["duplicate"] > ram["total"] // ram["page-size"], "no page written meanwhile went twice"
    dst.con.send("x")  # stops the loop the source started: it ends, and reports, on the destination
    dst.con.expect(LOOP_END, timeout=30)
    passes, last, failed = dst.con.child.match.groups()
    assert not failed, f"a pass found a word it wrote on the source changed after the migration: {failed}"
    passes, last = int(passes), int(last)
    dst.con.wait_prompt()
    assert passes >= 1 and last == 1000 + passes - 1
    out = dst.con.command(f"pattern check {LOOP[0]:#x} {LOOP[1]:#x} {last}")
    assert out == f"pattern: {LOOP[1]} bytes ok", f"the last pass's pattern, checked on the destination: {out}"
    out = dst.con.command(f"pattern check {start:#x} {length:#x} {seed}")
    assert out == f"pattern: {length} bytes ok", f"RAM written before the migration: {out}"
    assert "FAIL" in dst.con.command(f"pattern check {LOOP[0]:#x} {LOOP[1]:#x} {last + 1}"), "a check can fail"


@pytest.mark.clause("refvm-migration", "console/carries-on")
def test_serial_shell_carries_on_on_the_destination(guest_pair, sock_dir) -> None:
    src, dst = guest_pair()
    src.con.send("echo half a ")
    src.con.expect("echo half a ")  # the guest's shell has the start of the line (it echoes what it reads)
    _migrate(src, dst, f"unix:{sock_dir}/m")
    dst.con.send("line\r")  # the rest of the line is typed on the destination's console
    assert "half a line" in dst.con.wait_prompt(timeout=30), "the migrated shell kept its half-typed line"
    assert dst.con.command("echo still answering") == "still answering"
    assert BANNER not in dst.con.transcript, "the destination booted the guest instead of receiving it"
    assert "half a line" not in src.con.transcript, "the stopped source printed output after switchover"
