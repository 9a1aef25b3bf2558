"""Builds the project's guests from source on demand (no binaries live in git)."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROBE_DIR = REPO / "guests" / "probe"
PROBE_ELF = PROBE_DIR / "build" / "probe.elf"


class GuestBuildError(RuntimeError):
    """The guest could not be built; the message carries make's output."""


@functools.cache
def probe_elf() -> Path:
    """Build (or bring up to date) the probe guest and return its path."""
    proc = subprocess.run(["make", "-s", "-C", str(PROBE_DIR)], capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not PROBE_ELF.exists():
        raise GuestBuildError(f"make -C {PROBE_DIR} failed:\n{proc.stdout}{proc.stderr}")
    return PROBE_ELF
