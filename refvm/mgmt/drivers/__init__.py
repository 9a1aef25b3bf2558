"""Hypervisor drivers behind one interface (``base.Driver``), chosen by the URI scheme.

``open_driver("refvm:///session")`` returns the driver for that URI; the daemon keeps one per URI and shares it
between its clients. Unknown schemes or paths give VIR_ERR_NO_CONNECT, as libvirt does for a URI no driver
accepts.
"""
from __future__ import annotations

import threading
from urllib.parse import urlsplit

from refvm.mgmt.drivers.base import Driver
from refvm.mgmt.errors import VIR_ERR_NO_CONNECT, VIR_FROM_NONE, VirError

_lock = threading.Lock()
_open: dict[tuple[str, str | None], Driver] = {}


def parse_uri(uri: str) -> tuple[str, str]:
    """(scheme, mode) of a URI refvmd serves: refvm:///session|system, qemu:///session|system."""
    parts = urlsplit(uri)
    mode = parts.path.strip("/")
    if parts.scheme not in ("refvm", "qemu") or parts.netloc or mode not in ("session", "system"):
        raise VirError(VIR_ERR_NO_CONNECT, uri, domain=VIR_FROM_NONE)
    return parts.scheme, mode


def open_driver(uri: str, state_dir: str | None = None, job_timeout: float = 30.0) -> Driver:
    """The shared driver for ``uri`` (created on first use, which loads state, re-attaches and autostarts)."""
    scheme, mode = parse_uri(uri)
    key = (f"{scheme}:///{mode}", state_dir)
    with _lock:
        driver = _open.get(key)
        if driver is None:
            if scheme == "refvm":
                from refvm.mgmt.drivers.refvm_driver import RefvmDriver as cls
            else:
                from refvm.mgmt.drivers.qemu_driver import QemuDriver as cls
            driver = cls(mode, state_dir, job_timeout)
            _open[key] = driver
        return driver


def close_all() -> None:
    """Detach from every hypervisor (daemon exit); the domains keep running."""
    with _lock:
        drivers = list(_open.values())
        _open.clear()
    for driver in drivers:
        driver.close()
