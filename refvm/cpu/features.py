"""CPUID feature words and QEMU's names for their bits (Intel SDM vol. 2A "CPUID", AMD APM vol. 3 appendix E).

A feature word is one register of one CPUID leaf. The words are listed in the order QEMU 7.2 reports
filtered features in, so refvm's warning lines come out in the same order as QEMU's.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FeatureWord:
    """One CPUID register holding feature bits, with the QEMU name of each bit (None: unnamed)."""

    key: str
    leaf: int
    subleaf: int
    reg: str  # "eax" | "ebx" | "ecx" | "edx"
    names: tuple[str | None, ...]

    @property
    def label(self) -> str:
        """QEMU's spelling in warnings: CPUID.01H:ECX, CPUID.80000001H:EDX."""
        return f"CPUID.{self.leaf:02X}H:{self.reg.upper()}"


def _bits(**by_bit: str) -> tuple[str | None, ...]:
    """Build a 32-entry name tuple from b<N>=name keywords."""
    names: list[str | None] = [None] * 32
    for key, name in by_bit.items():
        names[int(key[1:])] = name
    return tuple(names)


_LEAF1_EDX = _bits(
    b0="fpu", b1="vme", b2="de", b3="pse", b4="tsc", b5="msr", b6="pae", b7="mce", b8="cx8", b9="apic",
    b11="sep", b12="mtrr", b13="pge", b14="mca", b15="cmov", b16="pat", b17="pse36", b18="pn", b19="clflush",
    b21="ds", b22="acpi", b23="mmx", b24="fxsr", b25="sse", b26="sse2", b27="ss", b28="ht", b29="tm", b30="ia64",
    b31="pbe",
)
_LEAF1_ECX = _bits(
    b0="pni", b1="pclmulqdq", b2="dtes64", b3="monitor", b4="ds-cpl", b5="vmx", b6="smx", b7="est", b8="tm2",
    b9="ssse3", b10="cid", b12="fma", b13="cx16", b14="xtpr", b15="pdcm", b17="pcid", b18="dca", b19="sse4.1",
    b20="sse4.2", b21="x2apic", b22="movbe", b23="popcnt", b24="tsc-deadline", b25="aes", b26="xsave",
    b27="osxsave", b28="avx", b29="f16c", b30="rdrand", b31="hypervisor",
)
_LEAF7_EBX = _bits(
    b0="fsgsbase", b1="tsc-adjust", b2="sgx", b3="bmi1", b4="hle", b5="avx2", b7="smep", b8="bmi2", b9="erms",
    b10="invpcid", b11="rtm", b14="mpx", b16="avx512f", b17="avx512dq", b18="rdseed", b19="adx", b20="smap",
    b21="avx512ifma", b22="pcommit", b23="clflushopt", b24="clwb", b25="intel-pt", b26="avx512pf",
    b27="avx512er", b28="avx512cd", b29="sha-ni", b30="avx512bw", b31="avx512vl",
)
_LEAF7_ECX = _bits(
    b1="avx512vbmi", b2="umip", b3="pku", b5="waitpkg", b6="avx512vbmi2", b8="gfni", b9="vaes",
    b10="vpclmulqdq", b11="avx512vnni", b12="avx512bitalg", b14="avx512-vpopcntdq", b16="la57", b22="rdpid",
    b24="bus-lock-detect", b25="cldemote", b27="movdiri", b28="movdir64b", b30="sgxlc", b31="pks",
)
_LEAF7_EDX = _bits(
    b2="avx512-4vnniw", b3="avx512-4fmaps", b4="fsrm", b8="avx512-vp2intersect", b10="md-clear",
    b14="serialize", b16="tsx-ldtrk", b19="arch-lbr", b22="amx-bf16", b23="avx512-fp16", b24="amx-tile",
    b25="amx-int8", b26="spec-ctrl", b27="stibp", b29="arch-capabilities", b30="core-capability", b31="ssbd",
)
#: 0x80000001 EDX: bits that mirror leaf 1 EDX on AMD carry no name of their own here (QEMU copies them).
_EXT1_EDX = _bits(
    b11="syscall", b20="nx", b22="mmxext", b25="fxsr-opt", b26="pdpe1gb", b27="rdtscp", b29="lm",
    b30="3dnowext", b31="3dnow",
)
_EXT1_ECX = _bits(
    b0="lahf-lm", b1="cmp-legacy", b2="svm", b3="extapic", b4="cr8legacy", b5="abm", b6="sse4a",
    b7="misalignsse", b8="3dnowprefetch", b9="osvw", b10="ibs", b11="xop", b12="skinit", b13="wdt", b15="lwp",
    b16="fma4", b17="tce", b19="nodeid-msr", b21="tbm", b22="topoext", b23="perfctr-core", b24="perfctr-nb",
)
_EXT7_EDX = _bits(b8="invtsc")
_EXT8_EBX = _bits(
    b0="clzero", b2="xsaveerptr", b9="wbnoinvd", b12="ibpb", b14="ibrs", b15="amd-stibp", b24="amd-ssbd",
    b25="virt-ssbd", b26="amd-no-ssb",
)
_KVM_EAX = _bits(
    b0="kvmclock", b1="kvm-nopiodelay", b2="kvm-mmu", b4="kvm-asyncpf", b5="kvm-steal-time", b6="kvm-pv-eoi",
    b7="kvm-pv-unhalt", b9="kvm-pv-tlb-flush", b11="kvm-pv-ipi", b12="kvm-poll-control",
    b13="kvm-pv-sched-yield", b14="kvm-asyncpf-int", b15="kvm-msi-ext-dest-id", b24="kvmclock-stable-bit",
)
_XSAVE_EAX = _bits(b0="xsaveopt", b1="xsavec", b2="xgetbv1", b3="xsaves", b4="xfd")
_LEAF6_EAX = _bits(b2="arat")

