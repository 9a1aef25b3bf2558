"""Throttling configuration: QEMU's limits, their validation, and the two ways to set them.

* ``-drive ...,throttling.bps-total=N,...`` (and the legacy aliases ``bps=``, ``iops_rd=``, ...,
  ``group=``): :meth:`ThrottleConfig.from_drive_options`. Numbers are parsed the way QemuOpts
  parses a ``QEMU_OPT_NUMBER`` (``qemu_strtou64``, base 0, so ``0x10`` and ``010`` work and
  ``-1`` wraps to 2**64 - 1).
* QMP ``block_set_io_throttle`` (``BlockIOThrottle``: ``bps``, ``bps_rd``, ..., ``iops_size``,
  ``group``): :meth:`ThrottleConfig.from_qmp`. The six average limits are mandatory, the rest
  optional; QAPI ``int`` values land in QEMU's unsigned fields, so ``-1`` also wraps.

Both end in :meth:`ThrottleConfig.validate`, which applies ``throttle_is_valid``'s rules in
its order and raises :class:`ThrottleConfigError` with QEMU's own message (checked against
QEMU 7.2: see ``tests/test_throttle_config.py``). :meth:`ThrottleConfig.to_qmp_info` gives the
throttle members of ``query-block``'s ``BlockDeviceInfo`` exactly as QEMU fills them.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from refvm.block.throttle import BUCKETS_COUNT, THROTTLE_VALUE_MAX, BucketType, LeakyBucket

__all__ = [
    "ThrottleConfig",
    "ThrottleConfigError",
    "DRIVE_OPTION_NAMES",
    "DRIVE_LEGACY_ALIASES",
    "QMP_FIELDS",
]

_U64 = (1 << 64) - 1
_I64_MIN = -(1 << 63)
_I64_MAX = (1 << 63) - 1


class ThrottleConfigError(ValueError):
    """A bad throttling configuration; ``str()`` is QEMU's message (a QMP ``GenericError``)."""

    qmp_class = "GenericError"


# Spelling of each bucket in the three vocabularies: -drive suffix, QMP average key, QMP prefix.
_BUCKET_NAMES: dict[BucketType, tuple[str, str]] = {
    BucketType.BPS_TOTAL: ("bps-total", "bps"),
    BucketType.BPS_READ: ("bps-read", "bps_rd"),
    BucketType.BPS_WRITE: ("bps-write", "bps_wr"),
    BucketType.OPS_TOTAL: ("iops-total", "iops"),
    BucketType.OPS_READ: ("iops-read", "iops_rd"),
    BucketType.OPS_WRITE: ("iops-write", "iops_wr"),
}

_PREFIX = "throttling."

#: ``-drive`` option name -> (bucket, field) where field is "avg", "max" or "burst_length";
#: in the order QEMU's blockdev.c reads them.
DRIVE_OPTION_NAMES: dict[str, tuple[BucketType, str]] = {}
for _field, _suffix in (("avg", ""), ("max", "-max"), ("burst_length", "-max-length")):
    for _t in BucketType:
        DRIVE_OPTION_NAMES[_PREFIX + _BUCKET_NAMES[_t][0] + _suffix] = (_t, _field)
_DRIVE_IOPS_SIZE = _PREFIX + "iops-size"
_DRIVE_GROUP = _PREFIX + "group"
_KNOWN_DRIVE_KEYS = frozenset(DRIVE_OPTION_NAMES) | {_DRIVE_IOPS_SIZE, _DRIVE_GROUP}

#: Legacy ``-drive`` spellings renamed before parsing (blockdev.c ``opt_renames``), in QEMU's order.
DRIVE_LEGACY_ALIASES: dict[str, str] = {
    "iops": "throttling.iops-total",
    "iops_rd": "throttling.iops-read",
    "iops_wr": "throttling.iops-write",
    "bps": "throttling.bps-total",
    "bps_rd": "throttling.bps-read",
    "bps_wr": "throttling.bps-write",
    "iops_max": "throttling.iops-total-max",
    "iops_rd_max": "throttling.iops-read-max",
    "iops_wr_max": "throttling.iops-write-max",
    "bps_max": "throttling.bps-total-max",
    "bps_rd_max": "throttling.bps-read-max",
    "bps_wr_max": "throttling.bps-write-max",
    "iops_size": "throttling.iops-size",
    "group": "throttling.group",
}

