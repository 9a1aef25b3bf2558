"""virtio-blk read throughput: the probe guest's `blk bench` on refvm and on QEMU, requests/s and the ratio.

Each VMM boots the probe guest with the same 64 MiB raw disk
(`-drive file=…,if=none,id=d0,format=raw -device virtio-blk-pci,drive=d0,disable-legacy=on`), runs
`pciassign`, a warm-up, then `blk bench N 4096` and `blk bench N 65536`. The time is taken on the host
around each command, from sending the line to seeing the next prompt, so it includes the serial round trip
(measured separately with `echo` and printed; it is small next to N requests). Every run boots each VMM
afresh, alternating VMMs so drift hits both; the figures are medians over runs. Only one guest runs at a
time: an idle probe spins polling its UART, which would steal a core from the other VMM.

Where the time goes on refvm: an extra, instrumented refvm run (this script re-executed as a launcher
around `refvm.cli.main`) counts vCPU exits by kind and address per command, and with `--profile` runs
cProfile in every thread for the bench commands and prints the top functions. Those runs are slower and
are never part of the timed figures.

If refvm knows `REFVM_NO_FASTPATH` (ioeventfd/irqfd fast paths switched off), refvm is measured both ways;
if it knows `REFVM_BLK_FASTPATH` (virtio-blk's compiled request path), also with that off (`refvm pyblk`:
the Python device model), so the before/after of the compiled path comes from one run.

Usage: python bench/virtio_blk.py [--n 1000] [--runs 5] [--qemu-kvm] [--profile]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from conformance.drivers.console import SerialConsole  # noqa: E402
from conformance.drivers.guests import probe_elf  # noqa: E402

QEMU = "qemu-system-x86_64"
DISK_BYTES = 64 << 20
SIZES = (4096, 65536)
GOAL = 1.0  # issue 15: refvm at least at QEMU TCG's rate at 4 KiB and 64 KiB (an earlier issue asked 0.8)
FASTPATH_ENV = "REFVM_NO_FASTPATH"
BLK_FASTPATH_ENV = "REFVM_BLK_FASTPATH"
BENCH_LINE = re.compile(r"^bench: (\d+) reads of (\d+) bytes, tsc (\d+)$", re.M)
LAUNCHER_FLAG = "--instrumented-refvm"


@dataclass
class Vmm:
    """One way of running the probe: a label, the argv before the common arguments, extra environment."""

    label: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    boot_timeout: float = 60.0


@dataclass
class Sample:
    seconds: float
    tsc: int


# ---------------------------------------------------------------------------------------------- the guest


def common_args(kernel: Path, disk: Path) -> list[str]:
    return [
        "-display", "none", "-serial", "stdio", "-nodefaults", "-no-reboot",
        "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-kernel", str(kernel),
        "-drive", f"file={disk},if=none,id=d0,format=raw",
        "-device", "virtio-blk-pci,drive=d0,disable-legacy=on",
    ]  # fmt: skip


@contextmanager
def booted(vmm: Vmm, kernel: Path, disk: Path) -> Iterator[SerialConsole]:
    """A probe guest at its prompt with BARs assigned and the disk driver set up (first request done)."""
    env_backup = {k: os.environ.get(k) for k in vmm.env}
    os.environ.update(vmm.env)  # pexpect passes our environment on
    try:
        con = SerialConsole([*vmm.argv, *common_args(kernel, disk)], timeout=vmm.boot_timeout, name=vmm.label)
    finally:
        for k, v in env_backup.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    # pexpect sleeps 50 ms before every send by default: that would dwarf a short command.
    con.child.delaybeforesend = None
    try:
        con.wait_prompt()
        con.last_pciassign = con.command("pciassign")  # type: ignore[attr-defined]
        check_bench(con.command("blk bench 4 4096"), 4, 4096, vmm.label)
        yield con
    finally:
        con.close()


def check_bench(out: str, n: int, size: int, who: str) -> int:
    """The TSC delta of a successful `blk bench`; anything else is an error naming the VMM."""
    m = BENCH_LINE.search(out)
    if not m or "status 0 (ok)" not in out or (int(m.group(1)), int(m.group(2))) != (n, size):
        raise RuntimeError(f"{who}: blk bench {n} {size} failed:\n{out}")
    return int(m.group(3))


def timed(con: SerialConsole, line: str, timeout: float = 300.0) -> tuple[float, str]:
    """Wall seconds from sending `line` to the next prompt, and the command's output."""
    t0 = time.perf_counter()
    con.send(line + "\r")
    out = con.wait_prompt(timeout)
    return time.perf_counter() - t0, out


