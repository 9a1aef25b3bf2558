"""Build the CPUID table KVM_SET_CPUID2 gets: a model's identity and features, filtered through what the
host's KVM supports (KVM_GET_SUPPORTED_CPUID), with the -smp topology in leaves 1, 4, 0xB, 0x80000008 and
0x8000001E laid out as QEMU 7.2 lays them out.

Entries here are plain tuples (function, index, flags, eax, ebx, ecx, edx) so the builder needs no /dev/kvm.
"""

from __future__ import annotations

from dataclasses import dataclass

from refvm.cpu.features import AMD_EXT2_ALIASES, DYNAMIC, WORD_BY_KEY, WORDS, feature_masks
from refvm.cpu.models import MODEL_BY_NAME
from refvm.cpu.spec import CpuSpec
from refvm.cpu.topology import Topology

Entry = tuple[int, int, int, int, int, int, int]
REGS = ("eax", "ebx", "ecx", "edx")
SIGNIFICANT_INDEX = 1
HYPERVISOR_BIT = 1 << 31
HT_BIT = 1 << 28
KVM_SIGNATURE = b"KVMKVMKVM\0\0\0"
#: QEMU's legacy Intel cache description for leaf 4: (type, level, line, ways, sets, edx flags).
LEGACY_CACHES = ((1, 1, 64, 8, 64, 1), (2, 1, 64, 8, 64, 1), (3, 2, 64, 16, 4096, 1), (3, 3, 64, 16, 16384, 7))


class CpuidError(ValueError):
    """`,enforce` and the host cannot give a feature (QEMU's text); `warnings` name each missing one."""

    def __init__(self, message: str, warnings: list[str]) -> None:
        super().__init__(message)
        self.warnings = warnings


@dataclass
class Identity:
    vendor: str
    family: int
    model: int
    stepping: int
    level: int
    xlevel: int
    model_id: str


@dataclass
class CpuPlan:
    """The resolved CPU: identity, final feature words, and the lines QEMU would have warned."""

    identity: Identity
    words: dict[str, int]
    warnings: list[str]
    unavailable: list[str]


def host_value(supported: list[Entry], leaf: int, subleaf: int, reg: str) -> int:
    for e in supported:
        if e[0] == leaf and (e[1] == subleaf or not e[2] & SIGNIFICANT_INDEX):
            return e[3 + REGS.index(reg)]
    return 0


def supported_words(supported: list[Entry]) -> dict[str, int]:
    """What the host KVM can give per feature word (QEMU adds the hypervisor bit, which KVM never lists)."""
    words = {w.key: host_value(supported, w.leaf, w.subleaf, w.reg) for w in WORDS}
    words["1_ecx"] |= HYPERVISOR_BIT
    return words


def _vendor_words(vendor: str) -> tuple[int, int, int]:
    raw = vendor.encode("ascii", "replace")[:12].ljust(12, b"\0")
    return tuple(int.from_bytes(raw[i : i + 4], "little") for i in (0, 4, 8))  # type: ignore[return-value]


def host_identity(supported: list[Entry], cpuinfo: str = "/proc/cpuinfo") -> Identity:
    """`host`/`max`: the host's own signature (leaf 0/1 as KVM reports them) and its model name."""
    b, c, d = (host_value(supported, 0, 0, r) for r in ("ebx", "ecx", "edx"))
    vendor = b"".join(x.to_bytes(4, "little") for x in (b, d, c)).decode("ascii", "replace")
    eax = host_value(supported, 1, 0, "eax")
    family = (eax >> 8) & 0xF
    model = (eax >> 4) & 0xF
    if family == 0xF:
        family += (eax >> 20) & 0xFF
    if family >= 6:
        model |= ((eax >> 16) & 0xF) << 4
    name = ""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return Identity(vendor, family, model, eax & 0xF, host_value(supported, 0, 0, "eax"),
                    host_value(supported, 0x80000000, 0, "eax"), name)


