"""``refvm-img``: create, inspect and check disk images, with qemu-img's spelling for those commands.

``create``, ``info`` and ``check`` accept qemu-img's options and print what qemu-img prints (``info
--output=json`` has qemu-img's keys, ``check`` its exit statuses: 0 clean, 2 corruptions, 3 leaks only).
``io`` runs qemu-io-style commands (``read``/``write`` with ``-P`` patterns, ``-z``, ``discard``, ``flush``)
against an image through refvm's own drivers, so tests can drive refvm's writes from a process.

Errors are one line, ``refvm-img: ...``, and exit status 1; never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import time
from collections.abc import Sequence
from typing import Any, NoReturn

from refvm.block.driver import BlockDriver, BlockError, open_image, probe_format

__all__ = ["main", "parse_size", "human_size"]

PROG = "refvm-img"
_SUFFIXES = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50, "e": 1 << 60}


class UsageError(Exception):
    """A bad command line: reported as one line, exit status 1."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def parse_size(text: str, default_suffix: str = "") -> int:
    """qemu's size syntax: a number (fractions allowed) with an optional k/M/G/T/P/E suffix (powers of 1024)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([bkmgtpeBKMGTPE]?)\s*", text)
    if not m:
        raise UsageError(f"Invalid size '{text}': use a number with an optional k, M, G, T, P or E suffix")
    number, suffix = m.group(1), (m.group(2) or default_suffix).lower()
    value = float(number) * _SUFFIXES[suffix] if "." in number else int(number) * _SUFFIXES[suffix]
    if value >= 1 << 63:
        raise UsageError(f"Invalid size '{text}': must be less than 8 EiB")
    if "." in number and value != int(value):
        raise UsageError(f"Invalid size '{text}': not a whole number of bytes")
    return int(value)


def human_size(n: int) -> str:
    """qemu's human-readable sizes: '64 MiB', '1.5 GiB', '196 KiB', '512 B'."""
    units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
    value, unit = float(n), 0
    while value >= 1024 and unit < len(units) - 1:
        value /= 1024
        unit += 1
    if unit == 0:
        return f"{n} B"
    return f"{value:.3g} {units[unit]}"


# -- create -------------------------------------------------------------------------------------------------


def _parse_opts(text: str) -> dict[str, str]:
    opts: dict[str, str] = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            value = "on"
        opts[key.strip()] = value.strip()
    return opts


def _bool_opt(name: str, value: str) -> bool:
    if value in ("on", "true", "yes"):
        return True
    if value in ("off", "false", "no"):
        return False
    raise UsageError(f"Parameter '{name}' expects 'on' or 'off'")


