"""Throttle configuration: ``-drive throttling.*`` and QMP ``block_set_io_throttle`` parsing,
validation texts and ``query-block`` reporting, as QEMU 7.2 does them.

The expected texts and shapes were observed from Debian's ``qemu-system-x86_64`` 7.2; the
``*_vs_qemu`` tests re-check the ``-drive`` errors and ``query-block`` output against the
binary when it is installed (``qemu`` marker).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from refvm.block.throttle import BucketType
from refvm.block.throttle_config import ThrottleConfig, ThrottleConfigError
from tests.conftest import require

T = BucketType
RANGE = "bps/iops/max values must be within [0, 1000000000000000]"
CONFLICT = "bps/iops/max total values and read/write values cannot be used at the same time"

# (drive options, expected error or None) -- each observed with QEMU 7.2.
DRIVE_CASES: list[tuple[str, str | None]] = [
    ("throttling.bps-total=1,throttling.bps-read=1", CONFLICT),
    ("throttling.iops-total=1,throttling.iops-write=1", CONFLICT),
    ("throttling.bps-total=5,throttling.bps-total-max=9,throttling.bps-write=1,throttling.bps-write-max=2", CONFLICT),
    ("throttling.bps-total-max=100", "bps_max/iops_max require corresponding bps/iops values"),
    ("throttling.bps-total=100,throttling.bps-total-max=30", "bps_max/iops_max cannot be lower than bps/iops"),
    ("throttling.bps-total=-1", RANGE),
    ("throttling.bps-total=1000000000000001", RANGE),
    ("throttling.bps-total=18446744073709551615", RANGE),
    ("throttling.bps-total=abc", "Parameter 'throttling.bps-total' expects a number"),
    ("throttling.bps-total=1.5", "Parameter 'throttling.bps-total' expects a number"),
    ("throttling.bps-total=", "Parameter 'throttling.bps-total' expects a number"),
    ("throttling.bps-total=08", "Parameter 'throttling.bps-total' expects a number"),
    (
        "throttling.bps-total=18446744073709551616",
        "Value '18446744073709551616' is too large for parameter 'throttling.bps-total'",
    ),
    ("throttling.bps-total-max-length=0", "the burst length cannot be 0"),
    ("throttling.bps-total=10,throttling.bps-total-max-length=2", "burst length set without burst rate"),
    ("throttling.bps-total-max-length=4294967296", "burst length set without burst rate"),
    (
        "throttling.bps-total=1,throttling.bps-total-max=1000000000000000,throttling.bps-total-max-length=2",
        "burst length too high for this burst rate",
    ),
    ("throttling.iops-size=4096", "iops size requires an iops value to be set"),
    ("bps=1,throttling.bps-total=2", "'throttling.bps-total' and its alias 'bps' can't be used at the same time"),
    ("group=g,throttling.group=h", "'throttling.group' and its alias 'group' can't be used at the same time"),
    ("bps=1,bps_rd=1", CONFLICT),
    ("throttling.foo=1", "Block format 'raw' does not support the option 'throttling.foo'"),
    ("throttling.bps-total=0x10", None),
    ("throttling.bps-total=010", None),
    ("throttling.bps-total=+5", None),
    ("throttling.bps-total=-0", None),
    ("throttling.bps-total=-18446744073709551615", None),
    ("throttling.group=g,throttling.bps-total=5", None),
    ("throttling.iops-total=1,throttling.iops-size=-1", None),
    ("iops=100,iops_max=200,iops_size=4096,group=g", None),
    ("throttling.bps-read=1000,throttling.bps-read-max=3000,throttling.bps-read-max-length=7", None),
]


def parse_opts(text: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in text.split(",")) | {"format": "raw"}


@pytest.mark.parametrize("opts,expected", DRIVE_CASES, ids=[c[0] for c in DRIVE_CASES])
def test_drive_options(opts: str, expected: str | None) -> None:
    if expected is None:
        ThrottleConfig.from_drive_options(parse_opts(opts))
    else:
        with pytest.raises(ThrottleConfigError) as exc:
            ThrottleConfig.from_drive_options(parse_opts(opts))
        assert str(exc.value) == expected
        assert isinstance(exc.value, ValueError)


def test_drive_number_spellings() -> None:
    def bps(value: str) -> float:
        return ThrottleConfig.from_drive_options({"throttling.bps-total": value}).buckets[T.BPS_TOTAL].avg

    assert bps("0x10") == 16
    assert bps("010") == 8
    assert bps("+5") == 5
    assert bps(" 7") == 7
    assert bps("-18446744073709551615") == 1  # strtoull wraps negatives


def test_drive_options_fill_every_field() -> None:
    opts = {
        "throttling.iops-read": "10",
        "throttling.iops-read-max": "20",
        "throttling.iops-read-max-length": "3",
        "throttling.bps-write": "1000",
        "throttling.bps-write-max": "4000",
        "throttling.iops-size": "4096",
        "throttling.group": "gg",
        "file": "/x.img",  # not ours: ignored
    }
    cfg = ThrottleConfig.from_drive_options(opts)
    assert (cfg.buckets[T.OPS_READ].avg, cfg.buckets[T.OPS_READ].max, cfg.buckets[T.OPS_READ].burst_length) == (
        10,
        20,
        3,
    )
    assert (cfg.buckets[T.BPS_WRITE].avg, cfg.buckets[T.BPS_WRITE].max) == (1000, 4000)
    assert cfg.op_size == 4096 and cfg.group == "gg" and cfg.enabled()
    assert ThrottleConfig.from_drive_options(cfg.to_drive_options()).limits_equal(cfg)


def test_legacy_aliases() -> None:
    cfg = ThrottleConfig.from_drive_options({"bps_rd": "5", "bps_wr": "6", "iops": "7", "iops_max": "8", "group": "x"})
    assert cfg.buckets[T.BPS_READ].avg == 5 and cfg.buckets[T.BPS_WRITE].avg == 6
    assert cfg.buckets[T.OPS_TOTAL].avg == 7 and cfg.buckets[T.OPS_TOTAL].max == 8
    assert cfg.group == "x"


def test_empty_config_is_valid_and_disabled() -> None:
    cfg = ThrottleConfig.from_drive_options({"file": "x"})
    assert not cfg.enabled()
    assert cfg.to_qmp_info() == {"bps": 0, "bps_rd": 0, "bps_wr": 0, "iops": 0, "iops_rd": 0, "iops_wr": 0}


# --- QMP ----------------------------------------------------------------------------------

BASE = {"device": "d0", "bps": 0, "bps_rd": 0, "bps_wr": 0, "iops": 0, "iops_rd": 0, "iops_wr": 0}

QMP_CASES: list[tuple[dict[str, object], str]] = [
    ({"bps": -1}, RANGE),
    ({"bps": 10, "bps_max": 20, "bps_max_length": -1}, "burst length too high for this burst rate"),
    ({"bps": 10, "bps_max": 20, "bps_max_length": -4294967296}, "burst length too high for this burst rate"),
    ({"bps": 9223372036854775808}, "Invalid parameter type for 'bps', expected: integer"),
    ({"bps": True}, "Invalid parameter type for 'bps', expected: integer"),
    ({"bps": 1.5}, "Invalid parameter type for 'bps', expected: integer"),
    ({"bps": "x"}, "Invalid parameter type for 'bps', expected: integer"),
    ({"bps": 1, "bps_rd": 1, "group": 5}, "Invalid parameter type for 'group', expected: string"),
    ({"bps": 1, "foo": 1, "iops_size": "a"}, "Invalid parameter type for 'iops_size', expected: integer"),
    ({"bps": 1, "foo": 1}, "Parameter 'foo' is unexpected"),
    ({"iops_size": 7}, "iops size requires an iops value to be set"),
    ({"bps_max_length": 0}, "the burst length cannot be 0"),
    ({"iops_size": -1}, "iops size requires an iops value to be set"),
    ({"bps": 1, "bps_rd": 1}, CONFLICT),
    ({"iops": 10, "iops_max": 5}, "bps_max/iops_max cannot be lower than bps/iops"),
]


@pytest.mark.parametrize("extra,expected", QMP_CASES, ids=[repr(c[0]) for c in QMP_CASES])
def test_qmp_errors(extra: dict[str, object], expected: str) -> None:
    with pytest.raises(ThrottleConfigError) as exc:
        ThrottleConfig.from_qmp(BASE | extra)
    assert str(exc.value) == expected
    assert exc.value.qmp_class == "GenericError"


def test_qmp_missing_member_reported_in_schema_order() -> None:
    args = {k: v for k, v in BASE.items() if k != "bps"} | {"bps_rd": "y", "foo": 1}
    with pytest.raises(ThrottleConfigError, match=r"^Parameter 'bps' is missing$"):
        ThrottleConfig.from_qmp(args)


def test_qmp_bps_max_length_above_uint32_is_accepted() -> None:
    """QEMU 7.2 keeps burst lengths as 64-bit: 4294967297 comes back from query-block."""
    cfg = ThrottleConfig.from_qmp(BASE | {"bps": 10, "bps_max": 20, "bps_max_length": 4294967297})
    assert cfg.to_qmp_info("d0") == {
        "bps": 10,
        "bps_rd": 0,
        "bps_wr": 0,
        "iops": 0,
        "iops_rd": 0,
        "iops_wr": 0,
        "bps_max": 20,
        "bps_max_length": 4294967297,
        "group": "d0",
    }


def test_qmp_info_shapes_as_qemu() -> None:
    cfg = ThrottleConfig.from_qmp(
        BASE | {"bps": 1000, "iops": 100, "bps_max": 2000, "bps_max_length": 3, "iops_size": 4096}
    )
    assert cfg.to_qmp_info("d0") == {
        "bps": 1000,
        "bps_rd": 0,
        "bps_wr": 0,
        "iops": 100,
        "iops_rd": 0,
        "iops_wr": 0,
        "bps_max": 2000,
        "bps_max_length": 3,
        "iops_size": 4096,
        "group": "d0",
    }
    cfg = ThrottleConfig.from_qmp(BASE | {"bps": 1000, "iops": 100, "iops_max": 200, "group": "g1"})
    info = cfg.to_qmp_info()
    assert info["group"] == "g1" and info["iops_max"] == 200 and info["iops_max_length"] == 1
    assert "bps_max" not in info and "iops_size" not in info
    # iops-size=-1 on -drive: uint64 max, reported through QAPI int as -1.
    cfg = ThrottleConfig.from_drive_options({"throttling.iops-total": "1", "throttling.iops-size": "-1"})
    assert cfg.to_qmp_info("d0")["iops_size"] == -1


def test_qmp_round_trip() -> None:
    args = BASE | {"bps_rd": 5000, "bps_rd_max": 9000, "bps_rd_max_length": 4, "iops_wr": 30, "iops_size": 512}
    cfg = ThrottleConfig.from_qmp(args)
    again = ThrottleConfig.from_qmp({"id": "x"} | cfg.to_qmp_args())
    assert again.limits_equal(cfg)


def test_qmp_fresh_config_each_time() -> None:
    """Members left out mean "no limit" (QEMU builds the config from scratch), not "keep"."""
    cfg = ThrottleConfig.from_qmp(BASE | {"bps": 10})
    assert cfg.buckets[T.BPS_TOTAL].max == 0 and cfg.buckets[T.BPS_TOTAL].burst_length == 1
    assert cfg.group is None


# --- differential: the same -drive options on QEMU 7.2 ------------------------------------

QEMU = shutil.which("qemu-system-x86_64")


def qemu_drive(tmp_path: Path, opts: str) -> tuple[str | None, dict[str, object] | None]:
    """Start QEMU with ``-drive ...,opts``; (error text, None) or (None, query-block 'inserted')."""
    image = tmp_path / "d.img"
    image.write_bytes(b"\0" * 65536)
    cmds = [{"execute": "qmp_capabilities"}, {"execute": "query-block"}, {"execute": "quit"}]
    proc = subprocess.run(
        [QEMU or "qemu-system-x86_64", "-machine", "none", "-nodefaults", "-display", "none", "-S", "-qmp", "stdio",
         "-drive", f"if=none,id=d0,file={image},format=raw,{opts}"],
        input="".join(json.dumps(c) + "\n" for c in cmds), capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    prefix = "qemu-system-x86_64: -drive "
    for line in proc.stderr.splitlines():
        if line.startswith(prefix):
            return line.split(": ", 2)[2], None
    for line in proc.stdout.splitlines():
        reply = json.loads(line)
        if isinstance(reply.get("return"), list):
            return None, reply["return"][0]["inserted"]
    raise AssertionError(f"unexpected QEMU output: {proc.stdout!r} {proc.stderr!r}")


THROTTLE_INFO_KEYS = {
    "bps", "bps_rd", "bps_wr", "iops", "iops_rd", "iops_wr", "iops_size", "group",
    *(f"{k}{s}" for k in ("bps", "bps_rd", "bps_wr", "iops", "iops_rd", "iops_wr") for s in ("_max", "_max_length")),
}  # fmt: skip


@pytest.mark.qemu
@pytest.mark.parametrize("opts,expected", DRIVE_CASES, ids=[c[0] for c in DRIVE_CASES])
def test_drive_options_vs_qemu(tmp_path: Path, opts: str, expected: str | None) -> None:
    require(QEMU is not None, "qemu-system-x86_64 is not installed")
    error, inserted = qemu_drive(tmp_path, opts)
    assert error == expected
    if inserted is not None:
        ours = ThrottleConfig.from_drive_options(parse_opts(opts))
        theirs = {k: v for k, v in inserted.items() if k in THROTTLE_INFO_KEYS}
        assert ours.to_qmp_info(None if not ours.enabled() else (ours.group or "d0")) == theirs
