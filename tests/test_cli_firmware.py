"""-uuid, -smbios, -rtc, -no-hpet: accepted as QEMU spells them; bad values give QEMU 7.2's one-line texts."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from refvm.cli import UsageError, parse_args

UUID = "1f8e6f7e-5a70-4780-89c1-464dc0e7f308"

#: (arguments, the message after "PROG: "), QEMU 7.2's text unless a comment says otherwise.
BAD = [
    (["-uuid", "foo"], "-uuid foo: failed to parse UUID string: wrong format"),
    (["-uuid", "1f8e6f7e5a70478089c1464dc0e7f308"],
     "-uuid 1f8e6f7e5a70478089c1464dc0e7f308: failed to parse UUID string: wrong format"),
    (["-smbios", "type=5"], "-smbios type=5: Don't know how to build fields for SMBIOS type 5"),
    (["-smbios", "type=1,foo=bar"], "-smbios type=1,foo=bar: Invalid parameter 'foo'"),
    (["-smbios", "manufacturer=x"], "-smbios manufacturer=x: Must specify type= or file="),
    (["-smbios", "type=0,release=x"], "-smbios type=0,release=x: Invalid release"),
    (["-smbios", "type=1,uuid=zz"], "-smbios type=1,uuid=zz: Invalid UUID"),
    (["-smbios", "type=abc"], "-smbios type=abc: Parameter 'type' expects a number"),
    (["-smbios", "type=4,max-speed=x"], "-smbios type=4,max-speed=x: Parameter 'max-speed' expects a number"),
    (["-smbios", "type=17,speed=abc"], "-smbios type=17,speed=abc: Parameter 'speed' expects a number"),
    (["-smbios", "type=0,uefi=maybe"], "-smbios type=0,uefi=maybe: Parameter 'uefi' expects 'on' or 'off'"),
    (["-smbios", "file=/nonexist"], "-smbios file=/nonexist: Cannot read SMBIOS file /nonexist"),
    (["-rtc", "foo=bar"], "-rtc foo=bar: Invalid parameter 'foo'"),
]
#: QEMU prints these without the option prefix (and the base= one on two lines); refvm names the option.
BAD_REFVM_ONLY = [
    (["-rtc", "base=foo"], "-rtc base=foo: invalid datetime format: valid formats: '2006-06-17T16:01:21' or "
                           "'2006-06-17'"),  # fmt: skip
    (["-rtc", "clock=foo"], "-rtc clock=foo: invalid option value 'foo'"),
    (["-rtc", "driftfix=foo"], "-rtc driftfix=foo: invalid option value 'foo'"),
    (["-rtc", "base=2006-13-01"], "-rtc base=2006-13-01: invalid datetime format"),
]


@pytest.mark.parametrize(("args", "message"), BAD + BAD_REFVM_ONLY)
def test_bad_values_give_qemus_text(args: list[str], message: str) -> None:
    with pytest.raises(UsageError) as err:
        parse_args([*args, "-kernel", "k"])
    assert str(err.value).startswith(message)


def test_error_is_one_line_on_stderr_with_status_1() -> None:
    proc = subprocess.run([sys.executable, "-m", "refvm", "-smbios", "type=5", "-kernel", "k"],
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr == "refvm: -smbios type=5: Don't know how to build fields for SMBIOS type 5\n"


@pytest.mark.qemu
@pytest.mark.parametrize(("args", "message"), BAD)
def test_qemu_gives_the_same_text(args: list[str], message: str) -> None:
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    proc = subprocess.run([qemu, "-accel", "tcg", "-display", "none", "-nodefaults", "-S", *args],
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert proc.stderr.strip() == f"qemu-system-x86_64: {message}"


def test_nova_firmware_options_accepted() -> None:
    nova_smbios = (
        f"type=1,manufacturer=OpenStack Foundation,product=OpenStack Nova,version=2014.1,"
        f"serial=80590690-87d2-e311-b1b0-a0481cabdfb4,uuid={UUID}"
    )
    cfg = parse_args(["-uuid", UUID, "-smbios", nova_smbios, "-rtc", "base=utc,driftfix=slew", "-no-hpet",
                      "-no-shutdown", "-kernel", "k"]).config  # fmt: skip
    assert cfg.uuid == UUID and cfg.no_shutdown
    assert cfg.smbios.fields[1]["product"] == "OpenStack Nova"
    assert (cfg.rtc.base, cfg.rtc.clock, cfg.rtc.driftfix) == ("utc", "host", "slew")


def test_smbios_type1_uuid_sets_the_machine_uuid_last_one_wins() -> None:
    other = "00000000-0000-0000-0000-0000000000aa"
    cfg = parse_args(["-uuid", other, "-smbios", f"type=1,uuid={UUID}", "-kernel", "k"]).config
    assert cfg.uuid == UUID
    cfg = parse_args(["-smbios", f"type=1,uuid={UUID}", "-uuid", other, "-kernel", "k"]).config
    assert cfg.uuid == other
