#!/usr/bin/env python3
"""Build the refvm Linux guest from Debian packages: a kernel, busybox-static and the virtio modules.

Why from packages: the guest should judge the devices through the drivers people actually run, and a
distribution kernel is exactly that build; compiling one here would take hours on a shared machine.
Nothing is installed on the host: `apt-get download` fetches the .debs (no root needed) and `dpkg-deb -x`
unpacks them under the build directory, which is the cache (ignored by git). The initramfs is written
here as a newc cpio with every timestamp and owner fixed, so the same packages give the same bytes.

    python3 guests/linux/build.py [--flavour cloud|generic] [--out DIR]      (or: make -C guests/linux)

Outputs in DIR/FLAVOUR/: vmlinuz, initramfs.cpio.gz and manifest.json (kernel version, module load
order, ready marker), which is what test fixtures read.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
READY_MARKER = "REFVM-GUEST-READY"
PROMPT = "refvm-guest# "
#: Kernel meta packages per flavour: the cloud kernel boots fastest but needs ACPI (MADT) for its APICs;
#: the generic one also reads an MP table (X86_MPPARSE).
FLAVOURS = {"cloud": "linux-image-cloud-amd64", "generic": "linux-image-amd64"}
#: The drivers the guest loads; their dependencies are found from each module's `depends=`.
WANTED_MODULES = ["virtio_pci", "virtio_blk", "virtio_net", "virtio_console", "virtio_rng", "virtio_balloon"]
BUSYBOX_PACKAGE = "busybox-static"


class BuildError(Exception):
    """A build step failed; the message names the step and what it printed."""


def run(argv: list[str], cwd: Path | None = None) -> str:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BuildError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()[-600:]}")
    return proc.stdout


# ---- packages ----------------------------------------------------------------------------------------------


def versioned_kernel_package(meta: str) -> str:
    """The `linux-image-X.Y.Z-N-flavour` a meta package depends on (apt's lists are refreshed if stale)."""
    for attempt in range(2):
        try:
            out = run(["apt-cache", "depends", meta])
        except BuildError:
            out = ""
        m = re.search(r"Depends:\s*(linux-image-\d\S*)", out)
        if m:
            return m.group(1)
        if attempt == 0:
            run(["apt-get", "update", "-qq"])
    raise BuildError(f"apt-cache depends {meta}: no versioned linux-image dependency found")


def fetch_deb(package: str, debs: Path) -> Path:
    """Download one package's .deb into the cache directory once; later builds reuse it."""
    debs.mkdir(parents=True, exist_ok=True)
    cached = sorted(debs.glob(f"{package}_*.deb"))
    if cached:
        return cached[-1]
    run(["apt-get", "download", package], cwd=debs)
    cached = sorted(debs.glob(f"{package}_*.deb"))
    if not cached:
        raise BuildError(f"apt-get download {package} produced no .deb")
    return cached[-1]


def unpack(deb: Path, dest: Path) -> Path:
    """Unpack a .deb once (into a temporary name first, so an interrupted build leaves no half tree)."""
    if dest.is_dir():
        return dest
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    run(["dpkg-deb", "-x", str(deb), str(tmp)])
    tmp.rename(dest)
    return dest


# ---- modules -----------------------------------------------------------------------------------------------


def module_name(path: Path) -> str:
    return path.name.removesuffix(".ko").replace("-", "_")


def module_depends(path: Path) -> list[str]:
    """The `depends=` entry of a module's .modinfo strings (NUL-separated key=value pairs)."""
    for entry in path.read_bytes().split(b"\0"):
        if entry.startswith(b"depends="):
            value = entry[len(b"depends=") :].decode()
            return [d.replace("-", "_") for d in value.split(",") if d]
    return []


def load_order(moddir: Path, wanted: list[str]) -> list[Path]:
    """The wanted modules and everything they depend on, each after its dependencies."""
    index = {module_name(p): p for p in moddir.rglob("*.ko")}
    builtin = set()
    if (moddir / "modules.builtin").exists():
        builtin = {module_name(Path(line)) for line in (moddir / "modules.builtin").read_text().split()}
    order: list[Path] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in seen or name in builtin:
            return
        if name in chain:
            raise BuildError(f"module dependency cycle: {' -> '.join((*chain, name))}")
        if name not in index:
            raise BuildError(f"module {name} (needed by {' -> '.join(chain) or 'the guest'}) is not in {moddir}")
        for dep in module_depends(index[name]):
            visit(dep, (*chain, name))
        seen.add(name)
        order.append(index[name])

    for name in wanted:
        visit(name, ())
    return order


# ---- initramfs ---------------------------------------------------------------------------------------------


Entry = tuple[str, int, bytes, tuple[int, int]]  # path, mode, data, (major, minor) of a device node


def cpio_newc(entries: list[Entry]) -> bytes:
    """A newc ("070701") cpio archive; owner root, mtime 0, one link each, so equal inputs give equal bytes."""
    out = bytearray()

    def add(name: str, mode: int, data: bytes, rdev: tuple[int, int], ino: int) -> None:
        encoded = name.encode() + b"\0"
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0]
        out.extend(b"070701" + b"".join(b"%08X" % f for f in fields) + encoded)
        out.extend(b"\0" * (-len(out) % 4))
        out.extend(data)
        out.extend(b"\0" * (-len(out) % 4))

    for ino, (name, mode, data, rdev) in enumerate(entries, start=1):
        add(name, mode, data, rdev, ino)
    add("TRAILER!!!", 0, b"", (0, 0), 0)
    return bytes(out)


