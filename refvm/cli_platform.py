"""Management-stack options of the command line: -machine/-M, -realtime, -overcommit, -no-user-config, -boot,
-msg, -sandbox, -monitor, -add-fd, and the display/USB options refvm refuses (-vnc, -k, -usb, -vga, -spice).

libvirt and OpenStack emit these on every command line; refvm accepts them with QEMU's spelling and one-line
error texts (taken from QEMU 7.2 where it has the option) and records what it accepted in ``PlatformOptions``
so QMP and the README can report it. cli.py only merges the tables returned by :func:`platform_options`.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field

from refvm import machine_types
from refvm.config import MachineConfig
from refvm.qemu_opts import parse_opts

__all__ = ["PlatformOptions", "platform_options", "HELP", "BOOT_KEYS", "apply_at_start"]

HELP = """\
Management-stack options (accepted as libvirt/OpenStack pass them):
  -machine help           list the machine types (pc, pc-i440fx-2.0 .. 7.2, pc-i440fx-trusty, -rhel7.6.0, ...)
  -machine TYPE[,accel=kvm][,usb=off][,dump-guest-core=on|off][,mem-merge=on|off][,vmport=off]
  -realtime mlock=on|off, -overcommit mem-lock=on|off
                          lock guest and VMM memory in RAM (mlockall)
  -no-user-config         accepted: refvm reads no configuration files
  -boot [order=DRIVES][,once=DRIVES][,menu=on|off][,strict=on|off][,splash-time=MS][,reboot-timeout=MS]
                          accepted and kept (refvm boots -kernel only); bootindex= on devices likewise
  -msg timestamp=on|off   prefix error lines with an ISO 8601 UTC time stamp
  -sandbox on|off[,obsolete=,elevateprivileges=,spawn=,resourcecontrol=]
                          accepted; refvm installs no seccomp filter (a warning says so for 'on')
  -monitor none|stdio|chardev:ID
                          a human monitor ("(qemu) " prompt: info status|pci|block|cpus|qtree, stop, cont, quit)
  -add-fd fd=N,set=S[,opaque=TEXT]
                          put inherited descriptor N into fd set S (/dev/fdset/S for QMP add-fd users)