#: ``BlockIOThrottle`` members in schema order: name -> (QAPI type, mandatory).
QMP_FIELDS: dict[str, tuple[str, bool]] = {"device": ("str", False), "id": ("str", False)}
for _t in BucketType:
    QMP_FIELDS[_BUCKET_NAMES[_t][1]] = ("int", True)
for _suffix in ("_max", "_max_length"):
    for _t in BucketType:
        QMP_FIELDS[_BUCKET_NAMES[_t][1] + _suffix] = ("int", False)
QMP_FIELDS["iops_size"] = ("int", False)
QMP_FIELDS["group"] = ("str", False)

# qemu_strtou64(base 0) accepts what strtoull accepts, and nothing after it.
_STRTOU64 = re.compile(r"[ \t\n\v\f\r]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)\Z")


def _parse_number(name: str, value: str) -> int:
    """A ``QEMU_OPT_NUMBER`` value, with QemuOpts' error texts."""
    m = _STRTOU64.match(value)
    if m is None:
        raise ThrottleConfigError(f"Parameter '{name}' expects a number")
    sign, digits = m.groups()
    if digits[:2] in ("0x", "0X"):
        number = int(digits, 16)
    elif digits.startswith("0"):
        number = int(digits, 8)  # "0" itself, or C's leading-zero octal
    else:
        number = int(digits, 10)
    if number > _U64:
        raise ThrottleConfigError(f"Value '{value}' is too large for parameter '{name}'")
    if sign == "-":
        number = (-number) & _U64  # strtoull negates in unsigned arithmetic
    return number


def _as_int64(value: int) -> int:
    """How QEMU reports a uint64 field through a QAPI ``int`` (two's complement)."""
    value &= _U64
    return value - (1 << 64) if value > _I64_MAX else value


