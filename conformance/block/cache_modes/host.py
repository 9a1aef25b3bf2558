"""Host-side views of a running target: which file descriptors hold an image, with which open flags, and
which system calls the target makes on them (strace attached to the live process).

strace's fault injection makes the ordering observable instead of inferred: every traced write and data
sync is held `DELAY` seconds *after* it returns (`inject=...:delay_exit`). A request whose completion the
test sees in the used ring at wall time `t` therefore waited for a sync entered at `ts` exactly when
`ts + DELAY <= t`; a device that completes first would be seen long before. strace's `-ttt` timestamps and
the test's `time.time()` are the same clock.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from conformance.plugin import require

O_DSYNC = 0o010000
O_DIRECT = 0o040000
O_SYNC = 0o4010000  # __O_SYNC | O_DSYNC

WRITES = ("pwrite64", "pwritev", "pwritev2", "write", "writev")
SYNCS = ("fdatasync", "fsync", "sync_file_range")
#: Submissions whose first argument is an AIO context or ring, not the image: attributed to no fd.
ASYNC = ("io_submit", "io_uring_enter")
TRACED = ("pwrite64", "pwritev", "pwritev2", "fdatasync", "fsync", "io_submit", "io_uring_enter")
#: How long each traced write or sync is held after it returns.
DELAY = 0.25

_LINE = re.compile(r"^(?:\[pid\s+)?(?P<tid>\d+)\]?\s+(?P<ts>\d+\.\d+)\s+(?P<name>\w+)\((?P<arg>[^,)\s]*)")


@dataclass(frozen=True)
class ImageFd:
    pid: int
    fd: int
    flags: int  # octal `flags:` of /proc/PID/fdinfo/FD

    @property
    def direct(self) -> bool:
        return bool(self.flags & O_DIRECT)

    @property
    def dsync(self) -> bool:
        return bool(self.flags & O_DSYNC)


@dataclass(frozen=True)
class Syscall:
    tid: int
    ts: float  # wall time of the syscall's entry
    name: str
    fd: int | None  # first argument when it is a descriptor, else None


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (a target may keep its I/O in a helper process)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo.extend(int(c) for c in (task / "children").read_text().split())
            except OSError:
                pass
    return sorted(set(found))


def image_fds(pid: int, image: str) -> list[ImageFd]:
    """Every descriptor of the target's process tree that refers to `image`, with its open flags."""
    real = os.path.realpath(image)
    out = []
    for p in process_tree(pid):
        try:
            fds = os.listdir(f"/proc/{p}/fd")
        except OSError:
            continue
        for name in fds:
            try:
                if os.readlink(f"/proc/{p}/fd/{name}") != real:
                    continue
                info = Path(f"/proc/{p}/fdinfo/{name}").read_text()
            except OSError:
                continue
            flags = next(int(ln.split()[1], 8) for ln in info.splitlines() if ln.startswith("flags:"))
            out.append(ImageFd(p, int(name), flags))
    return out


def flag_names(flags: int) -> str:
    names = [n for n, b in (("O_DIRECT", O_DIRECT), ("O_DSYNC", O_DSYNC), ("O_SYNC", O_SYNC)) if flags & b == b]
    return f"{flags:#o} ({'|'.join(names) or 'no sync/direct flags'})"


class StraceError(AssertionError):
    """strace could not attach (the reason is strace's own words)."""


class SyscallTrace:
    """strace -f attached to a running process, writes and syncs delayed by DELAY; a context manager."""

    def __init__(self, pid: int, delay: float = DELAY) -> None:
        require(shutil.which("strace") is not None, "strace not found (apt-get install strace; it is in .ci/setup)")
        self.pid = pid
        self.delay = delay
        self._dir = tempfile.mkdtemp(prefix="strace-")
        self.log = os.path.join(self._dir, "trace.log")
        self._err = os.path.join(self._dir, "stderr.log")
        inject = f"inject=pwrite64,pwritev,pwritev2,fdatasync,fsync:delay_exit={int(delay * 1e6)}"
        self.argv = ["strace", "-f", "-ttt", "-o", self.log, "-e", f"trace={','.join(TRACED)}", "-e", inject,
                     "-p", str(pid)]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> SyscallTrace:
        with open(self._err, "wb") as err:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        deadline = time.monotonic() + 10
        while "attached" not in self.stderr:
            if self.proc.poll() is not None:
                raise StraceError(f"strace -p {self.pid} exited {self.proc.returncode}: {self.stderr.strip()}")
            if time.monotonic() > deadline:
                raise StraceError(f"strace -p {self.pid} did not attach within 10 s: {self.stderr.strip()}")
            time.sleep(0.005)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        for name in os.listdir(self._dir):
            os.unlink(os.path.join(self._dir, name))
        os.rmdir(self._dir)

    def stop(self) -> None:
        """Detach (SIGINT makes strace let go of the tracee cleanly) and wait for it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    @property
    def stderr(self) -> str:
        try:
            return Path(self._err).read_text(errors="replace")
        except OSError:
            return ""

    def text(self) -> str:
        try:
            return Path(self.log).read_text(errors="replace")
        except OSError:
            return ""

    def calls(self) -> list[Syscall]:
        """Every traced call's entry so far (`<... resumed>` halves carry no new entry)."""
        out = []
        for line in self.text().splitlines():
            m = _LINE.match(line)
            if not m or "resumed>" in line:
                continue
            arg = m["arg"]
            out.append(Syscall(int(m["tid"]), float(m["ts"]), m["name"], int(arg) if arg.isdigit() else None))
        return out

