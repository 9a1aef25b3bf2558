"""What a migration carries between libvirt's protocol steps: the job, the cookie, the data-path URI.

The job lives on the DomainObj from Begin (or Perform) to Confirm on the source and from Prepare to Finish on
the destination, holding the domain's job lock across those RPC calls as libvirt's async migration job does.
The cookie is refvmd's own opaque format (JSON): libvirt only carries it between the daemons. It names the
sending host, so that a migration to the same daemon is refused as libvirt refuses one to the same host.
"""
from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from refvm.mgmt import vir
from refvm.mgmt.errors import VIR_ERR_INTERNAL_ERROR, VIR_FROM_QEMU, VirError, invalid_arg

#: libvirt's "unlimited" migration speed in MiB/s (INT64_MAX bytes/s), what getMaxSpeed reports by default.
SPEED_UNLIMITED = (2**63 - 1) // (1 << 20)
MIB = 1 << 20

_TCP = re.compile(r"^tcp:(?://)?(\[[0-9a-fA-F:.]+\]|[^:/\[\]]+)(?::(\d{1,5}))?/?$")


@dataclass
class MigrationJob:
    """One migration of one domain, as seen by one daemon ('out' on the source, 'in' on the destination)."""

    direction: str
    flags: int
    started: float = field(default_factory=time.monotonic)
    #: the guest ran before the migration: a failed or cancelled one resumes it
    was_running: bool = False
    #: begin, perform, performed (source) / prepared (destination)
    phase: str = "begin"
    #: the last query-migrate answer (job info reads it)
    stats: dict[str, Any] = field(default_factory=dict)

    def elapsed_ms(self) -> int:
        return int((time.monotonic() - self.started) * 1000)

    def job_info(self) -> tuple[int, int, int, int, int]:
        """(type, elapsed ms, memory total, processed, remaining) for virDomainGetJobInfo/GetJobStats."""
        ram = self.stats.get("ram") or {}
        total, done, left = (int(ram.get(k, 0) or 0) for k in ("total", "transferred", "remaining"))
        return vir.VIR_DOMAIN_JOB_UNBOUNDED, self.elapsed_ms(), total, done, left


def host_uuid(config_dir: Path) -> str:
    """This daemon's host identity (one per state tree, kept across restarts): the cookie's sender."""
    path = config_dir / "host-uuid"
    try:
        text = path.read_text().strip()
        return str(uuid.UUID(text))
    except (OSError, ValueError):
        text = str(uuid.uuid4())
        path.write_text(text + "\n")
        return text


def make_cookie(host: str, hostname: str, **extra: Any) -> bytes:
    return json.dumps({"host": host, "hostname": hostname, **extra}).encode()


def parse_cookie(data: bytes) -> dict[str, Any]:
    """The peer's cookie (untrusted: anything but a JSON object gives libvirt's cookie error)."""
    if not data:
        return {}
    try:
        cookie = json.loads(data.decode())
    except (UnicodeDecodeError, ValueError):
        cookie = None
    if not isinstance(cookie, dict):
        raise VirError(VIR_ERR_INTERNAL_ERROR, "Missing or malformed migration cookie", domain=VIR_FROM_QEMU)
    return cookie


def tcp_target(uri: str) -> tuple[str, int]:
    """(host, port) of a migration URI 'tcp:HOST[:PORT]' or 'tcp://HOST[:PORT]' (libvirt's forms; 0: any port)."""
    match = _TCP.match(uri)
    port = int(match.group(2) or 0) if match is not None else -1
    if match is None or not 0 <= port < 65536:
        raise invalid_arg(f"unsupported migration URI '{uri}': refvmd migrates over tcp://HOST[:PORT]")
    return match.group(1), port
