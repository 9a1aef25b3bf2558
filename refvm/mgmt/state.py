"""On-disk state of one driver URI: persistent definitions, autostart marks, status of running domains.

Layout (one tree per URI, as libvirt keeps one per driver and mode):
  CONFIG/NAME.xml             persistent definition (inactive XML)
  CONFIG/autostart/NAME       autostart mark
  RUN/NAME.status             JSON: pid, QMP socket, live XML, state and reason of a running domain
  RUN/NAME.qmp, RUN/NAME.log  the hypervisor's monitor socket and its stderr
For ``session`` CONFIG is $XDG_CONFIG_HOME/refvm/DRIVER and RUN $XDG_RUNTIME_DIR/refvm/DRIVER (or ~/.cache);
for ``system`` they are /var/lib/refvm/DRIVER and /run/refvm/DRIVER. ``--state-dir D`` puts both under D.
Files are written to a temporary name and renamed, so a crash never leaves half a definition.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class StatePaths:
    config: Path
    run: Path

    @classmethod
    def for_uri(cls, driver: str, mode: str, state_dir: str | os.PathLike | None = None) -> StatePaths:
        """The directories for ``driver:///mode`` (created, mode 0700)."""
        if state_dir is not None:
            base = Path(state_dir) / f"{driver}-{mode}"
            paths = cls(base / "config", base / "run")
        elif mode == "system":
            paths = cls(Path("/var/lib/refvm") / driver, Path("/run/refvm") / driver)
        else:
            home = Path.home()
            config = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config") / "refvm" / driver
            runtime = os.environ.get("XDG_RUNTIME_DIR")
            run = Path(runtime) / "refvm" / driver if runtime else home / ".cache" / "refvm" / driver / "run"
            paths = cls(config, run)
        for path in (paths.config, paths.config / "autostart", paths.run):
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
        return paths


def _write_atomic(path: Path, data: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class StateStore:
    """Reads and writes one URI's state tree. Names are already checked (no '/', not '.' or '..')."""

    def __init__(self, paths: StatePaths) -> None:
        self.paths = paths

    # persistent definitions
    def save_config(self, name: str, xml: str) -> None:
        _write_atomic(self.paths.config / f"{name}.xml", xml)

    def delete_config(self, name: str) -> None:
        (self.paths.config / f"{name}.xml").unlink(missing_ok=True)
        self.set_autostart(name, False)

    def load_configs(self) -> dict[str, str]:
        """name -> XML of every persistent definition."""
        return {p.stem: p.read_text() for p in sorted(self.paths.config.glob("*.xml"))}

    # autostart
    def autostart(self, name: str) -> bool:
        return (self.paths.config / "autostart" / name).exists()

    def set_autostart(self, name: str, on: bool) -> None:
        mark = self.paths.config / "autostart" / name
        if on:
            mark.write_text("")
        else:
            mark.unlink(missing_ok=True)

    # running domains
    def qmp_path(self, name: str) -> Path:
        """The monitor socket: a unix socket path is limited to 107 bytes, so a long state directory plus a
        long domain name would not fit. Like libvirt (which truncates the name), keep it short: the first 20
        characters of the name plus a digest of the whole name, so two names never share a socket."""
        digest = hashlib.sha1(str(self.paths.run / name).encode()).hexdigest()[:12]
        path = self.paths.run / f"{name[:20]}-{digest[:8]}.qmp"
        if len(str(path)) > 107:  # a deep state directory: the socket goes to the temp dir, still per daemon
            path = Path(tempfile.gettempdir()) / f"refvmd-{os.getuid()}-{digest}.qmp"
        return path

    def log_path(self, name: str) -> Path:
        return self.paths.run / f"{name}.log"

    def save_status(self, name: str, status: dict[str, Any]) -> None:
        _write_atomic(self.paths.run / f"{name}.status", json.dumps(status, indent=1))

    def delete_status(self, name: str) -> None:
        (self.paths.run / f"{name}.status").unlink(missing_ok=True)
        self.qmp_path(name).unlink(missing_ok=True)

    def load_statuses(self) -> dict[str, dict[str, Any]]:
        """name -> status of every domain that was running when the daemon last wrote its status."""
        out: dict[str, dict[str, Any]] = {}
        for path in sorted(self.paths.run.glob("*.status")):
            try:
                out[path.stem] = json.loads(path.read_text())
            except (OSError, ValueError):
                path.unlink(missing_ok=True)
        return out
