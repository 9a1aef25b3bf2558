"""Machine type names: `pc`, QEMU's versioned `pc-i440fx-X.Y` and the distribution aliases management stacks emit.

A versioned machine type pins guest-visible defaults so that a guest migrated between QEMU releases sees the same
board. refvm has exactly one board and never changed its defaults, so every name below is that board; the name
is kept (query-machines, -machine help, qom) because libvirt and OpenStack read it back. Distribution aliases
(Ubuntu's codenames, RHEL's `rhelX.Y.0`) are listed with the upstream version their QEMU based the type on.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MachineType", "MACHINE_TYPES", "DEFAULT", "lookup", "help_text", "MachineOptions", "parse_machine"]

DESCRIPTION = "Standard PC (i440FX + PIIX, 1996)"
UPSTREAM = ("7.2", "7.1", "7.0", "6.2", "6.1", "6.0", "5.2", "5.1", "5.0", "4.2", "4.1", "4.0", "3.1", "3.0",
            "2.9", "2.8", "2.7", "2.6", "2.5", "2.4", "2.3", "2.2", "2.12", "2.11", "2.10", "2.1", "2.0")  # fmt: skip
#: Distribution machine types -> the upstream version they were derived from (Ubuntu's and RHEL's QEMU).
DISTRIBUTION = {
    "trusty": "2.0", "utopic": "2.1", "vivid": "2.2", "wily": "2.3", "xenial": "2.5", "yakkety": "2.6",
    "zesty": "2.8", "artful": "2.10", "bionic": "2.11", "cosmic": "2.12", "disco": "3.1", "eoan": "4.0",
    "focal": "4.2", "groovy": "5.0", "hirsute": "5.2", "impish": "6.0", "jammy": "6.2", "kinetic": "7.0",
    "rhel7.0.0": "2.0", "rhel7.1.0": "2.1", "rhel7.2.0": "2.3", "rhel7.3.0": "2.6", "rhel7.4.0": "2.9",
    "rhel7.5.0": "2.10", "rhel7.6.0": "2.12",
}  # fmt: skip


@dataclass(frozen=True)
class MachineType:
    """One accepted -machine name: all are the same i440FX board in refvm."""

    name: str
    alias: str | None = None  # the short name that points here ("pc" for the newest)
    is_default: bool = False
    based_on: str = ""  # the upstream version a distribution type derives from

    @property
    def qom_type(self) -> str:
        return f"{self.name}-machine"


def _build() -> dict[str, MachineType]:
    types = {f"pc-i440fx-{v}": MachineType(f"pc-i440fx-{v}", based_on=v) for v in UPSTREAM}
    newest = f"pc-i440fx-{UPSTREAM[0]}"
    types[newest] = MachineType(newest, alias="pc", is_default=True, based_on=UPSTREAM[0])
    for distro, version in DISTRIBUTION.items():
        types[f"pc-i440fx-{distro}"] = MachineType(f"pc-i440fx-{distro}", based_on=version)
    return types


MACHINE_TYPES = _build()
DEFAULT = MACHINE_TYPES[f"pc-i440fx-{UPSTREAM[0]}"]


def lookup(name: str) -> MachineType | None:
    """The machine type named ``name`` (``pc`` is the newest versioned type, as in QEMU)."""
    if name == "pc":
        return DEFAULT
    return MACHINE_TYPES.get(name)


def help_text() -> str:
    """`-machine help`, in QEMU's layout."""
    lines = ["Supported machines are:", f"{'pc':<20} {DESCRIPTION} (alias of {DEFAULT.name})"]
    for mt in MACHINE_TYPES.values():
        lines.append(f"{mt.name:<20} {DESCRIPTION}{' (default)' if mt.is_default else ''}")
    lines.append(f"{'none':<20} empty machine")
    return "\n".join(lines) + "\n"


@dataclass
class MachineOptions:
    """The -machine properties refvm accepts; stored so QMP and qom can report them."""

    type: MachineType = DEFAULT
    accel: str | None = None
    usb: bool = False
    dump_guest_core: bool = True
    mem_merge: bool = True
    vmport: str = "auto"


_BOOL_PROPS = {"usb", "dump-guest-core", "mem-merge"}
_ON = {"on": True, "yes": True, "true": True, "off": False, "no": False, "false": False}


def parse_machine(props: dict[str, str], opts: MachineOptions | None = None) -> MachineOptions:
    """Apply -machine's properties; ValueError carries QEMU's text (without the ``-machine X:`` prefix)."""
    opts = opts or MachineOptions()
    if "type" in props:
        mt = lookup(props["type"])
        if mt is None:
            raise ValueError(f"unsupported machine type '{props['type']}' (-machine help lists the supported ones)")
        opts.type = mt
    for key, value in props.items():
        if key == "type":
            continue
        if key in _BOOL_PROPS:
            if value not in _ON:
                raise ValueError(f"Parameter '{key}' expects 'on' or 'off'")
            if key == "usb" and _ON[value]:
                raise ValueError("usb=on: refvm models no USB controller (use usb=off)")
            setattr(opts, key.replace("-", "_"), _ON[value])
        elif key == "accel":
            opts.accel = value
        elif key == "vmport":
            if value not in ("on", "off", "auto"):
                raise ValueError("Parameter 'vmport' does not accept value '" + value + "'")
            if value == "on":
                raise ValueError("vmport=on: refvm models no VMware I/O port (use vmport=off)")
            opts.vmport = value
        else:
            raise ValueError(f"Property '{opts.type.qom_type}.{key}' not found")
    return opts