"""

HMP_STDIO_ID = "compat_monitor0"  # QEMU's label for -monitor stdio's chardev
BOOT_KEYS = ("order", "once", "menu", "strict", "splash", "splash-time", "reboot-timeout")
SANDBOX_KEYS = ("enable", "obsolete", "elevateprivileges", "spawn", "resourcecontrol")
#: Options that need a display or USB, which refvm does not model, with why (one line each).
REFUSED_OPTIONS = {
    "vnc": "refvm has no graphical display, so no VNC server",
    "spice": "refvm has no graphical display, so no SPICE server",
    "k": "refvm has no graphical display, so no keyboard layout",
    "vga": "refvm models no VGA adapter",
    "usbdevice": "refvm models no USB controller",
}
_ON = {"on": True, "yes": True, "true": True, "off": False, "no": False, "false": False}


@dataclass
class PlatformOptions:
    """What the management options asked for (reported by QMP; most change nothing in refvm's board)."""

    machine: machine_types.MachineOptions = field(default_factory=machine_types.MachineOptions)
    mem_lock: bool = False
    boot: dict[str, str] = field(default_factory=dict)
    #: Device id (or driver) -> bootindex, from -device ...,bootindex=N.
    boot_indexes: dict[str, int] = field(default_factory=dict)
    msg_timestamp: bool = False
    sandbox: dict[str, str] = field(default_factory=dict)
    no_user_config: bool = False
    #: -monitor stdio|chardev:ID: the id of the chardev the human monitor reads (None: no human monitor).
    monitor_chardev: str | None = None
    #: -add-fd: fd set id -> [(fd, opaque)].
    fd_sets: dict[int, list[tuple[int, str]]] = field(default_factory=dict)


def _on_off(where: str, key: str, value: str, label: str | None = None) -> bool:
    if value not in _ON:
        raise ValueError(f"{where}: Parameter '{label or key}' expects 'on' or 'off'")
    return _ON[value]


def platform_options(
    cfg: MachineConfig, plat: PlatformOptions, error: Callable[[str], Exception], on_help: Callable[[str], None]
) -> tuple[dict[str, Callable[[str], None]], dict[str, Callable[[], None]]]:
    """(options with an argument, flags) to merge into cli.py's tables; ``error(text)`` builds its UsageError,
    ``on_help(text)`` makes main() print ``text`` and exit 0 (``-machine help``)."""

    def machine(text: str) -> None:
        props = parse_opts(text, "type")
        if props.get("type") in ("help", "?"):
            on_help(machine_types.help_text())
            return
        try:
            machine_types.parse_machine(props, plat.machine)
        except ValueError as err:
            raise error(f"-machine {text}: {err}") from None
        if plat.machine.accel is not None:
            accel = plat.machine.accel.split(":", 1)[0]  # QEMU's accel=kvm:tcg fallback list: the first one
            if accel not in ("kvm", "qtest"):
                raise error(f"-machine {text}: unsupported accelerator '{accel}' (refvm has 'kvm' and 'qtest')")
            cfg.accel = accel

    def mem_lock(opt: str, key: str) -> Callable[[str], None]:
        def parse(text: str) -> None:
            props = parse_opts(text)
            for k, value in props.items():
                if k == key:
                    plat.mem_lock = _on_off(f"-{opt} {text}", k, value)
                elif not (opt == "overcommit" and k == "cpu-pm"):
                    raise error(f"-{opt} {text}: Invalid parameter '{k}'")
                elif _on_off(f"-{opt} {text}", k, value):
                    raise error(f"-{opt} {text}: cpu-pm=on: refvm does not pass CPU power management to the guest")

        def checked(text: str) -> None:
            try:
                parse(text)
            except ValueError as err:
                raise error(str(err)) from None

        return checked

    def boot(text: str) -> None:
        props = parse_opts(text, "order")
        for key, value in props.items():
            if key not in BOOT_KEYS:
                raise error(f"-boot {text}: Parameter 'boot.{key}' is unexpected")
            if key in ("order", "once"):
                bad = next((c for c in value if not "a" <= c <= "p"), None)
                if bad is not None:
                    raise error(f"-boot {text}: Invalid boot device '{bad}'")
            elif key in ("menu", "strict") and value not in _ON:
                raise error(f"-boot {text}: Parameter 'boot.{key}' expects 'on' or 'off'")
            elif key in ("splash-time", "reboot-timeout") and not value.lstrip("-").isdigit():
                raise error(f"-boot {text}: Parameter 'boot.{key}' expects a number")
        plat.boot.update(props)

    def msg(text: str) -> None:
        for key, value in parse_opts(text).items():
            if key == "timestamp":
                if value not in _ON:
                    raise error(f"-msg {text}: Parameter 'timestamp' expects 'on' or 'off'")
                plat.msg_timestamp = _ON[value]
            elif key != "guest-name":
                raise error(f"-msg {text}: Invalid parameter '{key}'")

    def sandbox(text: str) -> None:
        props = parse_opts(text, "enable")
        for key in props:
            if key not in SANDBOX_KEYS:
                raise error(f"-sandbox {text}: Invalid parameter '{key}'")
        if props.get("enable", "off") not in _ON:
            raise error(f"-sandbox {text}: Parameter 'enable' expects 'on' or 'off'")
        plat.sandbox = props

    def monitor(text: str) -> None:
        if text == "none":
            plat.monitor_chardev = None
        elif text == "stdio":
            plat.monitor_chardev = HMP_STDIO_ID  # cli.py adds the stdio chardev under QEMU's label
        elif text.startswith("chardev:") and text[8:]:
            plat.monitor_chardev = text[8:]  # checked once every -chardev is known
        else:
            raise error(f"-monitor {text}: refvm's human monitor takes none, stdio or chardev:ID")

    def add_fd(text: str) -> None:
        props = parse_opts(text)
        for key in props:
            if key not in ("fd", "set", "opaque"):
                raise error(f"-add-fd {text}: Invalid parameter '{key}'")
        try:
            fd = int(props.get("fd", "-1"), 0)
            fdset = int(props.get("set", "-1"), 0)
        except ValueError:
            raise error(f"-add-fd {text}: Parameter 'fd' expects a number") from None
        if fd < 0:
            raise error(f"-add-fd {text}: fd option is required and must be non-negative")
        if fd <= 2:
            raise error(f"-add-fd {text}: fd cannot be a standard I/O stream")
        if fdset < 0:
            raise error(f"-add-fd {text}: set option is required and must be non-negative")
        try:
            stat.S_IFMT(os.fstat(fd).st_mode)
        except OSError:
            raise error(f"-add-fd {text}: fd is not valid or already in use") from None
        if any(fd == f for entries in plat.fd_sets.values() for f, _ in entries):
            raise error(f"-add-fd {text}: fd is not valid or already in use")
        plat.fd_sets.setdefault(fdset, []).append((fd, props.get("opaque", "")))

    def refuse(opt: str) -> Callable[[str], None]:
        def fail(text: str) -> None:
            raise error(f"-{opt} {text}: {REFUSED_OPTIONS[opt]}")

        return fail

    with_arg: dict[str, Callable[[str], None]] = {
        "machine": machine,
        "M": machine,
        "realtime": mem_lock("realtime", "mlock"),
        "overcommit": mem_lock("overcommit", "mem-lock"),
        "boot": boot,
        "msg": msg,
        "sandbox": sandbox,
        "monitor": monitor,
        "add-fd": add_fd,
        **{opt: refuse(opt) for opt in REFUSED_OPTIONS},
    }

    def usb() -> None:
        raise error("-usb: refvm models no USB controller")

    flags: dict[str, Callable[[], None]] = {
        "no-user-config": lambda: setattr(plat, "no_user_config", True),
        "usb": usb,
    }
    return with_arg, flags


MCL_CURRENT, MCL_FUTURE = 1, 2


def apply_at_start(plat: object) -> None:
    """What the accepted options do when the VMM starts: mlockall for mem-lock, a warning for -sandbox on.

    Raises OSError (QEMU: "mlockall: ..." then "locking memory failed") when the memory cannot be locked.
    """
    if not isinstance(plat, PlatformOptions):
        return
    if plat.sandbox.get("enable") in ("on", "yes", "true"):
        import sys

        print("refvm: warning: -sandbox on: refvm installs no seccomp filter", file=sys.stderr)
    if plat.mem_lock:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.mlockall(MCL_CURRENT | MCL_FUTURE) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"mlockall: {os.strerror(err)}: locking memory failed")


def resolve_monitor(plat: PlatformOptions, cfg: MachineConfig, parse_chardev: Callable[[str], object],
                    error: Callable[[str], Exception]) -> None:  # fmt: skip
    """Bind -monitor to its chardev once every -chardev and serial port is known (QEMU's texts)."""
    ident = plat.monitor_chardev
    if ident is None:
        return
    serial_specs = [s for s in cfg.serials if s is not None]
    if ident == HMP_STDIO_ID:
        if any(getattr(s, "backend", "") == "stdio" for s in [*serial_specs, *cfg.chardevs.values()]):
            raise error("-monitor stdio: cannot use stdio by multiple character devices")
        cfg.chardevs[ident] = parse_chardev(f"stdio,id={ident}")
    elif ident not in cfg.chardevs:
        raise error(f'-monitor chardev:{ident}: chardev "{ident}" not found')
    elif any(s is cfg.chardevs[ident] for s in serial_specs):
        raise error(f"-monitor chardev:{ident}: chardev '{ident}' is already in use by a serial port")
