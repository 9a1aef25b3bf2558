"""Faults: a destination that dies mid-stream, one that nobody listens on, and a damaged stream."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

import pytest

from conformance.migration.conftest import caps, events, run_state, wait_status

HIGH = 8 << 20  # a guest address that no firmware touches while the source runs


@pytest.mark.clause("refvm-migration", "faults/destination-dies")
def test_destination_killed_mid_stream(vm, sock_dir) -> None:
    src, dst = vm(), vm("-incoming", "defer")
    src.write(HIGH, b"nothing lost")
    caps(src, events=True)
    src.qmp.execute("migrate-set-parameters", **{"max-bandwidth": 50_000})  # still sending when it dies
    src.qmp.execute("cont")
    dst.qmp.execute("migrate-incoming", uri=f"unix:{sock_dir}/m")
    src.qmp.execute("migrate", uri=f"unix:{sock_dir}/m")
    wait_status(src, "active")
    dst.proc.send_signal(signal.SIGKILL)
    dst.proc.wait(timeout=10)
    failed = wait_status(src, "failed")
    assert failed["error-desc"].startswith("Unable to write to socket: "), failed
    assert run_state(src) == "running", "the source keeps running its guest"
    assert src.read(HIGH, 12) == b"nothing lost"
    assert [d["status"] for _, d in events(src, "MIGRATION")][-1] == "failed"


@pytest.mark.clause("refvm-migration", "faults/nobody-listening")
def test_nobody_listening_on_unix(vm, sock_dir) -> None:
    src = vm()
    caps(src, events=True)
    path = f"{sock_dir}/nobody"
    assert src.qmp.execute("migrate", uri=f"unix:{path}") == {}, "migrate itself succeeds; the migration fails"
    failed = wait_status(src, "failed")
    assert failed == {"status": "failed", "error-desc": f"Failed to connect to '{path}': No such file or directory"}
    assert [d["status"] for _, d in events(src, "MIGRATION")] == ["setup", "failed"]
    assert run_state(src) == "prelaunch"


@pytest.mark.clause("refvm-migration", "faults/nobody-listening")
def test_nobody_listening_on_tcp(vm) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago and that nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    src = vm()
    src.qmp.execute("migrate", uri=f"tcp:127.0.0.1:{port}")
    failed = wait_status(src, "failed")
    assert failed["error-desc"] == f"Failed to connect to '127.0.0.1:{port}': Connection refused"


def _saved_stream(vm, sock_dir: str) -> bytes:  # noqa: ANN001
    src = vm()
    src.write(HIGH, b"saved")
    path = Path(sock_dir, "stream.bin")
    src.qmp.execute("migrate", uri=f"exec:cat > {path}")
    wait_status(src, "completed")
    data = path.read_bytes()
    assert data[:8] == b"QEVM\x00\x00\x00\x03", "QEMU's magic and version 3"
    return data


def _damaged(data: bytes, how: str) -> bytes:
    if how == "truncated":
        return data[: len(data) // 2]
    # The configuration section (0x07, be32 length, machine type) is followed by the first section's type byte.
    assert data[8] == 0x07
    first = 8 + 1 + 4 + int.from_bytes(data[9:13], "big")
    return data[:first] + b"\x55" + data[first + 1 :]


@pytest.mark.clause("refvm-migration", "faults/bad-stream")
@pytest.mark.parametrize("how", ["truncated", "unknown-section-type"])
def test_damaged_stream_ends_destination(vm, sock_dir, how: str) -> None:
    bad = Path(sock_dir, "bad.bin")
    bad.write_bytes(_damaged(_saved_stream(vm, sock_dir), how))
    dst = vm("-incoming", "defer")
    dst.qmp.execute("migrate-incoming", uri=f"exec:cat {bad}")
    status = dst.proc.wait(timeout=20)
    assert status not in (0, None), "the destination exits with an error"
    lines = [ln for ln in dst.stderr.splitlines() if "load of migration failed" in ln]
    assert lines, dst.stderr