def cmd_create(args: argparse.Namespace) -> int:
    from refvm.block.qcow2 import create_qcow2

    opts: dict[str, str] = {}
    for o in args.options or []:
        opts.update(_parse_opts(o))
    backing = args.backing or opts.pop("backing_file", None)
    backing_fmt = args.backing_format or opts.pop("backing_fmt", None)
    fmt = args.format
    known = {"raw": {"size"}, "qcow2": {"size", "cluster_size", "compat", "refcount_bits", "lazy_refcounts"}}
    if fmt not in known:
        raise UsageError(f"Unknown file format '{fmt}' (supported: raw, qcow2)")
    for key in opts:
        if key not in known[fmt]:
            raise UsageError(f"Invalid parameter '{key}' for format {fmt}")
    size_text = args.size or opts.get("size")
    size = parse_size(size_text) if size_text else None
    if backing and fmt == "raw":
        raise UsageError("Backing file not supported for file format 'raw'")
    if backing:
        if not backing_fmt:
            raise UsageError(f"{args.filename}: Backing file specified without backing format (use -F)")
        full = backing if os.path.isabs(backing) else os.path.join(os.path.dirname(args.filename), backing)
        with open_image(full, backing_fmt, readonly=True) as base:
            if size is None:
                size = base.length()
    if size is None:
        raise UsageError("Image creation needs a size parameter")
    if fmt == "raw":
        print(f"Formatting '{args.filename}', fmt=raw size={size}")
        try:
            with open(args.filename, "wb") as f:
                f.truncate(size)
        except OSError as exc:
            raise BlockError(args.filename, f"Could not create: {exc.strerror}") from None
        return 0
    cluster = parse_size(opts.get("cluster_size", "65536"))
    compat = opts.get("compat", "1.1")
    refbits = int(opts.get("refcount_bits", "16")) if opts.get("refcount_bits", "16").isdigit() else -1
    lazy = _bool_opt("lazy_refcounts", opts.get("lazy_refcounts", "off"))
    line = f"Formatting '{args.filename}', fmt=qcow2 cluster_size={cluster} extended_l2=off compression_type=zlib"
    line += f" size={size}"
    if backing:
        line += f" backing_file={backing} backing_fmt={backing_fmt}"
    if compat != "1.1":
        line += f" compat={compat}"
    print(f"{line} lazy_refcounts={'on' if lazy else 'off'} refcount_bits={refbits}")
    create_qcow2(
        args.filename,
        size,
        cluster_size=cluster,
        compat=compat,
        refcount_bits=refbits,
        backing_file=backing,
        backing_format=backing_fmt,
        lazy_refcounts=lazy,
    )
    return 0


# -- info / check -------------------------------------------------------------------------------------------

_SPECIFIC_NAMES = {
    "compat": "compat",
    "compression-type": "compression type",
    "lazy-refcounts": "lazy refcounts",
    "refcount-bits": "refcount bits",
    "corrupt": "corrupt",
    "extended-l2": "extended l2",
}


def cmd_info(args: argparse.Namespace) -> int:
    """qemu-img info; with --backing-chain every image of the chain, top first (opening the top image walks
    the whole chain, so a loop is refused either way)."""
    with open_image(args.filename, args.format, readonly=True) as img:
        chain = [img.info()]
    while args.backing_chain and "full-backing-filename" in chain[-1]:
        with open_image(chain[-1]["full-backing-filename"], chain[-1].get("backing-filename-format"),
                        readonly=True) as base:  # fmt: skip
            chain.append(base.info())
    if args.output == "json":
        print(json.dumps(chain if args.backing_chain else chain[0], indent=4))
        return 0
    print("\n\n".join(_human_info(info) for info in chain))
    return 0


def _human_info(info: dict[str, Any]) -> str:
    lines = [
        f"image: {info['filename']}",
        f"file format: {info['format']}",
        f"virtual size: {human_size(info['virtual-size'])} ({info['virtual-size']} bytes)",
        f"disk size: {human_size(info['actual-size'])}",
    ]
    if "cluster-size" in info:
        lines.append(f"cluster_size: {info['cluster-size']}")
    if "backing-filename" in info:
        lines.append(f"backing file: {info['backing-filename']}")
        if info.get("full-backing-filename") != info["backing-filename"]:
            lines[-1] += f" (actual path: {info['full-backing-filename']})"
        if "backing-filename-format" in info:
            lines.append(f"backing file format: {info['backing-filename-format']}")
    if info.get("dirty-flag"):
        lines.append("cleanly shut down: no")
    specific = info.get("format-specific", {}).get("data")
    if specific:
        lines.append("Format specific information:")
        for key, value in specific.items():
            text = str(value).lower() if isinstance(value, bool) else value
            lines.append(f"    {_SPECIFIC_NAMES.get(key, key)}: {text}")
    return "\n".join(lines)


