"""Fixtures of the qcow2 interop suite: the image tool under test, and qemu-img/qemu-io as the reference.

The implementation under test follows --target: on refvm it is ``python -m refvm.block.img`` (run as a
process, never imported); on qemu it is qemu-img/qemu-io themselves, which makes the same tests a check of
the tests (QEMU against itself must pass, except for QEMU's documented deviations in the corpus). Both
spellings are the same argv after the program name, since refvm-img takes qemu-img's options and its
``io`` subcommand qemu-io's. Needs qemu-img/qemu-io (qemu-utils); in CI their absence fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class ImgTool:
    """How to run the image tool under test: ``img`` ~ qemu-img, ``io`` ~ qemu-io."""

    kind: str
    img: tuple[str, ...]
    io: tuple[str, ...]

    def run_img(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run([*self.img, *args], check)

    def run_io(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run([*self.io, *args], check)


def _run(argv: Sequence[str], check: bool) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def qemu(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the reference qemu-img."""
    return _run(["qemu-img", *args], check)


def qemu_io(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the reference qemu-io."""
    return _run(["qemu-io", *args], check)


@pytest.fixture(scope="session", autouse=True)
def _reference_tools() -> None:
    missing = [t for t in ("qemu-img", "qemu-io") if shutil.which(t) is None]
    if missing:
        reason = f"{', '.join(missing)} not found (apt-get install qemu-utils)"
        if IN_CI:
            pytest.fail(f"CI setup is missing a dependency: {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="session")
def tool(pytestconfig: pytest.Config) -> ImgTool:
    """The image tool of the target under test."""
    kind = pytestconfig._named_target.target.kind  # type: ignore[attr-defined]
    if kind == "qemu":
        return ImgTool("qemu", ("qemu-img",), ("qemu-io",))
    img = (sys.executable, "-m", "refvm.block.img")
    return ImgTool("refvm", img, (*img, "io"))