def plan_cpu(spec: CpuSpec, supported: list[Entry]) -> CpuPlan:
    """Resolve the model and flags, filter through the host KVM, and collect QEMU's warning lines."""
    host = supported_words(supported)
    if spec.model in ("host", "max"):
        ident = host_identity(supported)
        # every feature the host KVM gives that has a name (QEMU sets no bit it cannot name)
        words = {w.key: host[w.key] & sum(1 << b for b, n in enumerate(w.names) if n) for w in WORDS}
    else:
        m = MODEL_BY_NAME[spec.model]
        # As QEMU on KVM: the guest is told the host's vendor (syscall/sysenter in compatibility mode work
        # only on their own vendor's CPUs); `vendor=` overrides it.
        ident = Identity(host_identity(supported).vendor, m.family, m.model, m.stepping, m.level, m.xlevel,
                         m.model_id)
        words = {w.key: 0 for w in WORDS}
        for feat in m.feature_set():
            for key, mask in feature_masks(feat):
                words[key] |= mask
    for key, value in spec.identity.items():
        setattr(ident, key.replace("model-id", "model_id"), value)
    for feat, on in spec.overrides.items():
        for key, mask in feature_masks(feat):
            words[key] = words[key] | mask if on else words[key] & ~mask
    if ident.vendor == "AuthenticAMD":
        words["80000001_edx"] |= words["1_edx"] & AMD_EXT2_ALIASES
    warnings: list[str] = []
    unavailable: list[str] = []
    for w in WORDS:
        missing = words[w.key] & ~host[w.key]
        for bit in range(32):
            if missing >> bit & 1:
                name = w.names[bit] or WORD_BY_KEY["1_edx"].names[bit] or ""
                if name in DYNAMIC:
                    continue
                warnings.append(f"host doesn't support requested feature: {w.label}.{name} [bit {bit}]")
                unavailable.append(name)
        words[w.key] &= host[w.key]
    if spec.enforce and unavailable:
        raise CpuidError("Host doesn't support requested features", warnings)
    return CpuPlan(ident, words, warnings if spec.check or spec.enforce else [], unavailable)


def _version(ident: Identity) -> int:
    family, model = ident.family, ident.model
    eax = ident.stepping & 0xF | (model & 0xF) << 4 | ((model >> 4) & 0xF) << 16
    if family > 0xF:
        return eax | 0xF << 8 | (family - 0xF) << 20
    return eax | family << 8


def _cache_leaf4(topo: Topology, index: int) -> tuple[int, int, int, int]:
    if index >= len(LEGACY_CACHES):
        return (0, 0, 0, 0)
    ctype, level, line, ways, sets, flags = LEGACY_CACHES[index]
    sharing = 1 if level == 1 else topo.threads if level == 2 else 1 << topo.package_offset
    eax = ctype | level << 5 | 1 << 8 | (sharing - 1) << 14 | (topo.cores_per_package - 1) << 26
    return (eax, (line - 1) | (ways - 1) << 22, sets - 1, flags)


def _topology_leaf_b(topo: Topology, index: int, apic_id: int) -> tuple[int, int, int, int]:
    if index == 0:
        return (topo.core_offset, topo.threads, 1 << 8, apic_id)
    if index == 1:
        return (topo.package_offset, topo.cores_per_package * topo.threads, index | 2 << 8, apic_id)
    return (0, 0, index, apic_id)


