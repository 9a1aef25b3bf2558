"""refvm/cpu without a VM: every model builds a table, flags resolve with QEMU's precedence, the KVM filter
warns in QEMU's words, enforce refuses, and -smp gives QEMU 7.2's topologies and APIC ids."""

from __future__ import annotations

import pytest

from refvm.cpu import CpuidError, Topology, build_cpuid, parse_cpu, parse_smp, plan_cpu
from refvm.cpu.models import MODELS

#: A host KVM that supports everything except CPUID.1:ECX.smx (bit 6); AMD vendor.
ALL = 0xFFFFFFFF
HOST = [(0, 0, 0, 0xD, 0x68747541, 0x444D4163, 0x69746E65), (1, 0, 0, 0x800F12, 0, ALL & ~(1 << 6), ALL),
        (7, 0, 1, 0, ALL, ALL, ALL), (0xD, 0, 1, 7, 0x340, 0x340, 0), (0xD, 1, 1, ALL, 0, 0, 0),
        (0xD, 2, 1, 0x100, 0x240, 0, 0), (6, 0, 0, ALL, 0, 0, 0), (0x40000001, 0, 0, ALL, 0, 0, 0),
        (0x80000000, 0, 0, 0x80000021, 0, 0, 0), (0x80000001, 0, 0, 0, 0, ALL, ALL),
        (0x80000007, 0, 0, 0, 0, 0, ALL), (0x80000008, 0, 0, 0, ALL, 0, 0)]


def table(cpu: str, topo: Topology | None = None, index: int = 0) -> dict[tuple[int, int], tuple[int, ...]]:
    plan = plan_cpu(parse_cpu(cpu), HOST)
    return {(e[0], e[1]): e[3:] for e in build_cpuid(plan, topo or Topology(), index, HOST)}


@pytest.mark.parametrize("model", MODELS, ids=[m.name for m in MODELS])
def test_every_model_builds_its_identity(model) -> None:  # noqa: ANN001
    t = table(model.name)
    assert t[(0, 0)][0] == model.level and t[(0x80000000, 0)][0] == model.xlevel
    brand = b"".join(r.to_bytes(4, "little") for leaf in (0x80000002, 0x80000003, 0x80000004) for r in t[(leaf, 0)])
    assert brand.rstrip(b"\0").decode() == model.model_id
    family = (t[(1, 0)][0] >> 8 & 0xF) + (t[(1, 0)][0] >> 20 & 0xFF)
    assert family == model.family


def test_filter_warns_in_qemus_words_and_enforce_refuses() -> None:
    plan = plan_cpu(parse_cpu("SandyBridge,+smx,+ds_cpl"), HOST)
    assert plan.warnings == ["host doesn't support requested feature: CPUID.01H:ECX.smx [bit 6]"]
    assert not plan.words["1_ecx"] >> 6 & 1 and plan.words["1_ecx"] >> 4 & 1  # ds_cpl is the alias of ds-cpl
    with pytest.raises(CpuidError, match="Host doesn't support requested features"):
        plan_cpu(parse_cpu("SandyBridge,+smx,enforce"), HOST)


def test_minus_wins_over_plus_and_vendor_follows_the_host() -> None:
    t = table("qemu64,-lahf_lm,+lahf_lm,+pdpe1gb")
    assert not t[(0x80000001, 0)][2] & 1 and t[(0x80000001, 0)][3] >> 26 & 1
    assert t[(0, 0)][1] == 0x68747541  # "Auth": the host's vendor, as QEMU on KVM
    assert table("Haswell,vendor=GenuineIntel")[(0, 0)][1] == 0x756E6547  # "Genu"


def test_nova_cpu_line_is_accepted() -> None:
    """The -cpu OpenStack Nova generated (issue 8), osxsave included (QEMU 7.2 dropped that name)."""
    spec = parse_cpu("SandyBridge,+erms,+smep,+fsgsbase,+pdpe1gb,+rdrand,+f16c,+osxsave,+dca,+pcid,+pdcm,+xtpr,"
                     "+tm2,+est,+smx,+vmx,+ds_cpl,+monitor,+dtes64,+pbe,+tm,+ht,+ss,+acpi,+ds,+vme")
    assert spec.overrides["ds-cpl"] and "osxsave" not in spec.overrides


def test_topology_defaults_and_apic_ids() -> None:
    smp = {"cpus": "1", "sockets": "2", "dies": "2", "cores": "3", "threads": "2", "maxcpus": "24"}
    topo, warnings = parse_smp(smp)
    assert (topo.maxcpus, warnings) == (24, [])
    # thread 1 bit, core 2 bits, die 1 bit: vCPU 7 is socket 0, die 1, core 0, thread 1
    assert topo.ids(7) == (0, 1, 0, 1) and topo.apic_id(7) == 0b1_00_1
    assert topo.apic_id(12) == 1 << 4  # first CPU of socket 1
    t = table("Haswell,vendor=GenuineIntel", topo, 7)
    assert t[(1, 0)][1] >> 24 == 9 and t[(0xB, 0)][3] == 9 and t[(0xB, 1)][0] == 4
    assert parse_smp({"cpus": "4", "sockets": "1", "cores": "2"})[0].threads == 2  # threads computed last
