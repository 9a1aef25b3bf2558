"""The command line's shared pieces: UsageError, QEMU's size and key=value spellings, and the checks of -drive,
-netdev, -object and -global (kept out of cli.py so that it stays a table of options)."""

from __future__ import annotations

import re

from refvm.cli_netdev import TAP_FD_KEYS
from refvm.config import MIB

__all__ = ["UsageError", "parse_size", "parse_keyvals", "parse_drive", "parse_typed", "parse_global",
           "DRIVE_KEYS", "DRIVE_PREFIXES", "NETDEV_KEYS", "OBJECT_KEYS"]  # fmt: skip

DRIVE_KEYS = {
    "file",
    "if",
    "id",
    "format",
    "readonly",
    "read-only",
    "cache",
    "discard",
    "aio",
    "media",
    "serial",
    "detect-zeroes",
    "node-name",
}
DRIVE_PREFIXES = ("throttling.", "cache.")
NETDEV_KEYS = {
    "tap": {"id", "ifname", "script", "downscript", "fd", "vhost", "vnet_hdr", "queues", *TAP_FD_KEYS},
    "hubport": {"id", "hubid", "netdev"},
}
OBJECT_KEYS = {"rng-random": {"id", "filename"}, "rng-builtin": {"id"}}



class UsageError(Exception):
    """A bad command line; str() is the QEMU-style message without the program name."""


_SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)([kKmMgGtT]?)[bB]?$")
_SIZE_UNITS = {"": MIB, "k": 1024, "m": MIB, "g": 1024 * MIB, "t": 1024 * 1024 * MIB}


def parse_size(opt: str, text: str) -> int:
    value = text[5:] if text.startswith("size=") else text
    match = _SIZE_RE.match(value)
    if not match:
        raise UsageError(f"-{opt} {text}: invalid size: expected a number with an optional K, M, G or T suffix")
    number, unit = match.groups()
    size = int(float(number) * _SIZE_UNITS[unit.lower()])
    if size < MIB:
        raise UsageError(f"-{opt} {text}: guest RAM must be at least 1 MiB")
    return size


def parse_keyvals(opt: str, text: str, first_key: str | None = None) -> dict[str, str]:
    """Parse QEMU's `a=b,c=d` (an unnamed first item goes to `first_key`)."""
    result: dict[str, str] = {}
    for i, item in enumerate(text.split(",")):
        if not item:
            continue
        if "=" in item:
            key, value = item.split("=", 1)
        elif i == 0 and first_key:
            key, value = first_key, item
        else:
            raise UsageError(f"-{opt} {text}: '{item}' is not of the form key=value")
        if key in result:
            raise UsageError(f"-{opt} {text}: '{key}' given twice")
        result[key] = value
    return result


def parse_drive(text: str) -> dict[str, str]:
    props = parse_keyvals("drive", text, "file")
    for key in props:
        if key not in DRIVE_KEYS and not key.startswith(DRIVE_PREFIXES):
            raise UsageError(f"-drive {text}: Invalid parameter '{key}'")
    if "file" not in props:
        raise UsageError(f"-drive {text}: Parameter 'file' is missing (refvm has no empty drives)")
    if props.get("if", "none") not in ("none", "virtio"):
        raise UsageError(f"-drive {text}: if={props['if']} is not supported by refvm (use if=none or if=virtio)")
    if props.get("format", "raw") not in ("raw", "qcow2"):
        raise UsageError(f"-drive {text}: Unknown driver '{props['format']}'")
    return props


def parse_typed(opt: str, text: str, table: dict[str, set[str]]) -> tuple[str, dict[str, str]]:
    """-netdev TYPE,id=...,... and -object TYPE,id=...,...: the type, then its checked properties."""
    props = parse_keyvals(opt, text, "type")
    kind = props.pop("type", "")
    if kind not in table:
        known = ", ".join(sorted(table))
        raise UsageError(f"-{opt} {text}: type '{kind}' is not supported by refvm (supported: {known})")
    for key in props:
        if key not in table[kind]:
            raise UsageError(f"-{opt} {text}: Invalid parameter '{key}'")
    if not props.get("id"):
        raise UsageError(f"-{opt} {text}: Parameter 'id' is missing")
    return kind, props


def parse_global(text: str) -> tuple[str, str, str]:
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise UsageError(f"-global {text}: Invalid format: expected DRIVER.PROPERTY=VALUE")
    name, value = text.split("=", 1)
    driver, prop = name.split(".", 1)
    return driver, prop, value
