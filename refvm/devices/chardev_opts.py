"""QEMU's ``-chardev`` and ``-serial`` spellings, parsed into a :class:`ChardevSpec`.

Kept apart from the backends so that the command line can be checked without opening anything, and so
that every error names the option and field the user got wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

from refvm.qemu_opts import split_opts


@dataclass
class ChardevSpec:
    """A parsed ``-chardev``/``-serial`` argument. ``backend`` is a QEMU driver name, or
    ``chardev`` (refers to ``id``) or ``none`` (no serial port) from ``-serial``."""

    backend: str
    id: str | None = None
    path: str | None = None
    host: str | None = None
    port: int | None = None
    server: bool = False
    wait: bool = True
    nodelay: bool = False
    mux: bool = False
    signal: bool = True
    append: bool = False
    logfile: str | None = None
    monitor: bool = False  # mon:stdio: the monitor shares this chardev


_COMMON = {"id", "mux", "logfile", "logappend"}
_BACKEND_KEYS: dict[str, set[str]] = {
    "null": _COMMON,
    "stdio": _COMMON | {"signal"},
    "file": _COMMON | {"path", "append"},
    "pty": _COMMON,
    "socket": _COMMON | {"path", "host", "port", "server", "wait", "nodelay", "telnet", "reconnect"},
}
_BOOL_KEYS = {"mux", "signal", "append", "server", "wait", "nodelay", "telnet", "logappend"}
_TRUE = {"on", "yes", "true", "y"}
_FALSE = {"off", "no", "false", "n"}


def _kv(items: list[str], where: str) -> dict[str, str]:
    """key=value pairs; a bare ``key`` means on and ``nokey`` off (legacy QemuOpts spelling)."""
    out: dict[str, str] = {}
    for item in items:
        if "=" in item:
            k, v = item.split("=", 1)
        elif item.startswith("no") and item[2:] in _BOOL_KEYS:
            k, v = item[2:], "off"
        else:
            k, v = item, "on"
        if not k:
            raise ValueError(f"{where}: Invalid parameter ''")
        out[k] = v
    return out


def _fill(spec: ChardevSpec, opts: dict[str, str], where: str) -> ChardevSpec:
    allowed = _BACKEND_KEYS[spec.backend]
    for key, val in opts.items():
        if key not in allowed:
            raise ValueError(f"{where}: Invalid parameter '{key}'")
        if key in _BOOL_KEYS:
            low = val.lower()
            if low not in _TRUE | _FALSE:
                raise ValueError(f"{where}: Parameter '{key}' expects 'on' or 'off'")
            flag = low in _TRUE
            if key == "telnet" and flag:
                raise ValueError(f"{where}: Parameter 'telnet' is not supported by refvm")
            if hasattr(spec, key):
                setattr(spec, key, flag)
        elif key == "port":
            if not val.isdigit() or int(val) > 65535:
                raise ValueError(f"{where}: Parameter 'port' expects a port number")
            spec.port = int(val)
        elif key in ("id", "path", "host", "logfile"):
            if not val:
                raise ValueError(f"{where}: Parameter '{key}' must not be empty")
            setattr(spec, key, val)
    if spec.backend == "file" and spec.path is None:
        raise ValueError(f"{where}: Parameter 'path' is missing")
    if spec.backend == "socket":
        if spec.path is None and spec.port is None:
            raise ValueError(f"{where}: Parameter 'path' is missing (or give host and port)")
        if spec.path is not None and (spec.host is not None or spec.port is not None):
            raise ValueError(f"{where}: Parameter 'path' cannot be combined with 'host'/'port'")
        if not spec.server:
            spec.wait = False
    return spec


def parse_chardev_option(spec: str) -> ChardevSpec:
    """Parse a ``-chardev BACKEND,id=ID[,key=value...]`` argument.

    Errors are ValueError with QEMU's wording: ``-chardev file,id=x: Parameter 'path' is missing``.
    """
    where = f"-chardev {spec}"
    parts = split_opts(spec)
    backend, opts = parts[0], _kv(parts[1:], where)
    if backend not in _BACKEND_KEYS:
        if "=" in backend:
            raise ValueError(f"{where}: Parameter 'backend' is missing")
        raise ValueError(f"{where}: '{backend}' is not a valid char driver name")
    if not opts.get("id"):
        raise ValueError(f"{where}: Parameter 'id' is missing")
    return _fill(ChardevSpec(backend), opts, where)


def parse_serial_option(spec: str, index: int = 0) -> ChardevSpec:
    """Parse a ``-serial`` argument (``stdio``, ``mon:stdio``, ``null``, ``none``, ``pty``,
    ``file:PATH``, ``unix:PATH[,server=on,wait=off]``, ``tcp:HOST:PORT[,...]``, ``chardev:ID``).

    The implied chardev gets id ``serialN`` as in QEMU. ``none`` returns backend ``none``: the
    machine then creates no UART for this slot.
    """
    where = f"-serial {spec}"
    sid = f"serial{index}"
    monitor = spec.startswith("mon:")
    body = spec[4:] if monitor else spec
    kind, _, rest = body.partition(":")
    if kind in ("stdio", "null", "pty", "none") and not rest:
        if kind == "none":
            if monitor:
                raise ValueError(f"{where}: 'none' cannot be multiplexed with the monitor")
            return ChardevSpec("none", id=sid)
        return ChardevSpec(kind, id=sid, mux=monitor, monitor=monitor)
    if kind == "chardev":
        if not rest:
            raise ValueError(f"{where}: Parameter 'id' is missing")
        return ChardevSpec("chardev", id=rest, monitor=monitor)
    if kind == "file":
        if not rest:
            raise ValueError(f"{where}: Parameter 'path' is missing")
        return ChardevSpec("file", id=sid, path=rest, mux=monitor, monitor=monitor)
    if kind in ("unix", "tcp"):
        parts = split_opts(rest)
        addr, opts = parts[0], _kv(parts[1:], where)
        out = ChardevSpec("socket", id=sid, mux=monitor, monitor=monitor)
        if kind == "unix":
            if not addr:
                raise ValueError(f"{where}: Parameter 'path' is missing")
            opts["path"] = addr
        else:
            host, sep, port = addr.rpartition(":")
            if not sep:
                raise ValueError(f"{where}: Parameter 'port' is missing")
            opts["port"] = port
            if host:
                opts["host"] = host
        return _fill(out, opts, where)
    raise ValueError(f"{where}: '{kind}' is not a valid char driver")
