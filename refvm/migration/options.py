"""Migration capabilities and parameters, with QEMU 7.2's names, defaults, range checks and error texts.

They are per machine and outlive each migration (as in QEMU), so a management tool sets them once before
`migrate`.  refvm implements the capabilities `events` (MIGRATION/MIGRATION_PASS events are sent only when
it is on) and `pause-before-switchover`; QEMU's other capabilities are listed by query-migrate-capabilities
as off and may be set off, but switching one on is refused by name (refvm cannot honour it).  Of the
parameters, `downtime-limit` (ms) and `max-bandwidth` (bytes/s) are implemented; QEMU's others are reported at
their defaults and accepted only with that value (management tools reset e.g. `tls-creds` to "" routinely).
"""
from __future__ import annotations

import threading
from typing import Any

#: QEMU 7.2's MigrationCapability names, in its order (query-migrate-capabilities lists them so).
CAPABILITIES = (
    "xbzrle", "rdma-pin-all", "auto-converge", "zero-blocks", "compress", "events", "postcopy-ram", "x-colo",
    "release-ram", "block", "return-path", "pause-before-switchover", "multifd", "dirty-bitmaps",
    "postcopy-blocktime", "late-block-activate", "x-ignore-shared", "validate-uuid", "background-snapshot",
    "zero-copy-send", "postcopy-preempt",
)
IMPLEMENTED = frozenset({"events", "pause-before-switchover"})

#: QEMU 7.2's MigrationStatus names (migrate-continue's `state` must be one of them).
STATUSES = (
    "none", "setup", "cancelling", "cancelled", "active", "postcopy-active", "postcopy-paused",
    "postcopy-recover", "completed", "failed", "colo", "pre-switchover", "device", "wait-unplug",
)

DOWNTIME_LIMIT_MAX = 2000 * 1000  # ms, QEMU's MAX_MIGRATE_DOWNTIME
DEFAULTS = {"downtime-limit": 300, "max-bandwidth": 128 << 20}  # ms; bytes/s (QEMU's 128 MiB/s)
#: QEMU 7.2's other MigrationParameters with their defaults, in its member order (block-bitmap-mapping has
#: none: QEMU leaves it out of query-migrate-parameters until it is set).
UNIMPLEMENTED_DEFAULTS: dict[str, Any] = {
    "announce-initial": 50, "announce-max": 550, "announce-rounds": 5, "announce-step": 100,
    "compress-level": 1, "compress-threads": 8, "compress-wait-thread": True, "decompress-threads": 2,
    "throttle-trigger-threshold": 50, "cpu-throttle-initial": 20, "cpu-throttle-increment": 10,
    "cpu-throttle-tailslow": False, "tls-creds": "", "tls-hostname": "", "tls-authz": "",
    "x-checkpoint-delay": 20000, "block-incremental": False, "multifd-channels": 2,
    "xbzrle-cache-size": 64 << 20, "max-postcopy-bandwidth": 0, "max-cpu-throttle": 99,
    "multifd-compression": "none", "multifd-zlib-level": 1, "multifd-zstd-level": 1,
}
#: Every member migrate-set-parameters takes, in QEMU's order (the QMP schema lists them so).
PARAMETERS = (*list(UNIMPLEMENTED_DEFAULTS)[:15], "max-bandwidth", "downtime-limit",
              *list(UNIMPLEMENTED_DEFAULTS)[15:], "block-bitmap-mapping")
U64_MAX = (1 << 64) - 1


class OptionError(ValueError):
    """A refused capability or parameter; the text is QEMU's."""


def _as_u64(name: str, value: Any) -> int:
    """A QMP uint64 member: QEMU's input visitor takes a negative JSON integer modulo 2**64."""
    if not isinstance(value, int) or isinstance(value, bool) or not -(1 << 63) <= value <= U64_MAX:
        raise OptionError(f"Parameter '{name}' expects uint64")
    return value & U64_MAX


def _is_default(name: str, value: Any) -> bool:
    """A QEMU parameter refvm does not implement, set to what it already is (null resets tls-* to "")."""
    default = UNIMPLEMENTED_DEFAULTS.get(name)
    if name.startswith("tls-") and value is None:
        return True
    if name == "block-bitmap-mapping":
        return value == []
    return type(value) is type(default) and value == default


class MigrationOptions:
    """The capabilities and parameters of one machine's migrations; thread-safe reads for the job."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.caps = {name: False for name in CAPABILITIES}
        self.params = dict(DEFAULTS)

    def cap(self, name: str) -> bool:
        with self._lock:
            return self.caps[name]

    def param(self, name: str) -> int:
        with self._lock:
            return self.params[name]

    def query_capabilities(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{"capability": name, "state": state} for name, state in self.caps.items()]

    def query_parameters(self) -> dict[str, Any]:
        with self._lock:
            return {**UNIMPLEMENTED_DEFAULTS, **self.params}

    def check_capabilities(self, entries: Any) -> dict[str, bool]:
        """migrate-set-capabilities' argument checked as QEMU's input visitor does; {name: state}."""
        if not isinstance(entries, list):
            raise OptionError("Invalid parameter type for 'capabilities', expected: array")
        wanted: dict[str, bool] = {}
        for i, entry in enumerate(entries):
            where = f"capabilities[{i}]"
            if not isinstance(entry, dict):
                raise OptionError(f"Invalid parameter type for '{where}', expected: object")
            for member in ("capability", "state"):
                if member not in entry:
                    raise OptionError(f"Parameter '{where}.{member}' is missing")
            extra = set(entry) - {"capability", "state"}
            if extra:
                raise OptionError(f"Parameter '{where}.{sorted(extra)[0]}' is unexpected")
            name, state = entry["capability"], entry["state"]
            if not isinstance(name, str) or name not in CAPABILITIES:
                raise OptionError(f"Parameter 'capability' does not accept value '{name}'")
            if not isinstance(state, bool):
                raise OptionError(f"Invalid parameter type for '{where}.state', expected: boolean")
            if state and name not in IMPLEMENTED:
                raise OptionError(f"Migration capability '{name}' is not supported by refvm")
            wanted[name] = state
        return wanted

    def set_capabilities(self, entries: Any) -> None:
        """All entries are checked before any is applied (QEMU does the same)."""
        wanted = self.check_capabilities(entries)
        with self._lock:
            self.caps.update(wanted)

    def set_parameters(self, args: dict[str, Any]) -> None:
        """migrate-set-parameters: every member checked, then all applied (allowed while migrating)."""
        new: dict[str, int] = {}
        for name, value in args.items():
            if name in DEFAULTS:
                new[name] = _as_u64(name, value)
            elif name not in PARAMETERS:
                raise OptionError(f"Parameter '{name}' is unexpected")
            elif not _is_default(name, value):
                raise OptionError(f"Migration parameter '{name}' is not supported by refvm (only its default)")
        if new.get("downtime-limit", 0) > DOWNTIME_LIMIT_MAX:
            raise OptionError("Parameter 'downtime_limit' expects an integer in the range of 0 to (2000 * 1000) ms")
        with self._lock:
            self.params.update(new)