def bench_once(con: SerialConsole, n: int, size: int, who: str) -> Sample:
    seconds, out = timed(con, f"blk bench {n} {size}")
    return Sample(seconds, check_bench(out, n, size, who))


# ------------------------------------------------------------------------------------------- timed runs


def measure(vmms: Sequence[Vmm], kernel: Path, disk: Path, n: int, runs: int) -> dict[str, dict]:
    """{label: {"echo": [s...], size: [Sample...]}} over `runs` boots per VMM, VMMs alternating."""
    results: dict[str, dict] = {v.label: {"echo": [], **{s: [] for s in SIZES}} for v in vmms}
    for run in range(runs):
        for vmm in vmms:
            with booted(vmm, kernel, disk) as con:
                echo = [timed(con, "echo x")[0] for _ in range(5)]
                results[vmm.label]["echo"].append(statistics.median(echo))
                for size in SIZES:
                    results[vmm.label][size].append(bench_once(con, n, size, vmm.label))
            line = "  ".join(f"{s}: {n / results[vmm.label][s][-1].seconds:8.0f} req/s" for s in SIZES)
            print(f"run {run + 1}/{runs} {vmm.label:<18} {line}", flush=True)
    return results


def report(results: dict[str, dict], n: int, reference: str) -> None:
    print(
        f"\nmedians over {len(results[reference][SIZES[0]])} runs, N={n} reads per command "
        "(host wall time from sending the line to the prompt):"
    )
    print(f"{'vmm':<18} {'echo RTT':>9} " + " ".join(f"{f'{s} B req/s':>14} {'µs/req':>8}" for s in SIZES))
    medians: dict[str, dict[int, float]] = {}
    for label, res in results.items():
        medians[label] = {s: statistics.median(n / x.seconds for x in res[s]) for s in SIZES}
        cols = " ".join(f"{medians[label][s]:14.0f} {1e6 / medians[label][s]:8.1f}" for s in SIZES)
        print(f"{label:<18} {statistics.median(res['echo']) * 1e3:7.2f}ms {cols}")
    print()
    for label in results:
        if label == reference or not label.startswith("refvm"):
            continue
        for ref in [r for r in results if r.startswith("qemu")]:
            for s in SIZES:
                ratio = medians[label][s] / medians[ref][s]
                verdict = "meets" if ratio >= GOAL else "below"
                print(f"ratio {label} / {ref} @ {s:>5} B: {ratio:5.2f}  ({verdict} the {GOAL} goal)")


# -------------------------------------------------------------------------- instrumented refvm (launcher)


