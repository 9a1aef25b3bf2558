"""The firmware options of the command line: -uuid, -smbios, -rtc, -no-hpet (QEMU's spelling and error texts).

cli.py only merges these tables into its own, so the options and their checks live next to nothing else.
"""

from __future__ import annotations

from collections.abc import Callable

from refvm.config import MachineConfig

__all__ = ["firmware_options", "HELP"]

HELP = """\
Firmware:
  -uuid UUID              the machine's UUID (fw_cfg, SMBIOS type 1, QMP query-uuid)
  -smbios type=0|1|2|3|4|11|17[,field=value...]
                          SMBIOS fields, QEMU's names (type=1,manufacturer=..,product=..,serial=..,uuid=..)
  -rtc [base=utc|localtime|DATE][,clock=host|rt|vm][,driftfix=slew|none]
                          the MC146818 RTC's start time (DATE: 2006-06-17T16:01:21 or 2006-06-17)
  -no-hpet                accepted: refvm has no HPET
"""


def firmware_options(cfg: MachineConfig, error: Callable[[str], Exception]) -> tuple[dict, dict]:
    """(options with an argument, flags) to merge into the CLI's tables; ``error(text)`` builds its UsageError."""
    from refvm.devices.rtc import RtcError, parse_rtc
    from refvm.devices.smbios import SmbiosError, SmbiosOptions, format_uuid, parse_smbios, parse_uuid

    def set_uuid(text: str) -> None:
        try:
            cfg.uuid = format_uuid(parse_uuid(text))
        except ValueError:
            raise error(f"-uuid {text}: failed to parse UUID string: wrong format") from None

    def add_smbios(text: str) -> None:
        if cfg.smbios is None:
            cfg.smbios = SmbiosOptions()
        try:
            uuid = parse_smbios(text, cfg.smbios)  # type: ignore[arg-type]
        except SmbiosError as err:
            raise error(f"-smbios {text}: {err}") from None
        if uuid is not None:
            cfg.uuid = format_uuid(parse_uuid(uuid))  # as QEMU: type 1's uuid= is the machine's UUID too

    def set_rtc(text: str) -> None:
        try:
            cfg.rtc = parse_rtc(text, cfg.rtc)  # type: ignore[arg-type]
        except RtcError as err:
            raise error(f"-rtc {text}: {err}") from None

    with_arg = {"uuid": set_uuid, "smbios": add_smbios, "rtc": set_rtc}
    flags = {"no-hpet": lambda: None}
    return with_arg, flags
