"""QEMU 7.2's x86 CPU models as data: identity (vendor, family/model/stepping, model-id), CPUID levels and
the features each sets under KVM (QEMU's defaults for KVM included: x2apic on, monitor/svm off, and the KVM
paravirtual leaf 0x40000001 bits kvmclock, nopiodelay, asyncpf, steal-time, pv-eoi, kvmclock-stable-bit).

The values were learnt from QEMU 7.2's behaviour (`-cpu help` and QMP `query-cpu-model-expansion` of type
full under `-accel kvm`) and match the vendors' documented CPUID signatures. An unversioned name is the
"-v1" model (what QEMU's pc machine types up to 7.2 resolve it to).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CpuModel:
    """One named model; `features` is a space-separated list of QEMU feature names (refvm/cpu/features.py)."""

    name: str
    version: str
    description: str
    vendor: str
    family: int
    model: int
    stepping: int
    level: int
    xlevel: int
    model_id: str
    features: str

    def feature_set(self) -> frozenset[str]:
        return frozenset(self.features.split())


MODELS: tuple[CpuModel, ...] = (
    CpuModel(
        "qemu64", "qemu64-v1", "QEMU Virtual CPU version 2.5+", "AuthenticAMD", 15, 107, 1,
        0xd, 0x8000000a, "QEMU Virtual CPU version 2.5+",
        "apic clflush cmov cx16 cx8 de fpu fxsr hypervisor kvm-asyncpf kvm-nopiodelay kvm-pv-eoi "
        "kvm-steal-time kvmclock kvmclock-stable-bit lahf-lm lm mca mce mmx msr mtrr nx pae pat pge pni pse "
        "pse36 sep sse sse2 syscall tsc x2apic",
    ),
    CpuModel(
        "qemu32", "qemu32-v1", "QEMU Virtual CPU version 2.5+", "GenuineIntel", 6, 6, 3,
        0x4, 0x80000004, "QEMU Virtual CPU version 2.5+",
        "apic cmov cx8 de fpu fxsr hypervisor kvm-asyncpf kvm-nopiodelay kvm-pv-eoi kvm-steal-time kvmclock "
        "kvmclock-stable-bit mce mmx msr pae pat pge pni pse sep sse sse2 tsc x2apic",
    ),
    CpuModel(
        "kvm64", "kvm64-v1", "Common KVM processor", "GenuineIntel", 15, 6, 1,
        0xd, 0x80000008, "Common KVM processor",
        "apic clflush cmov cx16 cx8 de fpu fxsr hypervisor kvm-asyncpf kvm-nopiodelay kvm-pv-eoi "
        "kvm-steal-time kvmclock kvmclock-stable-bit lm mca mce mmx msr mtrr nx pae pat pge pni pse pse36 sep "
        "sse sse2 syscall tsc vme x2apic",
    ),
    CpuModel(
        "kvm32", "kvm32-v1", "Common 32-bit KVM processor", "GenuineIntel", 15, 6, 1,
        0x5, 0x80000008, "Common 32-bit KVM processor",
        "apic clflush cmov cx8 de fpu fxsr hypervisor kvm-asyncpf kvm-nopiodelay kvm-pv-eoi kvm-steal-time "
        "kvmclock kvmclock-stable-bit mca mce mmx msr mtrr pae pat pge pni pse pse36 sep sse sse2 tsc vme "
        "x2apic",
    ),
    CpuModel(
        "Conroe", "Conroe-v1", "Intel Celeron_4x0 (Conroe/Merom Class Core 2)", "GenuineIntel", 6, 15, 3,
        0xa, 0x80000008, "Intel Celeron_4x0 (Conroe/Merom Class Core 2)",
        "apic clflush cmov cx8 de fpu fxsr hypervisor kvm-asyncpf kvm-nopiodelay kvm-pv-eoi kvm-steal-time "
        "kvmclock kvmclock-stable-bit lahf-lm lm mca mce mmx msr mtrr nx pae pat pge pni pse pse36 sep sse "
        "sse2 ssse3 syscall tsc vme x2apic",
    ),
    CpuModel(
        "Penryn", "Penryn-v1", "Intel Core 2 Duo P9xxx (Penryn Class Core 2)", "GenuineIntel", 6, 23, 3,
        0xa, 0x80000008, "Intel Core 2 Duo P9xxx (Penryn Class Core 2)",
        "apic clflush cmov cx16 cx8 de fpu fxsr hypervisor kvm-asyncpf kvm-nopiodelay kvm-pv-eoi "
        "kvm-steal-time kvmclock kvmclock-stable-bit lahf-lm lm mca mce mmx msr mtrr nx pae pat pge pni pse "
        "pse36 sep sse sse2 sse4.1 ssse3 syscall tsc vme x2apic",
    ),
    CpuModel(
        "Nehalem", "Nehalem-v1", "Intel Core i7 9xx (Nehalem Class Core i7)", "GenuineIntel", 6, 26, 3,
        0xb, 0x80000008, "Intel Core i7 9xx (Nehalem Class Core i7)",
        "apic clflush cmov cx16 cx8 de fpu fxsr hypervisor kvm-asyncpf kvm-nopiodelay kvm-pv-eoi "
        "kvm-steal-time kvmclock kvmclock-stable-bit lahf-lm lm mca mce mmx msr mtrr nx pae pat pge pni "
        "popcnt pse pse36 sep sse sse2 sse4.1 sse4.2 ssse3 syscall tsc vme x2apic",
    ),
    CpuModel(
        "Westmere", "Westmere-v1", "Westmere E56xx/L56xx/X56xx (Nehalem-C)", "GenuineIntel", 6, 44, 1,
        0xb, 0x80000008, "Westmere E56xx/L56xx/X56xx (Nehalem-C)",
        "aes apic arat clflush cmov cx16 cx8 de fpu fxsr hypervisor kvm-asyncpf kvm-nopiodelay kvm-pv-eoi "
        "kvm-steal-time kvmclock kvmclock-stable-bit lahf-lm lm mca mce mmx msr mtrr nx pae pat pclmulqdq pge "
        "pni popcnt pse pse36 sep sse sse2 sse4.1 sse4.2 ssse3 syscall tsc vme x2apic",
    ),
    CpuModel(
        "SandyBridge", "SandyBridge-v1", "Intel Xeon E312xx (Sandy Bridge)", "GenuineIntel", 6, 42, 1,
        0xd, 0x80000008, "Intel Xeon E312xx (Sandy Bridge)",
        "aes apic arat avx clflush cmov cx16 cx8 de fpu fxsr hypervisor kvm-asyncpf kvm-nopiodelay kvm-pv-eoi "
        "kvm-steal-time kvmclock kvmclock-stable-bit lahf-lm lm mca mce mmx msr mtrr nx pae pat pclmulqdq pge "
        "pni popcnt pse pse36 rdtscp sep sse sse2 sse4.1 sse4.2 ssse3 syscall tsc tsc-deadline vme x2apic "
        "xsave xsaveopt",
    ),
    CpuModel(
        "IvyBridge", "IvyBridge-v1", "Intel Xeon E3-12xx v2 (Ivy Bridge)", "GenuineIntel", 6, 58, 9,
        0xd, 0x80000008, "Intel Xeon E3-12xx v2 (Ivy Bridge)",
        "aes apic arat avx clflush cmov cx16 cx8 de erms f16c fpu fsgsbase fxsr hypervisor kvm-asyncpf "
        "kvm-nopiodelay kvm-pv-eoi kvm-steal-time kvmclock kvmclock-stable-bit lahf-lm lm mca mce mmx msr "
        "mtrr nx pae pat pclmulqdq pge pni popcnt pse pse36 rdrand rdtscp sep smep sse sse2 sse4.1 sse4.2 "
        "ssse3 syscall tsc tsc-deadline vme x2apic xsave xsaveopt",
    ),
    CpuModel(
        "Haswell", "Haswell-v1", "Intel Core Processor (Haswell)", "GenuineIntel", 6, 60, 4,
        0xd, 0x80000008, "Intel Core Processor (Haswell)",
        "abm aes apic arat avx avx2 bmi1 bmi2 clflush cmov cx16 cx8 de erms f16c fma fpu fsgsbase fxsr hle "
        "hypervisor invpcid kvm-asyncpf kvm-nopiodelay kvm-pv-eoi kvm-steal-time kvmclock kvmclock-stable-bit "
        "lahf-lm lm mca mce mmx movbe msr mtrr nx pae pat pcid pclmulqdq pge pni popcnt pse pse36 rdrand "
        "rdtscp rtm sep smep sse sse2 sse4.1 sse4.2 ssse3 syscall tsc tsc-deadline vme x2apic xsave xsaveopt",
    ),
    CpuModel(
        "Broadwell", "Broadwell-v1", "Intel Core Processor (Broadwell)", "GenuineIntel", 6, 61, 2,
        0xd, 0x80000008, "Intel Core Processor (Broadwell)",
        "3dnowprefetch abm adx aes apic arat avx avx2 bmi1 bmi2 clflush cmov cx16 cx8 de erms f16c fma fpu "
        "fsgsbase fxsr hle hypervisor invpcid kvm-asyncpf kvm-nopiodelay kvm-pv-eoi kvm-steal-time kvmclock "
        "kvmclock-stable-bit lahf-lm lm mca mce mmx movbe msr mtrr nx pae pat pcid pclmulqdq pge pni popcnt "
        "pse pse36 rdrand rdseed rdtscp rtm sep smap smep sse sse2 sse4.1 sse4.2 ssse3 syscall tsc "
        "tsc-deadline vme x2apic xsave xsaveopt",
    ),
    CpuModel(
        "Skylake-Client", "Skylake-Client-v1", "Intel Core Processor (Skylake)", "GenuineIntel", 6, 94, 3,
        0xd, 0x80000008, "Intel Core Processor (Skylake)",
        "3dnowprefetch abm adx aes apic arat avx avx2 bmi1 bmi2 clflush cmov cx16 cx8 de erms f16c fma fpu "
        "fsgsbase fxsr hle hypervisor invpcid kvm-asyncpf kvm-nopiodelay kvm-pv-eoi kvm-steal-time kvmclock "
        "kvmclock-stable-bit lahf-lm lm mca mce mmx movbe msr mtrr nx pae pat pcid pclmulqdq pge pni popcnt "
        "pse pse36 rdrand rdseed rdtscp rtm sep smap smep sse sse2 sse4.1 sse4.2 ssse3 syscall tsc "
        "tsc-deadline vme x2apic xgetbv1 xsave xsavec xsaveopt",
    ),
    CpuModel(
        "Skylake-Server", "Skylake-Server-v1", "Intel Xeon Processor (Skylake)", "GenuineIntel", 6, 85, 4,
        0xd, 0x80000008, "Intel Xeon Processor (Skylake)",
        "3dnowprefetch abm adx aes apic arat avx avx2 avx512bw avx512cd avx512dq avx512f avx512vl bmi1 bmi2 "
        "clflush clflushopt clwb cmov cx16 cx8 de erms f16c fma fpu fsgsbase fxsr hle hypervisor invpcid "
        "kvm-asyncpf kvm-nopiodelay kvm-pv-eoi kvm-steal-time kvmclock kvmclock-stable-bit lahf-lm lm mca mce "
        "mmx movbe msr mtrr nx pae pat pcid pclmulqdq pdpe1gb pge pku pni popcnt pse pse36 rdrand rdseed "
        "rdtscp rtm sep smap smep sse sse2 sse4.1 sse4.2 ssse3 syscall tsc tsc-deadline vme x2apic xgetbv1 "
        "xsave xsavec xsaveopt",
    ),
    CpuModel(
        "Cascadelake-Server", "Cascadelake-Server-v1", "Intel Xeon Processor (Cascadelake)", "GenuineIntel", 6, 85, 6,
        0xd, 0x80000008, "Intel Xeon Processor (Cascadelake)",
        "3dnowprefetch abm adx aes apic arat avx avx2 avx512bw avx512cd avx512dq avx512f avx512vl avx512vnni "
        "bmi1 bmi2 clflush clflushopt clwb cmov cx16 cx8 de erms f16c fma fpu fsgsbase fxsr hle hypervisor "
        "invpcid kvm-asyncpf kvm-nopiodelay kvm-pv-eoi kvm-steal-time kvmclock kvmclock-stable-bit lahf-lm lm "
        "mca mce mmx movbe msr mtrr nx pae pat pcid pclmulqdq pdpe1gb pge pku pni popcnt pse pse36 rdrand "
        "rdseed rdtscp rtm sep smap smep spec-ctrl ssbd sse sse2 sse4.1 sse4.2 ssse3 syscall tsc tsc-deadline "
        "vme x2apic xgetbv1 xsave xsavec xsaveopt",
    ),
    CpuModel(
        "Icelake-Server", "Icelake-Server-v1", "Intel Xeon Processor (Icelake)", "GenuineIntel", 6, 134, 0,
        0xd, 0x80000008, "Intel Xeon Processor (Icelake)",
        "3dnowprefetch abm adx aes apic arat avx avx2 avx512-vpopcntdq avx512bitalg avx512bw avx512cd "
        "avx512dq avx512f avx512vbmi avx512vbmi2 avx512vl avx512vnni bmi1 bmi2 clflush clflushopt clwb cmov "
        "cx16 cx8 de erms f16c fma fpu fsgsbase fxsr gfni hle hypervisor invpcid kvm-asyncpf kvm-nopiodelay "
        "kvm-pv-eoi kvm-steal-time kvmclock kvmclock-stable-bit la57 lahf-lm lm mca mce mmx movbe msr mtrr nx "
        "pae pat pcid pclmulqdq pdpe1gb pge pku pni popcnt pse pse36 rdrand rdseed rdtscp rtm sep smap smep "
        "spec-ctrl ssbd sse sse2 sse4.1 sse4.2 ssse3 syscall tsc tsc-deadline umip vaes vme vpclmulqdq "
        "wbnoinvd x2apic xgetbv1 xsave xsavec xsaveopt",
    ),
    CpuModel(
        "Opteron_G1", "Opteron_G1-v1", "AMD Opteron 240 (Gen 1 Class Opteron)", "AuthenticAMD", 15, 6, 1,
        0x5, 0x80000008, "AMD Opteron 240 (Gen 1 Class Opteron)",
        "apic clflush cmov cx8 de fpu fxsr hypervisor kvm-asyncpf kvm-nopiodelay kvm-pv-eoi kvm-steal-time "
        "kvmclock kvmclock-stable-bit lm mca mce mmx msr mtrr nx pae pat pge pni pse pse36 sep sse sse2 "
        "syscall tsc vme x2apic",
    ),
    CpuModel(
        "Opteron_G2", "Opteron_G2-v1", "AMD Opteron 22xx (Gen 2 Class Opteron)", "AuthenticAMD", 15, 6, 1,
        0x5, 0x80000008, "AMD Opteron 22xx (Gen 2 Class Opteron)",
        "apic clflush cmov cx16 cx8 de fpu fxsr hypervisor kvm-asyncpf kvm-nopiodelay kvm-pv-eoi "
        "kvm-steal-time kvmclock kvmclock-stable-bit lahf-lm lm mca mce mmx msr mtrr nx pae pat pge pni pse "
        "pse36 sep sse sse2 syscall tsc vme x2apic",
    ),
    CpuModel(
        "Opteron_G3", "Opteron_G3-v1", "AMD Opteron 23xx (Gen 3 Class Opteron)", "AuthenticAMD", 16, 2, 3,
        0x5, 0x80000008, "AMD Opteron 23xx (Gen 3 Class Opteron)",
        "abm apic clflush cmov cx16 cx8 de fpu fxsr hypervisor kvm-asyncpf kvm-nopiodelay kvm-pv-eoi "
        "kvm-steal-time kvmclock kvmclock-stable-bit lahf-lm lm mca mce misalignsse mmx msr mtrr nx pae pat "
        "pge pni popcnt pse pse36 rdtscp sep sse sse2 sse4a syscall tsc vme x2apic",
    ),
    CpuModel(
        "Opteron_G4", "Opteron_G4-v1", "AMD Opteron 62xx class CPU", "AuthenticAMD", 21, 1, 2,
        0xd, 0x8000001a, "AMD Opteron 62xx class CPU",
        "3dnowprefetch abm aes apic avx clflush cmov cx16 cx8 de fma4 fpu fxsr hypervisor kvm-asyncpf "
        "kvm-nopiodelay kvm-pv-eoi kvm-steal-time kvmclock kvmclock-stable-bit lahf-lm lm mca mce misalignsse "
        "mmx msr mtrr nx pae pat pclmulqdq pdpe1gb pge pni popcnt pse pse36 rdtscp sep sse sse2 sse4.1 sse4.2 "
        "sse4a ssse3 syscall tsc vme x2apic xop xsave",
    ),
    CpuModel(
        "Opteron_G5", "Opteron_G5-v1", "AMD Opteron 63xx class CPU", "AuthenticAMD", 21, 2, 0,
        0xd, 0x8000001a, "AMD Opteron 63xx class CPU",
        "3dnowprefetch abm aes apic avx clflush cmov cx16 cx8 de f16c fma fma4 fpu fxsr hypervisor "
        "kvm-asyncpf kvm-nopiodelay kvm-pv-eoi kvm-steal-time kvmclock kvmclock-stable-bit lahf-lm lm mca mce "
        "misalignsse mmx msr mtrr nx pae pat pclmulqdq pdpe1gb pge pni popcnt pse pse36 rdtscp sep sse sse2 "
        "sse4.1 sse4.2 sse4a ssse3 syscall tbm tsc vme x2apic xop xsave",
    ),
    CpuModel(
        "EPYC", "EPYC-v1", "AMD EPYC Processor", "AuthenticAMD", 23, 1, 2,
        0xd, 0x8000001e, "AMD EPYC Processor",
        "3dnowprefetch abm adx aes apic arat avx avx2 bmi1 bmi2 clflush clflushopt cmov cr8legacy cx16 cx8 de "
        "f16c fma fpu fsgsbase fxsr fxsr-opt hypervisor kvm-asyncpf kvm-nopiodelay kvm-pv-eoi kvm-steal-time "
        "kvmclock kvmclock-stable-bit lahf-lm lm mca mce misalignsse mmx mmxext movbe msr mtrr nx osvw pae "
        "pat pclmulqdq pdpe1gb pge pni popcnt pse pse36 rdrand rdseed rdtscp sep sha-ni smap smep sse sse2 "
        "sse4.1 sse4.2 sse4a ssse3 syscall topoext tsc vme x2apic xgetbv1 xsave xsavec xsaveopt",
    ),
    CpuModel(
        "EPYC-Rome", "EPYC-Rome-v1", "AMD EPYC-Rome Processor", "AuthenticAMD", 23, 49, 0,
        0xd, 0x8000001e, "AMD EPYC-Rome Processor",
        "3dnowprefetch abm adx aes amd-stibp apic arat avx avx2 bmi1 bmi2 clflush clflushopt clwb clzero cmov "
        "cr8legacy cx16 cx8 de f16c fma fpu fsgsbase fxsr fxsr-opt hypervisor ibpb kvm-asyncpf kvm-nopiodelay "
        "kvm-pv-eoi kvm-steal-time kvmclock kvmclock-stable-bit lahf-lm lm mca mce misalignsse mmx mmxext "
        "movbe msr mtrr nx osvw pae pat pclmulqdq pdpe1gb perfctr-core pge pni popcnt pse pse36 rdpid rdrand "
        "rdseed rdtscp sep sha-ni smap smep sse sse2 sse4.1 sse4.2 sse4a ssse3 syscall topoext tsc umip vme "
        "wbnoinvd x2apic xgetbv1 xsave xsavec xsaveerptr xsaveopt xsaves",
    ),
    CpuModel(
        "EPYC-Milan", "EPYC-Milan-v1", "AMD EPYC-Milan Processor", "AuthenticAMD", 25, 1, 1,
        0xd, 0x8000001e, "AMD EPYC-Milan Processor",
        "3dnowprefetch abm adx aes amd-ssbd amd-stibp apic arat avx avx2 bmi1 bmi2 clflush clflushopt clwb "
        "clzero cmov cr8legacy cx16 cx8 de erms f16c fma fpu fsgsbase fsrm fxsr fxsr-opt hypervisor ibpb ibrs "
        "invpcid kvm-asyncpf kvm-nopiodelay kvm-pv-eoi kvm-steal-time kvmclock kvmclock-stable-bit lahf-lm lm "
        "mca mce misalignsse mmx mmxext movbe msr mtrr nx osvw pae pat pcid pclmulqdq pdpe1gb perfctr-core "
        "pge pku pni popcnt pse pse36 rdpid rdrand rdseed rdtscp sep sha-ni smap smep sse sse2 sse4.1 sse4.2 "
        "sse4a ssse3 syscall topoext tsc umip vme wbnoinvd x2apic xgetbv1 xsave xsavec xsaveerptr xsaveopt "
        "xsaves",
    ),
    CpuModel(
        "core2duo", "core2duo-v1", "Intel(R) Core(TM)2 Duo CPU     T7700  @ 2.40GHz", "GenuineIntel", 6, 15, 11,
        0xa, 0x80000008, "Intel(R) Core(TM)2 Duo CPU     T7700  @ 2.40GHz",
        "apic clflush cmov cx16 cx8 de fpu fxsr hypervisor kvm-asyncpf kvm-nopiodelay kvm-pv-eoi "
        "kvm-steal-time kvmclock kvmclock-stable-bit lahf-lm lm mca mce mmx msr mtrr nx pae pat pge pni pse "
        "pse36 sep ss sse sse2 ssse3 syscall tsc vme x2apic",
    ),
    CpuModel(
        "phenom", "phenom-v1", "AMD Phenom(tm) 9550 Quad-Core Processor", "AuthenticAMD", 16, 2, 3,
        0x5, 0x8000001a, "AMD Phenom(tm) 9550 Quad-Core Processor",
        "3dnow 3dnowext abm apic clflush cmov cx16 cx8 de fpu fxsr fxsr-opt hypervisor kvm-asyncpf "
        "kvm-nopiodelay kvm-pv-eoi kvm-steal-time kvmclock kvmclock-stable-bit lahf-lm lm mca mce mmx mmxext "
        "msr mtrr nx pae pat pdpe1gb pge pni popcnt pse pse36 rdtscp sep sse sse2 sse4a syscall tsc vme "
        "x2apic",
    ),
    CpuModel(
        "athlon", "athlon-v1", "QEMU Virtual CPU version 2.5+", "AuthenticAMD", 6, 2, 3,
        0x2, 0x80000008, "QEMU Virtual CPU version 2.5+",
        "3dnow 3dnowext apic cmov cx8 de fpu fxsr hypervisor kvm-asyncpf kvm-nopiodelay kvm-pv-eoi "
        "kvm-steal-time kvmclock kvmclock-stable-bit mca mce mmx mmxext msr mtrr pae pat pge pse pse36 sep "
        "sse sse2 tsc vme x2apic",
    ),
)

MODEL_BY_NAME: dict[str, CpuModel] = {}
for _m in MODELS:
    MODEL_BY_NAME[_m.name] = _m
    MODEL_BY_NAME[_m.version] = _m

#: Models that are no fixed table: `host` is what this host's KVM supports, `max` the same under KVM.
SPECIAL_MODELS = {
    "host": "processor with all supported host features",
    "max": "Enables all features supported by the accelerator in the current host",
}


def help_lines() -> list[str]:
    """`-cpu help`'s model lines, in QEMU's layout (name padded to 25, then the description)."""
    rows: list[tuple[str, str]] = []
    for m in MODELS:
        rows.append((m.name, "(alias configured by machine type)"))
        rows.append((m.version, m.description))
    rows.sort(key=lambda r: r[0].lower())
    rows += list(SPECIAL_MODELS.items())
    return [f"x86 {name:<25} {text}".rstrip() for name, text in rows]
