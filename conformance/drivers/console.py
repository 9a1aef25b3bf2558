"""Serial-console driver: spawn a target with its serial port on stdio and talk to the guest's shell.

Works the same for refvm and QEMU because it only sees a process and a pty. The full transcript is kept
so that a failing test can show exactly what the guest printed.
"""

from __future__ import annotations

import io
import re
import signal
import time
from collections.abc import Sequence

import pexpect

PROBE_PROMPT = "probe> "
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1bc")


class ConsoleError(AssertionError):
    """The guest did not say what we waited for; the message ends with the tail of the serial log."""


class SerialConsole:
    """A target process whose serial port is this console's pty."""

    def __init__(
        self, argv: Sequence[str], *, prompt: str = PROBE_PROMPT, timeout: float = 30.0, name: str = "guest"
    ) -> None:
        self.argv = list(argv)
        self.prompt = prompt
        self.timeout = timeout
        self.name = name
        self._log = io.StringIO()
        self.started = time.monotonic()
        self.child = pexpect.spawn(
            self.argv[0],
            self.argv[1:],
            encoding="utf-8",
            codec_errors="replace",
            timeout=timeout,
            echo=False,
            dimensions=(50, 200),
        )
        self.child.logfile_read = self._log
        # pexpect sleeps 50 ms before every send by default; the UARTs buffer typed input, so no pause.
        self.child.delaybeforesend = None
        self.exit_status: int | None = None

    # ---- reading ---------------------------------------------------------------------------------------

    @property
    def transcript(self) -> str:
        """Everything the target printed so far (serial output and its own messages)."""
        return self._log.getvalue()

    def _fail(self, what: str) -> ConsoleError:
        tail = self.transcript[-2000:]
        cmd = " ".join(self.argv)
        return ConsoleError(f"{self.name}: {what}\ncommand: {cmd}\n--- serial log (tail) ---\n{tail}")

    def expect(self, pattern: str | re.Pattern[str], timeout: float | None = None) -> str:
        """Wait for a regex (or exact text) and return what came before it."""
        patterns = [pattern if isinstance(pattern, re.Pattern) else re.compile(re.escape(pattern))]
        try:
            self.child.expect(patterns, timeout=timeout if timeout is not None else self.timeout)
        except pexpect.TIMEOUT:
            raise self._fail(f"timed out waiting for {pattern!r}") from None
        except pexpect.EOF:
            self._reap()
            raise self._fail(f"target exited (status {self.exit_status}) while waiting for {pattern!r}") from None
        return _clean(self.child.before)

    def wait_prompt(self, timeout: float | None = None) -> str:
        """Wait for the shell prompt; returns the output before it (the banner, on first call)."""
        return self.expect(self.prompt, timeout)

    # ---- writing ---------------------------------------------------------------------------------------

    def send(self, text: str) -> None:
        self.child.send(text)

    def command(self, line: str, timeout: float | None = None) -> str:
        """Run one shell command and return its output without the echoed command line."""
        self.send(line + "\r")
        out = self.wait_prompt(timeout)
        lines = out.split("\n")
        if lines and lines[0].strip() == line.strip():
            lines = lines[1:]
        return "\n".join(lines).strip("\n")

    # ---- ending ----------------------------------------------------------------------------------------

    def _reap(self) -> None:
        if self.child.isalive():
            return
        self.child.close()
        if self.child.exitstatus is not None:
            self.exit_status = self.child.exitstatus
        elif self.child.signalstatus is not None:
            self.exit_status = -self.child.signalstatus

    def wait_exit(self, timeout: float | None = None) -> int:
        """Wait for the target to exit by itself; returns its status (negative: killed by that signal)."""
        try:
            self.child.expect(pexpect.EOF, timeout=timeout if timeout is not None else self.timeout)
        except pexpect.TIMEOUT:
            raise self._fail("target did not exit") from None
        deadline = time.monotonic() + 5
        while self.child.isalive() and time.monotonic() < deadline:
            time.sleep(0.01)
        self._reap()
        assert self.exit_status is not None
        return self.exit_status

    def close(self) -> None:
        """Stop the target: SIGTERM first (QEMU and refvm both exit cleanly on it), then SIGKILL."""
        if self.child.isalive():
            self.child.kill(signal.SIGTERM)
            deadline = time.monotonic() + 3
            while self.child.isalive() and time.monotonic() < deadline:
                time.sleep(0.02)
            if self.child.isalive():
                self.child.kill(signal.SIGKILL)
        self.child.close(force=True)
        self._reap()

    def __enter__(self) -> SerialConsole:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _clean(text: object) -> str:
    if not isinstance(text, str):
        return ""
    return _ANSI.sub("", text).replace("\r\n", "\n").replace("\r", "")