def build_cpuid(plan: CpuPlan, topo: Topology, cpu_index: int, supported: list[Entry]) -> list[Entry]:
    """The full table for vCPU `cpu_index`."""
    ident, words = plan.identity, plan.words
    apic_id = topo.apic_id(cpu_index)
    logical = topo.cores_per_package * topo.threads
    vendor = _vendor_words(ident.vendor)
    intel = ident.vendor == "GenuineIntel"
    version = _version(ident)
    out: list[Entry] = []

    def put(leaf: int, sub: int, regs: tuple[int, int, int, int], flags: int = 0) -> None:
        out.append((leaf, sub, flags, *(r & 0xFFFFFFFF for r in regs)))

    level = ident.level
    put(0, 0, (level, vendor[0], vendor[2], vendor[1]))
    for leaf in range(1, level + 1):
        if leaf == 1:
            ebx = apic_id << 24 | 8 << 8 | (logical << 16 if logical > 1 else 0)
            put(1, 0, (version, ebx, words["1_ecx"], words["1_edx"] | (HT_BIT if logical > 1 else 0)))
        elif leaf == 2 and intel:
            put(2, 0, (1, 0, 0x4D, 0x002C307D))
        elif leaf == 4:
            for i in range(5):
                put(4, i, _cache_leaf4(topo, i) if intel else (0, 0, 0, 0), SIGNIFICANT_INDEX)
        elif leaf == 6:
            put(6, 0, (words["6_eax"], 0, 0, 0))
        elif leaf == 7:
            put(7, 0, (0, words["7_0_ebx"], words["7_0_ecx"], words["7_0_edx"]), SIGNIFICANT_INDEX)
        elif leaf == 0xB:
            for i in range(3):
                put(0xB, i, _topology_leaf_b(topo, i, apic_id), SIGNIFICANT_INDEX)
        elif leaf == 0xD:
            _xsave_leaves(put, words, supported)
        else:
            put(leaf, 0, (0, 0, 0, 0))
    put(0x40000000, 0, (0x40000001, *_vendor_words(KVM_SIGNATURE.decode())))
    put(0x40000001, 0, (words["kvm"], 0, 0, 0))
    xlevel = ident.xlevel
    put(0x80000000, 0, (xlevel, vendor[0], vendor[2], vendor[1]))
    brand = ident.model_id.encode("ascii", "replace")[:48].ljust(48, b"\0")
    for leaf in range(0x80000001, xlevel + 1):
        if leaf == 0x80000001:
            put(leaf, 0, (version, 0, words["80000001_ecx"], words["80000001_edx"]))
        elif 0x80000002 <= leaf <= 0x80000004:
            chunk = brand[(leaf - 0x80000002) * 16 :][:16]
            put(leaf, 0, tuple(int.from_bytes(chunk[i : i + 4], "little") for i in range(0, 16, 4)))  # type: ignore[arg-type]
        elif leaf == 0x80000007:
            put(leaf, 0, (0, 0, 0, words["80000007_edx"]))
        elif leaf == 0x80000008:
            eax = 0x3028 if words["80000001_edx"] >> 29 & 1 else 0x24
            put(leaf, 0, (eax, words["80000008_ebx"], logical - 1 if logical > 1 else 0, 0))
        elif leaf == 0x8000001E and words["80000001_ecx"] >> 22 & 1:
            socket, die, core, thread = topo.ids(cpu_index)
            ebx = (topo.threads - 1) << 8 | die << 3 | core if topo.threads > 1 else die << 3 | core
            put(leaf, 0, (apic_id, ebx, socket << 2 | die, 0))
        else:
            put(leaf, 0, (0, 0, 0, 0))
    return out


def _xsave_leaves(put, words: dict[str, int], supported: list[Entry]) -> None:  # noqa: ANN001
    """Leaf 0xD: the host's XSAVE components that the model's features use (x87, SSE; AVX with avx)."""
    if not words["1_ecx"] >> 26 & 1:
        put(0xD, 0, (0, 0, 0, 0), SIGNIFICANT_INDEX)
        put(0xD, 1, (0, 0, 0, 0), SIGNIFICANT_INDEX)
        return
    components = 0b11 | (0b100 if words["1_ecx"] >> 28 & 1 else 0)
    components &= host_value(supported, 0xD, 0, "eax") | 0b11
    size = 0x240
    for bit in range(2, 32):
        if components >> bit & 1:
            sz, off = host_value(supported, 0xD, bit, "eax"), host_value(supported, 0xD, bit, "ebx")
            size = max(size, sz + off)
    put(0xD, 0, (components, size, size, 0), SIGNIFICANT_INDEX)
    put(0xD, 1, (words["xsave"], 0, 0, 0), SIGNIFICANT_INDEX)
    for bit in range(2, 32):
        if components >> bit & 1:
            put(0xD, bit, tuple(host_value(supported, 0xD, bit, r) for r in REGS), SIGNIFICANT_INDEX)  # type: ignore[arg-type]
