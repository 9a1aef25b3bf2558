"""Live migration of a running KVM guest between two refvm processes: the probe guest, over unix:.

The source boots the probe guest, which writes a seeded pattern into its RAM; QMP `migrate` moves RAM, devices
and the vCPU, LAPIC, PIC, IOAPIC, PIT and kvmclock state to a destination started with `-incoming`; there the
same guest, never booted by the destination, answers on its serial shell and finds its pattern intact; and a
guest that keeps writing while its RAM is sent (pre-copy with KVM's dirty log) loses none of it.  What virtio
devices write meanwhile: tests/test_migration_kvm_virtio.py.
"""
from __future__ import annotations

import io
import json
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import kvm_available, require

ROOT = Path(__file__).resolve().parent.parent
PROBE = ROOT / "guests" / "probe" / "build" / "probe.elf"
PATTERN = ("0x200000", "0x10000", "1234")  # START LEN SEED: 64 KiB, ~0.4 s of guest time on kvm-pvm

pytestmark = pytest.mark.kvm


class Qmp:
    def __init__(self, path: Path) -> None:
        deadline = time.monotonic() + 30
        self.sock = socket.socket(socket.AF_UNIX)
        while True:
            try:
                self.sock.connect(str(path))
                break
            except OSError:
                assert time.monotonic() < deadline, f"no QMP socket {path}"
                time.sleep(0.05)
        self.sock.settimeout(30)
        self.f = self.sock.makefile("rw")
        self.f.readline()
        self.cmd("qmp_capabilities")

    def cmd(self, name: str, **args: object) -> dict:
        self.f.write(json.dumps({"execute": name, "arguments": args}) + "\n")
        self.f.flush()
        while "event" in (msg := json.loads(self.f.readline())):
            pass
        return msg

    def wait_migration(self) -> dict:
        deadline = time.monotonic() + 60
        while (reply := self.cmd("query-migrate")["return"]).get("status") not in ("completed", "failed"):
            assert time.monotonic() < deadline, reply
            time.sleep(0.05)
        return reply

    def close(self) -> None:
        self.f.close()
        self.sock.close()


def _refvm(tmp: Path, name: str, *extra: str):  # noqa: ANN202 - pexpect.spawn
    import pexpect

    argv = ["-m", "refvm", "-kernel", str(PROBE), "-m", "32", "-display", "none", "-serial", "stdio",
            "-qmp", f"unix:{tmp / name}.qmp,server=on,wait=off", "-watchdog-timeout", "120", *extra]
    return pexpect.spawn(sys.executable, argv, timeout=30, cwd=str(ROOT))


def _shell(child, line: str) -> str:  # noqa: ANN001
    child.sendline(line)
    child.expect_exact("probe> ")
    return child.before.decode(errors="replace")


@contextmanager
def _pair(tmp: Path, incoming: str, *extra: str) -> Iterator[tuple]:
    """(source, destination, source QMP, destination QMP, migration socket): the source at its first prompt, the
    destination waiting with `-incoming unix:SOCK` or `-incoming defer`; everything closed afterwards."""
    require(kvm_available(), "/dev/kvm is missing or not accessible to this user")
    require(PROBE.exists(), "probe guest not built (make -C guests/probe)")
    mig = tmp / "mig.sock"
    dst = _refvm(tmp, "dst", "-incoming", f"unix:{mig}" if incoming == "uri" else "defer", *extra)
    dst.logfile_read = io.BytesIO()
    src = _refvm(tmp, "src", *extra)
    qmps: list[Qmp] = []
    try:
        src.expect_exact("probe> ")
        qmps += [Qmp(tmp / "src.qmp"), Qmp(tmp / "dst.qmp")]
        yield src, dst, qmps[0], qmps[1], mig
    finally:
        for q in qmps:
            q.close()
        src.close(force=True)
        dst.close(force=True)


@pytest.mark.parametrize("incoming", ["uri", "defer", "exec"])
def test_running_guest_moves_with_its_memory_and_shell(tmp_path: Path, incoming: str) -> None:
    """-incoming unix:PATH, or -incoming defer then QMP migrate-incoming (the VM is built before it listens); or
    through a file: the source to `exec:cat > FILE` (its RAM parts written to a pipe), the destination from
    `exec:cat FILE` once the source is done."""
    with _pair(tmp_path, "uri" if incoming == "uri" else "defer") as (src, dst, qmp_src, qmp_dst, mig):
        assert "bytes written" in _shell(src, "pattern fill " + " ".join(PATTERN))
        assert qmp_dst.cmd("query-status")["return"]["status"] == "inmigrate"
        if incoming == "defer":
            assert qmp_dst.cmd("migrate-incoming", uri=f"unix:{mig}") == {"return": {}}
        stream = tmp_path / "stream"
        uri = f"exec:cat > {stream}" if incoming == "exec" else f"unix:{mig}"
        assert qmp_src.cmd("migrate", uri=uri) == {"return": {}}
        assert qmp_src.wait_migration()["status"] == "completed"
        if incoming == "exec":
            assert qmp_dst.cmd("migrate-incoming", uri=f"exec:cat {stream}") == {"return": {}}
        assert qmp_dst.wait_migration()["status"] == "completed", qmp_dst.cmd("query-migrate")
        assert qmp_src.cmd("query-status")["return"]["status"] == "postmigrate"
        assert qmp_dst.cmd("query-status")["return"] == {"status": "running", "singlestep": False, "running": True}

        assert "moved over" in _shell(dst, "echo moved over")  # the guest, not the destination's boot, answers
        assert f"pattern: {int(PATTERN[1], 0)} bytes ok" in _shell(dst, "pattern check " + " ".join(PATTERN))
        assert "FAIL" in _shell(dst, f"pattern check {PATTERN[0]} {PATTERN[1]} 4321")  # other seed: check can fail
        assert b"refvm probe guest" not in dst.logfile_read.getvalue(), "the destination booted the kernel itself"


@pytest.mark.parametrize("accel", ["kvm", "kvm,dirty-ring-size=256"], ids=["bitmap", "dirty-ring"])
def test_guest_writing_during_migration_keeps_every_page(tmp_path: Path, accel: str) -> None:
    """Pre-copy: the guest fills 512 KiB (~3 s on kvm-pvm) while its RAM is sent; the pages it writes meanwhile
    are sent again from KVM's dirty log (the bitmap, or the dirty ring of 256 entries per vCPU, with which KVM
    refuses the bitmap: only the ring can have carried them), so the fill that began on the source ends on the
    destination intact."""
    fill = ("0x200000", "0x80000", "99")
    with _pair(tmp_path, "uri", "-accel", accel) as (src, dst, qmp_src, qmp_dst, mig):
        src.sendline("pattern fill " + " ".join(fill))
        src.expect_exact("pattern fill")  # the guest has the line and is writing
        assert qmp_src.cmd("migrate", uri=f"unix:{mig}") == {"return": {}}
        ram = qmp_src.wait_migration()["ram"]
        assert ram["normal"] + ram["duplicate"] > ram["total"] // ram["page-size"], "no page was sent twice"
        assert qmp_dst.wait_migration()["status"] == "completed"
        dst.expect_exact(f"pattern: {int(fill[1], 0)} bytes written", timeout=60)  # finished on the destination
        dst.expect_exact("probe> ")
        assert f"pattern: {int(fill[1], 0)} bytes ok" in _shell(dst, "pattern check " + " ".join(fill))

