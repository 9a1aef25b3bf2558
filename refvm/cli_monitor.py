"""The monitor and serial-port arguments of the command line that name chardevs: -serial, -qmp and -mon.

Kept out of cli.py so that it stays a table of options; errors are ValueError with QEMU-style one-line texts,
which cli.py turns into its UsageError.
"""

from __future__ import annotations

from refvm.qemu_opts import parse_opts

__all__ = ["serial_spec", "qmp_socket", "monitor_chardev", "readline_chardev"]


def readline_chardev(text: str) -> str | None:
    """The chardev id of a ``-mon chardev=ID[,mode=readline]`` (a human monitor, QEMU's default mode), else None."""
    props = parse_opts(text, "chardev")
    if props.get("mode", "readline") != "readline":
        return None
    unknown = set(props) - {"chardev", "mode", "pretty", "id"}
    if unknown:
        raise ValueError(f"-mon {text}: Invalid parameter '{sorted(unknown)[0]}'")
    return props.get("chardev", "")


def serial_spec(chardev, text: str, chardevs: dict[str, object]) -> object | None:  # noqa: ANN001
    """One -serial argument: None for `none`, a -chardev for `chardev:ID`, else the implied chardev spec."""
    if text == "none":
        return None
    if text.startswith("chardev:"):
        ident = text.split(":", 1)[1]
        if ident not in chardevs:
            raise ValueError(f"-serial {text}: chardev '{ident}' not found")
        return chardevs[ident]
    return chardev.parse_serial_option(text)


def qmp_socket(opt: str, text: str, spec) -> tuple[str, bool]:  # noqa: ANN001
    """(socket path, listen?) of a QMP monitor: refvm serves QMP on unix sockets only."""
    if spec.backend != "socket" or not spec.path:
        raise ValueError(f"-{opt} {text}: refvm's QMP monitor needs a unix socket (unix:PATH,server=on,wait=off)")
    return spec.path, spec.server


def monitor_chardev(text: str, chardevs: dict[str, object]) -> tuple[str, bool]:
    """-mon chardev=ID,mode=control: the QMP socket of that chardev (which the monitor takes from the table)."""
    props = parse_opts(text, "chardev")
    unknown = set(props) - {"chardev", "mode", "pretty", "id"}
    if unknown:
        raise ValueError(f"-mon {text}: Invalid parameter '{sorted(unknown)[0]}'")
    if props.get("mode", "readline") not in ("control", "readline"):
        raise ValueError(f"-mon {text}: Parameter 'mode' does not accept value '{props['mode']}'")
    ident = props.get("chardev", "")
    if ident not in chardevs:
        raise ValueError(f"-mon {text}: chardev '{ident}' not found")
    return qmp_socket("mon", text, chardevs.pop(ident))
