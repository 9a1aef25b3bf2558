"""Fetch and cache a real Debian kernel (bzImage) for the Linux loader tests.

Why a real kernel: the boot protocol is defined by what real bzImages carry in their setup
header, so the loader is checked against Debian's actual build, not a synthetic image.
The package is downloaded once with apt (no root needed for ``apt-get download``) into
``~/.cache/refvm/kernels`` and unpacked with ``dpkg-deb -x``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

CACHE_DIR = Path(os.environ.get("REFVM_KERNEL_CACHE", Path.home() / ".cache" / "refvm" / "kernels"))
META_PACKAGE = "linux-image-cloud-amd64"


class KernelUnavailable(Exception):
    """The kernel could not be fetched; the message says why (used as a pytest skip reason)."""


def _run(argv: list[str], cwd: Path | None = None, timeout: float = 600) -> str:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise KernelUnavailable(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()[-400:]}")
    return proc.stdout


def _versioned_package(meta: str) -> str:
    """Resolve the meta package to the versioned ``linux-image-X.Y.Z-N-flavour`` it depends on."""
    for attempt in range(2):
        try:
            out = _run(["apt-cache", "depends", meta])
        except KernelUnavailable:
            out = ""
        m = re.search(r"Depends:\s*(linux-image-\d\S*)", out)
        if m:
            return m.group(1)
        if attempt == 0:
            _run(["apt-get", "update"])  # package lists missing or stale
    raise KernelUnavailable(f"apt-cache depends {meta}: no versioned linux-image dependency found")


def _find_vmlinuz(root: Path) -> Path | None:
    found = sorted((root / "boot").glob("vmlinuz-*")) if (root / "boot").is_dir() else []
    return found[-1] if found else None


def debian_kernel(meta: str = META_PACKAGE) -> Path:
    """Return the path of a cached Debian ``boot/vmlinuz-*``, downloading it on first use.

    Raises KernelUnavailable (with the reason) when apt or dpkg-deb cannot provide it.
    """
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    for d in sorted(CACHE_DIR.glob(f"{meta}-extract*")):
        hit = _find_vmlinuz(d)
        if hit is not None:
            return hit
    for tool in ("apt-get", "apt-cache", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise KernelUnavailable(f"{tool} not found: cannot fetch a Debian kernel")
    pkg = _versioned_package(meta)
    work = CACHE_DIR / f"download-{os.getpid()}"
    work.mkdir(exist_ok=True)
    try:
        _run(["apt-get", "download", pkg], cwd=work)
        debs = sorted(work.glob("*.deb"))
        if not debs:
            raise KernelUnavailable(f"apt-get download {pkg} produced no .deb")
        tmp = CACHE_DIR / f"{meta}-tmp-{os.getpid()}"
        _run(["dpkg-deb", "-x", str(debs[0]), str(tmp)])
        final = CACHE_DIR / f"{meta}-extract"
        if final.exists():
            shutil.rmtree(tmp, ignore_errors=True)  # a concurrent run won the race
        else:
            tmp.rename(final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    hit = _find_vmlinuz(final)
    if hit is None:
        raise KernelUnavailable(f"{pkg}: no boot/vmlinuz-* inside the package")
    return hit


if __name__ == "__main__":
    print(debian_kernel())
