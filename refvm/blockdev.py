"""`-blockdev`: QEMU's node-based drive definition, for the node shapes refvm's block layer has.

A format node (`driver=raw|qcow2`) sits on a protocol node (`driver=file,filename=F`), given inline as
`file.driver=file,file.filename=F` or by reference as `file=NODE`. Each format node becomes one drive named
by its node-name, so `-device virtio-blk-pci,drive=NODE` works as in QEMU; a protocol node a device names
directly is a raw drive. The options refvm honours are the ones its drives have: `read-only`,
`cache.direct`, `cache.no-flush`, `discard`, `detect-zeroes`. JSON syntax (`-blockdev '{"driver": ...}'`)
is accepted too. Anything else is refused with the option's name, never ignored.
"""

from __future__ import annotations

import json
from typing import Any

FORMAT_DRIVERS = ("raw", "qcow2")
PROTOCOL_DRIVERS = ("file", "host_device")
#: Options copied from a format (or protocol) node to the drive, under the drive's spelling.
NODE_OPTIONS = {
    "read-only": "read-only",
    "cache.direct": "cache.direct",
    "cache.no-flush": "cache.no-flush",
    "discard": "discard",
    "detect-zeroes": "detect-zeroes",
}
PROTOCOL_KEYS = {"driver", "node-name", "filename", "aio", "locking", *NODE_OPTIONS}


class BlockdevError(ValueError):
    """A -blockdev the block layer cannot build; the message names the option as QEMU does."""


def parse_blockdev(text: str) -> dict[str, Any]:
    """One -blockdev argument as a flat dict of dotted keys (JSON objects are flattened)."""
    if text.lstrip().startswith("{"):
        try:
            tree = json.loads(text)
        except ValueError as err:
            raise BlockdevError(f"JSON parse error: {err}") from None
        return _flatten(tree)
    props: dict[str, Any] = {}
    for item in text.split(","):
        if not item:
            continue
        if "=" not in item:
            raise BlockdevError(f"Expected '=' after parameter '{item}'")
        key, value = item.split("=", 1)
        if key in props:
            raise BlockdevError(f"Parameter '{key}' given twice")
        props[key] = value
    return props


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        elif isinstance(value, bool):
            flat[f"{prefix}{key}"] = "on" if value else "off"
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat


def _check_keys(node: dict[str, Any], allowed: set[str], driver: str) -> None:
    for key in node:
        if key not in allowed:
            raise BlockdevError(f"Parameter '{key}' is unexpected (driver '{driver}' in refvm)")


def blockdevs_to_drives(texts: list[str]) -> dict[str, dict[str, str]]:
    """Translate every -blockdev into drive properties keyed by the node-name devices refer to."""
    nodes: dict[str, dict[str, Any]] = {}
    for text in texts:
        node = parse_blockdev(text)
        name = node.get("node-name")
        if not name:
            raise BlockdevError("Parameter 'node-name' is missing (refvm needs it to attach the node)")
        if name in nodes:
            raise BlockdevError(f"Duplicate nodes with node-name='{name}'")
        driver = node.get("driver")
        if driver not in (*FORMAT_DRIVERS, *PROTOCOL_DRIVERS):
            raise BlockdevError(f"Invalid parameter 'driver': '{driver}' is not a block driver refvm has")
        nodes[name] = node
    drives: dict[str, dict[str, str]] = {}
    used_as_file: set[str] = set()
    for name, node in nodes.items():
        driver = node["driver"]
        if driver in PROTOCOL_DRIVERS:
            _check_keys(node, PROTOCOL_KEYS, driver)
            if "filename" not in node:
                raise BlockdevError(f"Parameter 'filename' is missing (node '{name}')")
            continue
        inline = {k[5:]: v for k, v in node.items() if k.startswith("file.")}
        _check_keys({k: v for k, v in node.items() if not k.startswith("file.")},
                    {"driver", "node-name", "file", *NODE_OPTIONS}, driver)  # fmt: skip
        if "file" in node:
            ref = node["file"]
            if ref not in nodes or nodes[ref]["driver"] not in PROTOCOL_DRIVERS:
                raise BlockdevError(f"Cannot find device='' nor node-name='{ref}'")
            protocol = nodes[ref]
            used_as_file.add(ref)
        elif inline:
            protocol = inline
            if protocol.get("driver") not in PROTOCOL_DRIVERS:
                raise BlockdevError(f"Invalid parameter 'file.driver': '{protocol.get('driver')}'")
            _check_keys(protocol, PROTOCOL_KEYS, protocol["driver"])
        else:
            raise BlockdevError(f"Parameter 'file' is missing (node '{name}')")
        if "filename" not in protocol:
            raise BlockdevError(f"Parameter 'file.filename' is missing (node '{name}')")
        drive = {"file": protocol["filename"], "format": driver, "id": name}
        for source in (protocol, node):  # the format node's options win over its protocol node's
            for key, drive_key in NODE_OPTIONS.items():
                if key in source:
                    drive[drive_key] = source[key]
        drives[name] = drive
    for name, node in nodes.items():  # protocol nodes a device may name directly: raw drives
        if node["driver"] in PROTOCOL_DRIVERS and name not in used_as_file:
            drive = {"file": node["filename"], "format": "raw", "id": name}
            drive.update({NODE_OPTIONS[k]: v for k, v in node.items() if k in NODE_OPTIONS})
            drives[name] = drive
    return drives
