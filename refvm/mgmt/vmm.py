"""One hypervisor process as refvmd sees it: started (or re-attached after a daemon restart), its QMP
monitor, its pty paths, and how to stop it. No knowledge of libvirt semantics lives here."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

from refvm.mgmt.argv import CommandLine
from refvm.mgmt.qmp_client import EventCallback, QmpClient

PTY_RE = re.compile(r"char device redirected to (\S+) \(label (\S+)\)")


class Vmm:
    """A running hypervisor: its pid, its monitor and (for processes we started) the Popen to reap it."""

    def __init__(self, pid: int, qmp: QmpClient, proc: subprocess.Popen | None = None) -> None:
        self.pid = pid
        self.qmp = qmp
        self.proc = proc
        self.ptys: dict[str, str] = {}

    @classmethod
    def start(cls, cmd: CommandLine, qmp_path: Path, log_path: Path, on_event: EventCallback,
              timeout: float = 30.0) -> Vmm:
        """Start the process in its own session (a daemon restart must not kill it) and connect its QMP."""
        qmp_path.unlink(missing_ok=True)
        env = dict(os.environ)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(cmd.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    pass_fds=cmd.pass_fds, start_new_session=True, env=env)
        qmp = QmpClient(str(qmp_path), on_event)
        try:
            qmp.connect(timeout=timeout, alive=lambda: proc.poll() is None)
        except Exception:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            raise
        vmm = cls(proc.pid, qmp, proc)
        vmm.ptys = read_ptys(log_path)
        return vmm

    @classmethod
    def attach(cls, pid: int, qmp_path: Path, on_event: EventCallback) -> Vmm:
        """Re-attach to a hypervisor that a previous refvmd started (raises if it is gone)."""
        if not pid_alive(pid):
            raise ProcessLookupError(pid)
        qmp = QmpClient(str(qmp_path), on_event)
        qmp.connect(timeout=5.0, alive=lambda: pid_alive(pid))
        return cls(pid, qmp)

    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        return pid_alive(self.pid)

    def wait(self, timeout: float) -> bool:
        """Wait for the process to exit (reaping it when it is our child); True when it did."""
        if self.proc is not None:
            try:
                self.proc.wait(timeout)
                return True
            except subprocess.TimeoutExpired:
                return False
        deadline = time.monotonic() + timeout
        while pid_alive(self.pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def terminate(self, graceful: bool, timeout: float = 10.0) -> bool:
        """SIGTERM, then (unless graceful) SIGKILL after ``timeout``; True when the process is gone."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                return self.wait(1.0) or True
            if self.wait(timeout if sig == signal.SIGTERM else 5.0):
                return True
            if graceful:
                return False
        return False


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def read_ptys(log_path: Path) -> dict[str, str]:
    """label -> pty path, from the 'char device redirected to' lines both refvm and QEMU print."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return {}
    return {m.group(2): m.group(1) for m in PTY_RE.finditer(text)}