def launcher_main(argv: list[str]) -> None:
    """Run refvm in this process with exit counting and optional per-thread cProfile, served on a socket.

    argv: CTL_SOCKET PROFILE(0|1) -- refvm arguments. The control socket answers one line per connection:
    `counts` -> JSON of exit counts; `clear` -> resets the profilers; `dump FILE` -> writes merged pstats.
    Everything is patched before refvm builds its machine, so every vCPU thread is covered.
    """
    import cProfile
    import pstats

    from refvm import bus, cli
    from refvm.kvm import exits, vcpu

    ctl_path, profile = argv[0], argv[1] == "1"
    refvm_args = argv[3:]
    counts: collections.Counter[str] = collections.Counter()
    orig_run = vcpu.Vcpu.run
    io_exit, mmio_exit = exits.IoExit, exits.MmioExit

    seconds: collections.Counter[str] = collections.Counter()
    clock = time.perf_counter

    def counting_run(self: vcpu.Vcpu) -> exits.Exit:
        t0 = clock()
        ex = orig_run(self)
        seconds["KVM_RUN (guest code + kernel exit path)"] += clock() - t0
        kind = type(ex)
        if kind is io_exit:
            counts[f"pio {'out' if ex.is_write else 'in'} {ex.port:#x}"] += 1
        elif kind is mmio_exit:
            counts[f"mmio {'write' if ex.is_write else 'read'} {ex.phys_addr:#x}"] += 1
        else:
            counts[kind.__name__] += 1
        return ex

    vcpu.Vcpu.run = counting_run  # type: ignore[method-assign]
    for bus_cls, bus_name in ((bus.PioBus, "pio"), (bus.MmioBus, "mmio")):
        for op in ("read", "write"):
            setattr(
                bus_cls, op, timed_method(getattr(bus_cls, op), f"{bus_name} {op} dispatch (device models)", seconds)
            )
    profilers: list[cProfile.Profile] = []
    if profile:
        orig_bootstrap = threading.Thread._bootstrap_inner  # type: ignore[attr-defined]

        def profiled_bootstrap(self: threading.Thread) -> None:
            if self.name == "bench-ctl":  # our own control thread: only blocked time in accept()
                orig_bootstrap(self)
                return
            prof = cProfile.Profile()
            profilers.append(prof)
            prof.enable()
            try:
                orig_bootstrap(self)
            finally:
                prof.disable()

        threading.Thread._bootstrap_inner = profiled_bootstrap  # type: ignore[attr-defined]

    class Snapshot:
        """What pstats.Stats wants from a profiler, without disabling the (still running) original."""

        def __init__(self, stats: dict) -> None:
            self.stats = stats

        def create_stats(self) -> None:
            pass

    def serve() -> None:
        srv = socket.socket(socket.AF_UNIX)
        srv.bind(ctl_path)
        srv.listen(4)
        while True:
            conn, _ = srv.accept()
            with conn, conn.makefile("rw") as f:
                try:
                    f.write(answer(f.readline().split()) + "\n")
                except Exception as err:  # noqa: BLE001 - the bench side shows it instead of a silent hang
                    f.write(f"error: {type(err).__name__}: {err}\n")

    def answer(words: list[str]) -> str:
        if words == ["counts"]:
            return json.dumps({"counts": counts, "seconds": seconds, "now": clock()})
        if words == ["clear"]:
            for p in profilers:
                p.clear()
            return "ok"
        if words[:1] == ["dump"]:
            merged: pstats.Stats | None = None
            for p in profilers:
                p.snapshot_stats()
                if not p.stats:  # type: ignore[attr-defined]
                    continue  # pstats refuses an empty profile (a thread that ran nothing since `clear`)
                snap = Snapshot(dict(p.stats))  # type: ignore[attr-defined]
                if merged is None:
                    merged = pstats.Stats(snap)
                else:
                    merged.add(snap)
            if merged is None:
                return "error: no profilers"
            merged.dump_stats(words[1])
            return "ok"
        return f"error: unknown request {words}"

    threading.Thread(target=serve, daemon=True, name="bench-ctl").start()
    main_prof = cProfile.Profile() if profile else None
    if main_prof is not None:
        profilers.append(main_prof)
        main_prof.enable()
    sys.argv = ["refvm", *refvm_args]
    cli.main(refvm_args)


def timed_method(method: Callable, key: str, seconds: collections.Counter[str]) -> Callable:
    """`method` with its wall time added to seconds[key] (two perf_counter calls: ~0.1 µs)."""
    clock = time.perf_counter

    def wrapper(self: object, *args: object) -> object:
        t0 = clock()
        try:
            return method(self, *args)
        finally:
            seconds[key] += clock() - t0

    return wrapper


