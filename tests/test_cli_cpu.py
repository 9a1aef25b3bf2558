"""-cpu and -smp on the command line: QEMU 7.2's one-line texts for every mistake, `-cpu help`, warnings."""

from __future__ import annotations

import pytest

from tests.test_cli import run_refvm

TOPOLOGY = "Invalid CPU topology: "


@pytest.mark.parametrize(
    "args,message",
    [
        (["-cpu", "Nope"], "refvm: -cpu Nope: unable to find CPU model 'Nope'"),
        (["-cpu", "Haswell,+bogus"], "refvm: -cpu Haswell,+bogus: Property 'Haswell-x86_64-cpu.bogus' not found"),
        (["-cpu", "qemu64,-nope"], "Property 'qemu64-x86_64-cpu.nope' not found"),
        (["-cpu", "kvm64,frob=on"], "Property 'kvm64-x86_64-cpu.frob' not found"),
        (["-cpu", "Haswell,avx=maybe"],
         "can't apply global Haswell-x86_64-cpu.avx=maybe: Parameter 'avx' expects 'on' or 'off'"),
        (["-cpu", "Haswell,level=1x"],
         "can't apply global Haswell-x86_64-cpu.level=1x: Parameter 'level' expects uint64"),
        (["-cpu"], "refvm: -cpu: requires an argument"),
        (["-smp", "x"], "refvm: -smp x: Parameter 'smp.cpus' expects integer"),
        (["-smp", "2,foo=1"], "refvm: -smp 2,foo=1: Parameter 'smp.foo' is unexpected"),
        (["-smp", "2,maxcpus=1"],
         TOPOLOGY + "maxcpus must be equal to or greater than smp: sockets (1) * dies (1) * cores (1) * threads (1)"
         " == maxcpus (1) < smp_cpus (2)"),
        (["-smp", "4,sockets=1,cores=2,threads=1,maxcpus=4"],
         TOPOLOGY + "product of the hierarchy must match maxcpus: sockets (1) * dies (1) * cores (2) * threads (1)"
         " != maxcpus (4)"),
        (["-smp", "300"], "Invalid SMP CPUs 300. The max CPUs supported by machine 'pc-i440fx-7.2' is 255"),
        (["-smp", "2,maxcpus=999"], "Invalid SMP CPUs 999. The max CPUs supported by machine 'pc-i440fx-7.2' is 255"),
    ],
)
def test_bad_cpu_and_smp_fail_with_one_line(args: list[str], message: str) -> None:
    proc = run_refvm("-kernel", "k", *args)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("refvm: ") and message in lines[0]


def test_cpu_help_lists_models_with_descriptions_and_flags() -> None:
    proc = run_refvm("-cpu", "help")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for line in (
        "x86 Haswell-v1                Intel Core Processor (Haswell)",
        "x86 SandyBridge-v1            Intel Xeon E312xx (Sandy Bridge)",
        "x86 Nehalem-v1                Intel Core i7 9xx (Nehalem Class Core i7)",
        "x86 EPYC-v1                   AMD EPYC Processor",
        "x86 qemu64-v1                 QEMU Virtual CPU version 2.5+",
        "x86 kvm64-v1                  Common KVM processor",
        "x86 host                      processor with all supported host features",
        "x86 Haswell                   (alias configured by machine type)",
    ):
        assert line in out.splitlines(), line
    flags = out.split("Recognized CPUID flags:", 1)[1].split()
    for name in ("ds-cpl", "lahf-lm", "pdcm", "smx", "sse4.1", "x2apic", "pdpe1gb", "kvm-pv-unhalt"):
        assert name in flags


def test_zero_topology_value_is_a_deprecation_warning_not_an_error() -> None:
    """QEMU 7.2 accepts `cores=0` with a warning and treats it as "not given"."""
    proc = run_refvm("-smp", "2,cores=0", "-kernel", "/nonexistent/k")
    lines = proc.stderr.strip().splitlines()
    assert lines[0] == (
        "refvm: warning: Deprecated CPU topology (considered invalid): "
        "CPU topology parameters must be greater than zero"
    )
    assert "could not load kernel" in lines[1]