@dataclass
class ThrottleConfig:
    """Six :class:`LeakyBucket` limits plus ``op_size`` (``iops-size``) and an optional group name.

    A fresh config has every limit 0 and ``burst_length`` 1 (``throttle_config_init``): valid
    and not :meth:`enabled`. ``group`` is where the config came with a group name
    (``throttling.group`` / QMP ``group``); the maths ignores it.
    """

    buckets: list[LeakyBucket] = field(default_factory=lambda: [LeakyBucket() for _ in range(BUCKETS_COUNT)])
    op_size: int = 0
    group: str | None = None

    # --- access -------------------------------------------------------------------------

    def bucket(self, which: BucketType) -> LeakyBucket:
        return self.buckets[which]

    def copy(self) -> ThrottleConfig:
        return copy.deepcopy(self)

    def limits_equal(self, other: ThrottleConfig) -> bool:
        """Same limits (avg, max, burst length, op_size), levels and group aside."""
        return self.op_size == other.op_size and all(
            (a.avg, a.max, a.burst_length) == (b.avg, b.max, b.burst_length)
            for a, b in zip(self.buckets, other.buckets, strict=True)
        )

    def enabled(self) -> bool:
        """Any average limit set (``throttle_enabled``): only then is a device throttled."""
        return any(b.avg > 0 for b in self.buckets)

    # --- validation ---------------------------------------------------------------------

    def validate(self) -> None:
        """Raise :class:`ThrottleConfigError` unless the config passes ``throttle_is_valid``.

        Checked in QEMU's order, so the first broken rule names the error:
        total and read/write limits are exclusive (averages, and separately bursts);
        ``iops-size`` needs an iops limit; then per bucket: limits within
        [0, THROTTLE_VALUE_MAX], burst length not 0, a burst length > 1 needs a burst rate,
        ``max * burst_length`` within THROTTLE_VALUE_MAX, a burst rate needs an average,
        and a burst rate is not below the average.
        """
        b = self.buckets
        T = BucketType
        conflict = (
            (b[T.BPS_TOTAL].avg and (b[T.BPS_READ].avg or b[T.BPS_WRITE].avg))
            or (b[T.OPS_TOTAL].avg and (b[T.OPS_READ].avg or b[T.OPS_WRITE].avg))
            or (b[T.BPS_TOTAL].max and (b[T.BPS_READ].max or b[T.BPS_WRITE].max))
            or (b[T.OPS_TOTAL].max and (b[T.OPS_READ].max or b[T.OPS_WRITE].max))
        )
        if conflict:
            raise ThrottleConfigError("bps/iops/max total values and read/write values cannot be used at the same time")
        if self.op_size and not (b[T.OPS_TOTAL].avg or b[T.OPS_READ].avg or b[T.OPS_WRITE].avg):
            raise ThrottleConfigError("iops size requires an iops value to be set")
        for bkt in b:
            # QEMU's fields are unsigned, so a negative value is a huge one: out of range.
            if not (0 <= bkt.avg <= THROTTLE_VALUE_MAX and 0 <= bkt.max <= THROTTLE_VALUE_MAX):
                raise ThrottleConfigError(f"bps/iops/max values must be within [0, {THROTTLE_VALUE_MAX}]")
            length = bkt.burst_length & _U64 if bkt.burst_length < 0 else bkt.burst_length
            if not length:
                raise ThrottleConfigError("the burst length cannot be 0")
            if length > 1 and not bkt.max:
                raise ThrottleConfigError("burst length set without burst rate")
            if bkt.max and length > _int_div(THROTTLE_VALUE_MAX, bkt.max):
                raise ThrottleConfigError("burst length too high for this burst rate")
            if bkt.max and not bkt.avg:
                raise ThrottleConfigError("bps_max/iops_max require corresponding bps/iops values")
            if bkt.max and bkt.max < bkt.avg:
                raise ThrottleConfigError("bps_max/iops_max cannot be lower than bps/iops")

    def is_valid(self) -> bool:
        try:
            self.validate()
        except ThrottleConfigError:
            return False
        return True

    # --- -drive ---------------------------------------------------------------------------

    @classmethod
    def from_drive_options(cls, opts: Mapping[str, str]) -> ThrottleConfig:
        """Build and validate a config from ``-drive`` options (other keys are ignored).

        Legacy aliases are renamed first; giving both spellings is QEMU's alias error.
        An unknown ``throttling.*`` key reaches the format driver in QEMU, which rejects it;
        the message names ``opts['format']`` (``raw`` if absent).
        """
        renamed: dict[str, str] = {k: v for k, v in opts.items() if k not in DRIVE_LEGACY_ALIASES}
        for old, new in DRIVE_LEGACY_ALIASES.items():
            if old in opts:
                if new in opts:
                    raise ThrottleConfigError(f"'{new}' and its alias '{old}' can't be used at the same time")
                renamed[new] = opts[old]
        cfg = cls()
        for name, (which, attr) in DRIVE_OPTION_NAMES.items():
            if name in renamed:
                setattr(cfg.buckets[which], attr, _parse_number(name, renamed[name]))
        if _DRIVE_IOPS_SIZE in renamed:
            cfg.op_size = _parse_number(_DRIVE_IOPS_SIZE, renamed[_DRIVE_IOPS_SIZE])
        if _DRIVE_GROUP in renamed:
            cfg.group = renamed[_DRIVE_GROUP]
        cfg.validate()
        # QEMU validates the limits before opening the image; the driver then refuses leftovers.
        for key in renamed:
            if key.startswith(_PREFIX) and key not in _KNOWN_DRIVE_KEYS:
                fmt = opts.get("format", "raw")
                raise ThrottleConfigError(f"Block format '{fmt}' does not support the option '{key}'")
        return cfg

    def to_drive_options(self) -> dict[str, str]:
        """The ``throttling.*`` options that reproduce this config (defaults left out)."""
        out: dict[str, str] = {}
        for name, (which, attr) in DRIVE_OPTION_NAMES.items():
            value = getattr(self.buckets[which], attr)
            if value != (1 if attr == "burst_length" else 0):
                out[name] = str(int(value))
        if self.op_size:
            out[_DRIVE_IOPS_SIZE] = str(self.op_size)
        if self.group is not None:
            out[_DRIVE_GROUP] = self.group
        return out

    # --- QMP ------------------------------------------------------------------------------

    @classmethod
    def from_qmp(cls, args: Mapping[str, Any]) -> ThrottleConfig:
        """Build and validate a config from ``block_set_io_throttle`` arguments.

        Arguments are checked as QEMU's QAPI visitor does, in schema order (a missing
        mandatory member or a wrong type is reported for the first such member), unknown
        members last; then the config is assembled like ``qmp_block_set_io_throttle`` (from
        a fresh config: members left out mean "no limit", not "keep") and validated.
        ``device``/``id`` select the drive and are the caller's business.
        """
        for name, (qtype, mandatory) in QMP_FIELDS.items():
            if name not in args:
                if mandatory:
                    raise ThrottleConfigError(f"Parameter '{name}' is missing")
                continue
            value = args[name]
            if qtype == "int":
                ok = isinstance(value, int) and not isinstance(value, bool) and _I64_MIN <= value <= _I64_MAX
            else:
                ok = isinstance(value, str)
            if not ok:
                expected = "integer" if qtype == "int" else "string"
                raise ThrottleConfigError(f"Invalid parameter type for '{name}', expected: {expected}")
        for name in args:
            if name not in QMP_FIELDS:
                raise ThrottleConfigError(f"Parameter '{name}' is unexpected")

        cfg = cls()
        for which in BucketType:
            key = _BUCKET_NAMES[which][1]
            bkt = cfg.buckets[which]
            bkt.avg = args[key] & _U64
            if key + "_max" in args:
                bkt.max = args[key + "_max"] & _U64
            if key + "_max_length" in args:
                bkt.burst_length = args[key + "_max_length"] & _U64
        if "iops_size" in args:
            cfg.op_size = args["iops_size"] & _U64
        cfg.group = args.get("group")
        cfg.validate()
        return cfg

    def to_qmp_args(self) -> dict[str, Any]:
        """``block_set_io_throttle`` arguments (without ``id``/``device``) for this config."""
        out: dict[str, Any] = {}
        for which in BucketType:
            out[_BUCKET_NAMES[which][1]] = int(self.buckets[which].avg)
        for which in BucketType:
            bkt = self.buckets[which]
            key = _BUCKET_NAMES[which][1]
            if bkt.max:
                out[key + "_max"] = int(bkt.max)
                out[key + "_max_length"] = int(bkt.burst_length)
        if self.op_size:
            out["iops_size"] = _as_int64(self.op_size)
        if self.group is not None:
            out["group"] = self.group
        return out

    def to_qmp_info(self, group: str | None = None) -> dict[str, Any]:
        """The throttle members of ``query-block``'s ``inserted`` (``BlockDeviceInfo``).

        As QEMU 7.2 reports them: the six averages always (0 when not throttled); each
        ``*_max`` and its ``*_max_length`` only when that burst rate is set; ``iops_size``
        only when set (a uint64 shown as QAPI ``int``); ``group`` only while throttled
        (``group`` argument, else :attr:`group`).
        """
        out: dict[str, Any] = {}
        for which in BucketType:
            out[_BUCKET_NAMES[which][1]] = int(self.buckets[which].avg)
        if not self.enabled():
            return out
        for which in BucketType:
            bkt = self.buckets[which]
            if bkt.max:
                out[_BUCKET_NAMES[which][1] + "_max"] = int(bkt.max)
        for which in BucketType:
            bkt = self.buckets[which]
            if bkt.max:
                out[_BUCKET_NAMES[which][1] + "_max_length"] = _as_int64(int(bkt.burst_length))
        if self.op_size:
            out["iops_size"] = _as_int64(self.op_size)
        name = group if group is not None else self.group
        if name is not None:
            out["group"] = name
        return out

    def __str__(self) -> str:
        opts = self.to_drive_options()
        return ",".join(f"{k}={v}" for k, v in opts.items()) or "(unthrottled)"


def _int_div(a: int, b: float) -> float:
    """``a / b`` as C computes it for the operand types: integer division for integers."""
    if isinstance(b, int):
        return a // b
    return a / b
