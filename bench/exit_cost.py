"""Cost of one PIO exit: refvm.kvm's Python ``Vcpu.run()`` loop versus the same loop in C.

Both sides run the identical 16-bit real-mode guest — ``mov ecx, N; 1: out 0x10, al; dec ecx; jnz 1b;
hlt`` — so N port-I/O exits then a HLT exit, on a fresh VM each run. Runs alternate C / Python to cancel
drift; the reported figure is the median µs per exit of each side and the ratio refvm / C (goal ≤ 1.15).
The C side is written and compiled (gcc) into a temp dir at run time, so no binary lives in git.

Usage: python bench/exit_cost.py [--exits 20000] [--runs 7]
"""

from __future__ import annotations

import argparse
import mmap
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from refvm.kvm import Kvm, Regs, exits  # noqa: E402
from refvm.kvm._ffi import ffi  # noqa: E402

MEM = 0x10000
CODE = 0x1000


def guest_code(n: int) -> bytes:
    """mov ecx, n; out 0x10, al; dec ecx; jnz -6; hlt (16-bit code, operand-size prefixes for ecx)."""
    return b"\x66\xb9" + n.to_bytes(4, "little") + bytes.fromhex("e610 6649 75fa f4")


C_SOURCE = r"""
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    unsigned n = (unsigned)strtoul(argv[1], 0, 0);
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    int vm = ioctl(kvm, KVM_CREATE_VM, 0);
    unsigned char *mem = mmap(0, 0x10000, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    unsigned char code[] = {0x66, 0xb9, n, n >> 8, n >> 16, n >> 24,
                            0xe6, 0x10, 0x66, 0x49, 0x75, 0xfa, 0xf4};
    memcpy(mem + 0x1000, code, sizeof code);
    struct kvm_userspace_memory_region r = {0, 0, 0, 0x10000, (unsigned long)mem};
    if (kvm < 0 || vm < 0 || ioctl(vm, KVM_SET_USER_MEMORY_REGION, &r) < 0) { perror("setup"); return 1; }
    int cpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    int sz = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    struct kvm_run *run = mmap(0, sz, PROT_READ | PROT_WRITE, MAP_SHARED, cpu, 0);
    struct kvm_sregs s;
    ioctl(cpu, KVM_GET_SREGS, &s);
    s.cs.base = 0; s.cs.selector = 0;
    ioctl(cpu, KVM_SET_SREGS, &s);
    struct kvm_regs regs = {0};
    regs.rip = 0x1000; regs.rflags = 2;
    ioctl(cpu, KVM_SET_REGS, &regs);
    unsigned long ios = 0;
    volatile unsigned char sink = 0;
    double t0 = now();
    for (;;) {
        if (ioctl(cpu, KVM_RUN, 0) < 0) { perror("KVM_RUN"); return 1; }
        if (run->exit_reason != KVM_EXIT_IO) break;
        if (run->io.port == 0x10) sink = *((unsigned char *)run + run->io.data_offset);
        ios++;
    }
    double t1 = now();
    if (run->exit_reason != KVM_EXIT_HLT || ios != n) {
        fprintf(stderr, "bad end %u %lu\n", run->exit_reason, ios);
        return 1;
    }
    printf("%.6f\n", (t1 - t0) / (n + 1) * 1e6);
    (void)sink;
    return 0;
}
"""


def build_c(tmp: Path) -> Path:
    if shutil.which("gcc") is None:
        sys.exit("gcc is needed for the C side of the benchmark")
    src, exe = tmp / "exit_cost.c", tmp / "exit_cost"
    src.write_text(C_SOURCE)
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(src)], check=True)
    return exe


def run_c(exe: Path, n: int) -> float:
    return float(subprocess.run([str(exe), str(n)], check=True, capture_output=True, text=True).stdout)


def run_python(kvm: Kvm, n: int) -> float:
    """One run through refvm.kvm: the loop a device model would run (exit -> port check -> data)."""
    vm = kvm.create_vm()
    mem = mmap.mmap(-1, MEM)
    try:
        vm.set_user_memory_region(0, 0, MEM, int(ffi.cast("uintptr_t", ffi.from_buffer(mem))))
        code = guest_code(n)
        mem[CODE : CODE + len(code)] = code
        cpu = vm.create_vcpu(0)
        s = cpu.get_sregs()
        s.cs.base, s.cs.selector = 0, 0
        cpu.set_sregs(s)
        cpu.set_regs(Regs(rip=CODE, rflags=2))
        run = cpu.run
        io_exit = exits.IoExit
        ios = 0
        sink = 0
        t0 = time.perf_counter()
        while True:
            e = run()
            if e.__class__ is not io_exit:
                break
            if e.port == 0x10:
                sink = e.data[0]
            ios += 1
        t1 = time.perf_counter()
        assert isinstance(e, exits.HltExit) and ios == n, (e, ios)
        del sink, e
        return (t1 - t0) / (n + 1) * 1e6
    finally:
        vm.close()
        mem.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--exits", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="refvm-bench-") as d:
        exe = build_c(Path(d))
        kvm = Kvm()
        run_c(exe, 1000)  # warm up both sides
        run_python(kvm, 1000)
        c_times, py_times = [], []
        for _ in range(args.runs):
            c_times.append(run_c(exe, args.exits))
            py_times.append(run_python(kvm, args.exits))
        kvm.close()
    c, py = statistics.median(c_times), statistics.median(py_times)
    print(f"exits per run: {args.exits}, runs: {args.runs}")
    print(f"C      : {c:7.3f} us/exit  (runs: {', '.join(f'{t:.3f}' for t in c_times)})")
    print(f"refvm  : {py:7.3f} us/exit  (runs: {', '.join(f'{t:.3f}' for t in py_times)})")
    print(f"ratio refvm/C: {py / c:.3f}  (goal <= 1.15)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
