"""Linux guest driver: boot the guests/linux guest on a target and run shell commands over its serial port.

The guest's /init prints a ready marker and keeps a busybox shell on ttyS0. Every command is framed by two
markers that only the shell's *output* can contain (the echoed command line holds `%s`, not the number),
so prompt redraws, terminal queries of the line editor and echo never confuse the reply, and each command
returns its own exit status. Each wait has a timeout; on any failure the error carries the serial log.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from conformance.drivers.console import ConsoleError, SerialConsole, _clean

REPO = Path(__file__).resolve().parents[2]
LINUX_DIR = REPO / "guests" / "linux"


class LinuxGuestUnavailable(RuntimeError):
    """The guest could not be built (no apt, no network to the archive...); the message says why."""


@dataclass(frozen=True)
class LinuxImage:
    """What guests/linux built: kernel, initramfs and how to talk to its /init."""

    kernel: str
    initrd: str
    append: str
    ready_marker: str
    prompt: str
    modules: tuple[str, ...]
    kernel_release: str


def build_linux_guest(flavour: str = "cloud") -> LinuxImage:
    """Run the guests/linux builder (cached: a no-op after the first time) and read its manifest."""
    proc = subprocess.run(
        ["make", "-s", "-C", str(LINUX_DIR), f"FLAVOUR={flavour}"], capture_output=True, text=True, check=False
    )
    manifest = LINUX_DIR / "build" / flavour / "manifest.json"
    if proc.returncode != 0 or not manifest.exists():
        raise LinuxGuestUnavailable(f"make -C {LINUX_DIR} failed: {(proc.stdout + proc.stderr).strip()[-600:]}")
    m = json.loads(manifest.read_text())
    return LinuxImage(
        m["kernel"], m["initrd"], m["append"], m["ready_marker"], m["prompt"], tuple(m["modules"]),
        m["kernel_release"],
    )  # fmt: skip


class CommandFailed(ConsoleError):
    """A guest command exited non-zero (raised by `check`)."""


@dataclass
class Result:
    status: int
    output: str


class LinuxGuest:
    """A booted Linux guest behind one serial console."""

    _ids = itertools.count(1)

    def __init__(self, console: SerialConsole, image: LinuxImage) -> None:
        self.console = console
        self.image = image
        self.boot_seconds: float | None = None

    @classmethod
    def argv(cls, image: LinuxImage, extra: Sequence[str] = (), memory: str = "256") -> list[str]:
        """The machine arguments (target binary and accelerator not included) of a Linux guest boot."""
        return [
            "-M", "pc", "-m", memory, "-nodefaults", "-display", "none", "-serial", "stdio",
            "-kernel", image.kernel, "-initrd", image.initrd, "-append", image.append, *extra,
        ]  # fmt: skip

    def wait_ready(self, timeout: float = 180.0) -> float:
        """Wait for /init's ready marker and the first prompt; returns seconds since the target started."""
        self.console.expect(self.image.ready_marker, timeout)
        self.boot_seconds = time.monotonic() - self.console.started
        self.console.expect(self.image.prompt, 15)
        self.sync()
        return self.boot_seconds

    def sync(self, timeout: float = 15.0) -> None:
        """Bring the shell to a known state: everything it printed before this point is consumed."""
        self.run("true", timeout)

    @property
    def transcript(self) -> str:
        return self.console.transcript

    def run(self, command: str, timeout: float = 20.0) -> Result:
        """Run one shell command line; returns its exit status and its output (stdout and stderr)."""
        n = next(self._ids)
        self.console.send(f"printf '@B%s@\\n' {n}; {{ {command} ; }} </dev/null 2>&1; printf '@E%s:%d@\\n' {n} $?\r")
        self.console.expect(f"@B{n}@", timeout)
        before = self.console.expect(re.compile(rf"@E{n}:(\d+)@"), timeout)
        status = int(self.console.child.match.group(1))
        return Result(status, _clean(before).strip("\n"))

    def check(self, command: str, timeout: float = 20.0) -> str:
        """Run a command that must succeed; returns its output, or raises with its status and the log."""
        res = self.run(command, timeout)
        if res.status != 0:
            raise CommandFailed(self.console._fail(f"`{command}` exited {res.status}: {res.output[-500:]}").args[0])
        return res.output

    def wait_for(self, command: str, predicate, timeout: float = 20.0, interval: float = 0.2) -> str:  # noqa: ANN001
        """Re-run a command until predicate(output) holds (device state changes are asynchronous)."""
        deadline = time.monotonic() + timeout
        while True:
            out = self.check(command)
            if predicate(out):
                return out
            if time.monotonic() > deadline:
                raise self.console._fail(f"`{command}` never satisfied the condition; last output: {out!r}")
            time.sleep(interval)

    def send_line(self, line: str) -> None:
        """Type a line without waiting for a reply (poweroff, reboot: the shell never answers)."""
        self.console.send(line + "\r")