#: In QEMU 7.2's reporting order (FeatureWord enum order).
WORDS: tuple[FeatureWord, ...] = (
    FeatureWord("1_edx", 1, 0, "edx", _LEAF1_EDX),
    FeatureWord("1_ecx", 1, 0, "ecx", _LEAF1_ECX),
    FeatureWord("7_0_ebx", 7, 0, "ebx", _LEAF7_EBX),
    FeatureWord("7_0_ecx", 7, 0, "ecx", _LEAF7_ECX),
    FeatureWord("7_0_edx", 7, 0, "edx", _LEAF7_EDX),
    FeatureWord("80000001_edx", 0x80000001, 0, "edx", _EXT1_EDX),
    FeatureWord("80000001_ecx", 0x80000001, 0, "ecx", _EXT1_ECX),
    FeatureWord("80000007_edx", 0x80000007, 0, "edx", _EXT7_EDX),
    FeatureWord("80000008_ebx", 0x80000008, 0, "ebx", _EXT8_EBX),
    FeatureWord("kvm", 0x40000001, 0, "eax", _KVM_EAX),
    FeatureWord("xsave", 0xD, 1, "eax", _XSAVE_EAX),
    FeatureWord("6_eax", 6, 0, "eax", _LEAF6_EAX),
)
WORD_BY_KEY = {w.key: w for w in WORDS}

#: Leaf 1 EDX bits that AMD CPUs repeat in 0x80000001 EDX (fpu..apic, mtrr..pse36, mmx, fxsr).
AMD_EXT2_ALIASES = 0x0183F3FF

#: Other spellings QEMU accepts for a feature (older names, '_' for '-', and the '.'/'_' of sse4.x).
ALIASES: dict[str, str] = {
    "sse3": "pni", "pclmuldq": "pclmulqdq", "sse4-1": "sse4.1", "sse4_1": "sse4.1", "sse4-2": "sse4.2",
    "sse4_2": "sse4.2", "xd": "nx", "i64": "lm", "ffxsr": "fxsr-opt", "kvmclock2": "kvmclock",
}


def canonical(name: str) -> str | None:
    """QEMU's own name for a feature given in any accepted spelling, or None if it is no feature."""
    name = ALIASES.get(name, name)
    if name in FEATURE_BITS:
        return name
    dashed = ALIASES.get(name.replace("_", "-"), name.replace("_", "-"))
    return dashed if dashed in FEATURE_BITS else None


def _index() -> dict[str, tuple[str, int]]:
    table: dict[str, tuple[str, int]] = {}
    for word in WORDS:
        for bit, name in enumerate(word.names):
            if name is not None:
                table.setdefault(name, (word.key, bit))
    return table


#: feature name -> (word key, bit)
FEATURE_BITS: dict[str, tuple[str, int]] = _index()

#: Features that set more than one bit: QEMU's "kvmclock" names both KVM clock-source bits (0 and 3).
EXTRA_BITS: dict[str, tuple[tuple[str, int], ...]] = {"kvmclock": (("kvm", 3),)}


def feature_masks(name: str) -> list[tuple[str, int]]:
    """(word key, mask) pairs a canonical feature name sets."""
    key, bit = FEATURE_BITS[name]
    return [(key, 1 << bit), *((k, 1 << b) for k, b in EXTRA_BITS.get(name, ()))]


#: Features whose bit KVM computes itself (osxsave follows CR4.OSXSAVE); accepted, never filtered.
DYNAMIC = frozenset({"osxsave"})


def all_names() -> list[str]:
    """Every feature name, sorted (for `-cpu help`)."""
    return sorted(n for n in FEATURE_BITS if n not in DYNAMIC)