def cmd_check(args: argparse.Namespace) -> int:
    from refvm.block.qcow2 import check_image

    fmt = args.format or probe_format(args.filename)
    if fmt != "qcow2":
        raise UsageError(f"{args.filename}: This image format ({fmt}) does not support checks")
    res = check_image(args.filename)
    if args.output == "json":
        out: dict[str, Any] = {
            "image-end-offset": res.image_end_offset,
            "total-clusters": res.total_clusters,
            "check-errors": 0,
            "allocated-clusters": res.allocated_clusters,
            "filename": args.filename,
            "format": "qcow2",
            "fragmented-clusters": res.fragmented_clusters,
            "compressed-clusters": res.compressed_clusters,
        }
        if res.leaks:
            out["leaks"] = res.leaks
        if res.corruptions:
            out["corruptions"] = res.corruptions
        print(json.dumps(out, indent=4))
    else:
        for msg in res.messages:
            print(msg, file=sys.stderr if msg.startswith("ERROR") else sys.stdout)
        if res.corruptions:
            print(f"\n{res.corruptions} errors were found on the image.")
            print("Data may be corrupted, or further writes to the image may corrupt it.")
        if res.leaks:
            print(f"\n{res.leaks} leaked clusters were found on the image.")
            print("This means waste of disk space, but no harm to data.")
        if not res.corruptions and not res.leaks:
            print("No errors were found on the image.")
        if res.total_clusters and res.allocated_clusters:
            t = res.total_clusters
            print(
                f"{res.allocated_clusters}/{t} = {100 * res.allocated_clusters / t:.2f}% allocated, "
                f"{100 * res.fragmented_clusters / t:.2f}% fragmented, "
                f"{100 * res.compressed_clusters / t:.2f}% compressed clusters"
            )
        print(f"Image end offset: {res.image_end_offset}")
    if res.corruptions:
        return 2
    return 3 if res.leaks else 0


# -- io: qemu-io-style commands -----------------------------------------------------------------------------


def _hexdump(offset: int, data: bytes) -> str:
    rows = []
    for pos in range(0, len(data), 16):
        chunk = data[pos : pos + 16]
        hexpart = " ".join(f"{b:02x}" for b in chunk)
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        rows.append(f"{offset + pos:08x}:  {hexpart:<47}  {text}")
    return "\n".join(rows)


def _report(verb: str, n: int, offset: int, seconds: float) -> None:
    rate = n / seconds if seconds > 0 else float("inf")
    print(f"{verb} {n}/{n} bytes at offset {offset}")
    ops = 1 / max(seconds, 1e-9)
    print(f"{human_size(n)}, 1 ops; {seconds:.4f} sec ({human_size(int(rate))}/sec and {ops:.4f} ops/sec)")


def _run_io(img: BlockDriver, command: str) -> bool:
    """One qemu-io-style command; False if a pattern check failed."""
    p = _Parser(prog=command.split(" ", 1)[0], add_help=False)
    words = shlex.split(command)
    if not words:
        return True
    name, rest = words[0], words[1:]
    if name in ("read", "write"):
        p.add_argument("-P", dest="pattern")
        p.add_argument("-v", action="store_true")
        p.add_argument("-q", action="store_true")
        p.add_argument("-z", action="store_true")
        p.add_argument("-u", action="store_true")
        p.add_argument("offset")
        p.add_argument("length")
        a = p.parse_args(rest)
        off, n = parse_size(a.offset), parse_size(a.length)
        pattern = int(a.pattern, 0) & 0xFF if a.pattern is not None else (0xCD if name == "write" else None)
        t0 = time.perf_counter()
        if name == "write":
            if a.z:
                img.write_zeroes(off, n, unmap=a.u)
            else:
                img.write(off, bytes([pattern]) * n)
            if not a.q:
                _report("wrote", n, off, time.perf_counter() - t0)
            return True
        data = img.read(off, n)
        seconds = time.perf_counter() - t0
        ok = True
        if pattern is not None:
            want = bytes([pattern]) * n
            if data != want:
                bad = next(i for i in range(n) if data[i] != pattern)
                print(f"Pattern verification failed at offset {off + bad}, {n} bytes")
                ok = False
        if a.v:
            print(_hexdump(off, data))
        if not a.q:
            _report("read", n, off, seconds)
        return ok
    if name == "discard":
        p.add_argument("-q", action="store_true")
        p.add_argument("offset")
        p.add_argument("length")
        a = p.parse_args(rest)
        off, n = parse_size(a.offset), parse_size(a.length)
        t0 = time.perf_counter()
        img.discard(off, n)
        if not a.q:
            _report("discard", n, off, time.perf_counter() - t0)
        return True
    if name == "flush":
        img.flush()
        return True
    if name == "truncate":
        img.truncate(parse_size(rest[0]))
        return True
    if name == "length":
        print(human_size(img.length()))
        return True
    raise UsageError(f"io: unknown command '{name}' (read, write, discard, flush, truncate, length)")


