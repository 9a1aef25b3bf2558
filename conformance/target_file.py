"""Named targets from a YAML file (`--targets-file`): binary, extra arguments and known deviations.

    targets:
      qemu-7.2:
        kind: qemu                       # refvm | qemu
        binary: /usr/bin/qemu-system-x86_64
        args: []                         # appended after the accelerator arguments
        deviations:                      # tests this target does not meet, each a known behaviour
          - test: conformance/pci/test_bars.py::test_disabled_memory_bar_reads_all_ones
            kind: must                   # must (default) | implementation-defined | should | policy | erratum
            sentence: "PCI 3.0 3.3.3.1: the host bridge must return all 1's on a read (master abort)"
            reason: "unclaimed memory reads return 0"
            behaviour: master-abort-reads-zero   # optional: entries sharing it count as one behaviour
            component: "platform: host bridge"   # optional: what behaves so, if not the device under test

An entry turns the named test (a node id, or a prefix of one) into a strict xfail on that target that only
the test's ClauseViolation satisfies (conformance/verdicts.py), so a fixed behaviour shows up too and a
harness error stays an error. Every mistake in the file is reported with the key that is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from conformance.targets import Target, make_target
from conformance.verdicts import Known, VerdictError


class TargetsFileError(ValueError):
    """The targets file is malformed; the message names the file and the key."""


@dataclass
class NamedTarget:
    target: Target
    deviations: dict[str, Known] = field(default_factory=dict)  # node id (prefix) -> known behaviour

    def deviation_for(self, nodeid: str) -> Known | None:
        for prefix, reason in self.deviations.items():
            if nodeid == prefix or nodeid.startswith(prefix + "[") or nodeid.startswith(prefix + "::"):
                return reason
        return None


def load_targets_file(path: str) -> dict[str, NamedTarget]:
    where = Path(path)
    try:
        data = yaml.safe_load(where.read_text())
    except OSError as err:
        raise TargetsFileError(f"{path}: cannot read: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise TargetsFileError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("targets"), dict):
        raise TargetsFileError(f"{path}: expected a mapping with a 'targets' mapping at the top")
    result: dict[str, NamedTarget] = {}
    for name, entry in data["targets"].items():
        key = f"{path}: targets.{name}"
        if not isinstance(entry, dict):
            raise TargetsFileError(f"{key}: expected a mapping")
        unknown = set(entry) - {"kind", "binary", "args", "deviations"}
        if unknown:
            raise TargetsFileError(f"{key}: unknown key(s) {', '.join(sorted(unknown))}")
        kind = entry.get("kind")
        if kind not in ("refvm", "qemu"):
            raise TargetsFileError(f"{key}.kind: must be 'refvm' or 'qemu', not {kind!r}")
        args = entry.get("args", [])
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise TargetsFileError(f"{key}.args: must be a list of strings")
        binary = entry.get("binary")
        if binary is not None and not isinstance(binary, str):
            raise TargetsFileError(f"{key}.binary: must be a string")
        target = make_target(kind, qemu_binary=binary, refvm_binary=binary)
        target.name = str(name)
        target.extra_args = list(args)
        deviations: dict[str, Known] = {}
        for i, dev in enumerate(entry.get("deviations", []) or []):
            deviations.update(_known_entry(dev, str(name), f"{key}.deviations[{i}]"))
        result[str(name)] = NamedTarget(target, deviations)
    return result


_ENTRY_KEYS = {"test", "kind", "sentence", "reason", "behaviour", "component"}


def _known_entry(dev: object, target: str, key: str) -> dict[str, Known]:
    if not isinstance(dev, dict) or not isinstance(dev.get("test"), str) or not dev.get("reason"):
        raise TargetsFileError(f"{key}: needs 'test', 'sentence' and 'reason'")
    unknown = set(dev) - _ENTRY_KEYS
    if unknown:
        raise TargetsFileError(f"{key}: unknown key(s) {', '.join(sorted(unknown))}")
    try:
        known = Known(target=target, kind=str(dev.get("kind", "must")), sentence=str(dev.get("sentence", "")),
                      reason=str(dev["reason"]), behaviour=str(dev.get("behaviour") or dev["test"]),
                      component=str(dev.get("component", "")))  # fmt: skip
    except VerdictError as err:
        raise TargetsFileError(f"{key}: {str(err).split(': ', 1)[1]}") from None
    return {dev["test"]: known}