def ctl(path: str, line: str) -> str:
    """One request to the instrumented refvm's control socket; an `error:` answer raises."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(path)
        s.sendall(line.encode() + b"\n")
        with s.makefile("r") as f:
            reply = f.readline().strip()
    if not reply or reply.startswith("error"):
        raise RuntimeError(f"instrumented refvm: '{line}' -> {reply or 'no answer'}")
    return reply


def name_exits(pciassign: str) -> Callable[[str], str]:
    """Label exit keys with what they hit: the probe's notify register, its UART, PCI config."""
    m = re.search(r"^00:\S+ bar4 mem64 pref 0x([0-9a-f]+) size 0x([0-9a-f]+)", pciassign, re.M)
    bar4 = int(m.group(1), 16) if m else -1

    def label(key: str) -> str:
        words = key.split()
        if len(words) == 3:
            addr = int(words[2], 16)
            if words[0] == "mmio" and bar4 <= addr < bar4 + 0x4000:
                region = ("common", "isr", "device", "notify")[(addr - bar4) >> 12]
                return f"{key} (virtio-blk {region} +{(addr - bar4) & 0xFFF:#x})"
            if words[0] == "pio" and 0x3F8 <= addr < 0x400:
                return f"{key} (COM1 +{addr - 0x3F8})"
            if words[0] == "pio" and addr in (0xCF8, 0xCFC):
                return f"{key} (PCI config)"
        return key

    return label