def cmd_io(args: argparse.Namespace) -> int:
    ok = True
    with open_image(args.filename, args.format, readonly=args.readonly) as img:
        for command in args.commands or []:
            ok = _run_io(img, command) and ok
        if not args.readonly:
            img.flush()
    return 0 if ok else 1


# -- main ---------------------------------------------------------------------------------------------------


def _build_parser() -> _Parser:
    p = _Parser(prog=PROG, description="Create, inspect, check and access disk images (raw, qcow2).")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    c = sub.add_parser("create", help="create a new image", description="Create a new image (qemu-img create).")
    c.add_argument("-f", dest="format", default="raw", help="format: qcow2 or raw (default raw, as qemu-img)")
    c.add_argument("-b", dest="backing", help="backing file (qcow2 only)")
    c.add_argument("-F", dest="backing_format", help="format of the backing file (required with -b)")
    c.add_argument("-o", dest="options", action="append", help="cluster_size=N,compat=0.10|1.1,refcount_bits=N,...")
    c.add_argument("-q", action="store_true", help="quiet")
    c.add_argument("filename")
    c.add_argument("size", nargs="?", help="virtual size: bytes, or with a k/M/G/T/P/E suffix")
    c.set_defaults(func=cmd_create)

    i = sub.add_parser("info", help="show image information", description="Show image information (qemu-img info).")
    i.add_argument("-f", dest="format", help="image format (probed if omitted)")
    i.add_argument("-U", "--force-share", action="store_true", help="accepted for qemu-img compatibility")
    i.add_argument("--output", choices=("human", "json"), default="human")
    i.add_argument("--backing-chain", action="store_true", help="show every image of the backing chain")
    i.add_argument("filename")
    i.set_defaults(func=cmd_info)

    k = sub.add_parser(
        "check",
        help="check a qcow2 image",
        description="Check an image for leaks and corruptions. Exit status: 0 clean, 2 corruptions, 3 leaks.",
    )
    k.add_argument("-f", dest="format", help="image format (probed if omitted)")
    k.add_argument("-U", "--force-share", action="store_true", help="accepted for qemu-img compatibility")
    k.add_argument("--output", choices=("human", "json"), default="human")
    k.add_argument("filename")
    k.set_defaults(func=cmd_check)

    o = sub.add_parser(
        "io",
        help="run qemu-io-style commands",
        description="Run qemu-io-style commands on an image: 'read [-P PAT] [-v] OFF LEN', "
        "'write [-P PAT] [-z [-u]] OFF LEN', 'discard OFF LEN', 'flush', 'truncate SIZE', 'length'.",
    )
    o.add_argument("-f", dest="format", help="image format (probed if omitted)")
    o.add_argument("-r", dest="readonly", action="store_true", help="open read-only")
    o.add_argument("-c", dest="commands", action="append", help="a command (repeatable)")
    o.add_argument("filename")
    o.set_defaults(func=cmd_io)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``refvm-img``; returns the exit status."""
    try:
        args = _build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
        if getattr(args, "q", False):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives until exit
        return int(args.func(args))
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    except (UsageError, BlockError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"{PROG}: {where}{exc.strerror or exc}", file=sys.stderr)
    except Exception as exc:  # never a traceback
        print(f"{PROG}: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