def initramfs(busybox: Path, modules: list[Path], init: Path) -> bytes:
    none = (0, 0)
    dirs = ["bin", "dev", "etc", "lib", "lib/modules", "proc", "sys"]
    entries: list[Entry] = [(d, 0o040755, b"", none) for d in dirs]
    # /dev/console (char 5:1) lets the kernel give /init a console before devtmpfs is mounted.
    entries.append(("dev/console", 0o020600, b"", (5, 1)))
    entries.append(("bin/busybox", 0o100755, busybox.read_bytes(), none))
    entries.append(("init", 0o100755, init.read_bytes(), none))
    entries.append(("etc/modules", 0o100644, "".join(module_name(m) + "\n" for m in modules).encode(), none))
    entries += [(f"lib/modules/{module_name(m)}.ko", 0o100644, m.read_bytes(), none) for m in modules]
    return gzip.compress(cpio_newc(entries), mtime=0)


# ---- build -------------------------------------------------------------------------------------------------


def build(flavour: str, out: Path) -> dict:
    cache = out / "cache"
    kernel_pkg = versioned_kernel_package(FLAVOURS[flavour])
    kroot = unpack(fetch_deb(kernel_pkg, cache / "debs"), cache / kernel_pkg)
    broot = unpack(fetch_deb(BUSYBOX_PACKAGE, cache / "debs"), cache / BUSYBOX_PACKAGE)
    vmlinuz = sorted((kroot / "boot").glob("vmlinuz-*"))
    moddirs = sorted((kroot / "lib" / "modules").iterdir())
    if not vmlinuz or not moddirs:
        raise BuildError(f"{kernel_pkg}: no boot/vmlinuz-* or lib/modules/* inside the package")
    modules = load_order(moddirs[-1], WANTED_MODULES)
    dest = out / flavour
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(vmlinuz[-1], dest / "vmlinuz")
    (dest / "initramfs.cpio.gz").write_bytes(initramfs(broot / "bin" / "busybox", modules, HERE / "init"))
    manifest = {
        "flavour": flavour,
        "kernel_package": kernel_pkg,
        "kernel_release": moddirs[-1].name,
        "kernel": str(dest / "vmlinuz"),
        "initrd": str(dest / "initramfs.cpio.gz"),
        "modules": [module_name(m) for m in modules],
        "ready_marker": READY_MARKER,
        "prompt": PROMPT,
        "append": "console=ttyS0 panic=-1 quiet",
    }
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--flavour", choices=sorted(FLAVOURS), default="cloud")
    parser.add_argument("--out", type=Path, default=HERE / "build")
    args = parser.parse_args(argv)
    for tool in ("apt-get", "apt-cache", "dpkg-deb"):
        if shutil.which(tool) is None:
            print(f"refvm-guest: {tool} not found: the guest is built from Debian packages", file=sys.stderr)
            return 1
    try:
        manifest = build(args.flavour, args.out.resolve())
    except BuildError as err:
        print(f"refvm-guest: {err}", file=sys.stderr)
        return 1
    print(f"refvm-guest: {manifest['kernel_package']} + {len(manifest['modules'])} modules -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