def where_time_goes(vmm: Vmm, kernel: Path, disk: Path, n: int, profile: bool, top: int) -> None:
    """Exit counts per bench command on refvm, and (with `profile`) the top functions over all threads."""
    import pstats

    tmp = Path(tempfile.mkdtemp(prefix="refvm-bench-"))
    ctl_path = str(tmp / "ctl.sock")
    launcher = Vmm(
        f"{vmm.label} instrumented",
        [
            sys.executable,
            str(Path(__file__).resolve()),
            LAUNCHER_FLAG,
            ctl_path,
            "1" if profile else "0",
            "--",
            *vmm.argv[3:],
        ],
        vmm.env,
    )
    print(
        f"\nwhere the time goes on {vmm.label} (instrumented run: exit counting"
        f"{' + cProfile in every thread' if profile else ''}, so slower than the timed runs)"
    )
    try:
        with booted(launcher, kernel, disk) as con:
            label = name_exits(con.last_pciassign)  # type: ignore[attr-defined]
            for size in SIZES:
                before = json.loads(ctl(ctl_path, "counts"))
                if profile:
                    ctl(ctl_path, "clear")
                sample = bench_once(con, n, size, launcher.label)
                after = json.loads(ctl(ctl_path, "counts"))
                delta = collections.Counter(after["counts"]) - collections.Counter(before["counts"])
                total = sum(delta.values())
                print(
                    f"\n  blk bench {n} {size}: {n / sample.seconds:.0f} req/s here, {1e6 * sample.seconds / n:.1f} µs"
                    f"/req; {total} exits = {total / n:.2f} per request (the command line and its output included)"
                )
                for key, cnt in delta.most_common(6):
                    print(f"    {cnt:8d}  {cnt / n:6.2f}/req  {label(key)}")
                notify = sum(c for k, c in delta.items() if "notify" in label(k))
                print(
                    f"    -> {notify / n:.2f} notify exits per request: the ioeventfd fast path is "
                    f"{'NOT active (every notify exits to userspace)' if notify >= n else 'active'}"
                )
                interval = after["now"] - before["now"]  # the command plus the two snapshot requests
                print(f"    per request ({1e6 * interval / n:.1f} µs between snapshots), by where the vCPU thread was:")
                spent = 0.0
                for key in after["seconds"]:
                    sec = after["seconds"][key] - before["seconds"].get(key, 0.0)
                    spent += sec
                    if sec > 0.0005:
                        print(f"    {1e6 * sec / n:8.1f} µs  {key}")
                print(
                    f"    {1e6 * (interval - spent) / n:8.1f} µs  rest (exit decoding, the vCPU loop in Python, serial)"
                )
                if profile:
                    out = tmp / f"prof-{size}.pstats"
                    ctl(ctl_path, f"dump {out}")
                    print(f"\n  cProfile, all threads, blk bench {n} {size}: top {top} by own time")
                    stats = pstats.Stats(str(out))
                    stats.sort_stats("tottime")
                    print_top(stats, top, sample.seconds)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def print_top(stats: object, top: int, wall: float) -> None:
    """Own time, cumulative time and calls of the `top` functions, one line each (pstats' own print_stats
    wraps long paths). Percentages are of the command's wall time; threads that only wait (the main
    thread, the serial reader) show up as time in their blocking call."""
    entries = stats.stats  # type: ignore[attr-defined]
    rows = sorted(entries.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
    print(f"    {'own s':>8} {'% wall':>6} {'cum s':>8} {'calls':>9}  function")
    for (path, line, name), (_cc, calls, tt, ct, _callers) in rows:
        where = f"{Path(path).name}:{line}" if line else path
        print(f"    {tt:8.3f} {100 * tt / wall:5.1f}% {ct:8.3f} {calls:9d}  {name} ({where})")


# ------------------------------------------------------------------------------------------------- main


def refvm_knows(switch: str = FASTPATH_ENV) -> bool:
    """True if refvm's source mentions the environment switch (REFVM_NO_FASTPATH: the ioeventfd/irqfd work
    adds it; REFVM_BLK_FASTPATH: virtio-blk's compiled path)."""
    for path in (REPO / "refvm").rglob("*.py"):
        if switch in path.read_text(errors="replace"):
            return True
    return False


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="reads per bench command (default 1000)")
    parser.add_argument("--runs", type=int, default=5, help="boots per VMM (default 5)")
    parser.add_argument("--qemu-kvm", action="store_true", help="also QEMU -accel kvm (slow to boot here)")
    parser.add_argument("--profile", action="store_true", help="cProfile one instrumented refvm run")
    parser.add_argument("--profile-n", type=int, default=1000, help="reads per command in the instrumented run")
    parser.add_argument("--top", type=int, default=20, help="functions to show from the profile")
    parser.add_argument("--no-instrumented", action="store_true", help="skip the exit-counting run")
    args = parser.parse_args(argv)

    kernel = probe_elf()
    if shutil.which(QEMU) is None:
        print(f"error: {QEMU} not found (apt-get install qemu-system-x86)", file=sys.stderr)
        return 1
    refvm_argv = [sys.executable, "-m", "refvm", "-watchdog-timeout", "600", "-accel", "kvm"]
    vmms = [Vmm("qemu tcg", [QEMU, "-accel", "tcg"])]
    if args.qemu_kvm:
        vmms.append(Vmm("qemu kvm", [QEMU, "-accel", "kvm"], boot_timeout=120))
    refvm = Vmm("refvm", refvm_argv)
    vmms.append(refvm)
    if refvm_knows(BLK_FASTPATH_ENV):
        vmms.append(Vmm("refvm pyblk", refvm_argv, {BLK_FASTPATH_ENV: "0"}))
    fastpath = refvm_knows()
    if fastpath:
        vmms.append(Vmm("refvm nofastpath", refvm_argv, {FASTPATH_ENV: "1"}))
    else:
        print(f"({FASTPATH_ENV} is not known to refvm yet: refvm measured one way only)")

    with tempfile.TemporaryDirectory(prefix="refvm-bench-") as tmp:
        disk = Path(tmp, "disk.raw")
        with open(disk, "wb") as f:  # real data, not a sparse hole: both VMMs read the page cache
            block = bytes(range(256)) * 4096
            for _ in range(DISK_BYTES // len(block)):
                f.write(block)
        print(
            f"{sys.argv[0]}: N={args.n} runs={args.runs}; disk {DISK_BYTES >> 20} MiB raw; "
            f"{' | '.join(v.label for v in vmms)}",
            flush=True,
        )
        results = measure(vmms, kernel, disk, args.n, args.runs)
        report(results, args.n, "qemu tcg")
        if not args.no_instrumented:
            where_time_goes(refvm, kernel, disk, args.profile_n, args.profile, args.top)
            if fastpath:
                where_time_goes(vmms[-1], kernel, disk, args.profile_n, False, args.top)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == LAUNCHER_FLAG:
        launcher_main(sys.argv[2:])
    else:
        sys.exit(main())
