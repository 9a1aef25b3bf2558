"""What each CPU model promises a guest, leaf by leaf: the test side's own tables (conformance never imports
refvm).

Identity: vendor string (CPUID.0 EBX,EDX,ECX), family/model/stepping (CPUID.1 EAX, encoded as Intel SDM
vol. 2A Figure 3-6 and AMD APM vol. 3 E.3.2 say), highest basic/extended leaf, brand string (0x80000002-4).
Feature words: the bits of QEMU 7.2's model definitions under `-accel kvm` (from its QMP
`query-cpu-model-expansion`, `type: full`), packed by the bit positions of the SDM/APM.
"""

from __future__ import annotations

from dataclasses import dataclass

#: register key -> (leaf, subleaf, register)
WORD_REGS = {
    "1_edx": (1, 0, "edx"),
    "1_ecx": (1, 0, "ecx"),
    "7_ebx": (7, 0, "ebx"),
    "7_ecx": (7, 0, "ecx"),
    "7_edx": (7, 0, "edx"),
    "x1_edx": (0x80000001, 0, "edx"),
    "x1_ecx": (0x80000001, 0, "ecx"),
    "x8_ebx": (0x80000008, 0, "ebx"),
    "kvm_eax": (0x40000001, 0, "eax"),
    "d1_eax": (0xD, 1, "eax"),
    "6_eax": (6, 0, "eax"),
}

#: AMD APM vol. 3 E.4.2: CPUID 0x80000001 EDX repeats these leaf-1 EDX bits (fpu..apic, mtrr..pse36, mmx, fxsr).
AMD_MIRRORED_EDX = 0x0183F3FF
HYPERVISOR = 1 << 31  # CPUID.1:ECX[31], set by every VMM for its guests
HTT = 1 << 28  # CPUID.1:EDX[28]: more than one logical processor per package


@dataclass(frozen=True)
class Model:
    vendor: str
    family: int
    model: int
    stepping: int
    level: int
    xlevel: int
    brand: str
    words: dict[str, int]

    def word(self, key: str, vendor: str) -> int:
        """The model's bits of one register, for a guest told `vendor` (AMD mirrors leaf-1 EDX bits)."""
        value = self.words.get(key, 0)
        if key == "x1_edx" and vendor == "AuthenticAMD":
            value |= self.words.get("1_edx", 0) & AMD_MIRRORED_EDX
        return value

    @property
    def signature(self) -> int:
        """CPUID.1 EAX: stepping, model, family, extended model, extended family."""
        eax = self.stepping | (self.model & 0xF) << 4 | (self.model >> 4) << 16
        if self.family > 0xF:
            return eax | 0xF << 8 | (self.family - 0xF) << 20
        return eax | self.family << 8


MODELS: dict[str, Model] = {
    "qemu64": Model(
        "AuthenticAMD",
        15,
        0x6B,
        1,
        0xD,
        0x8000000A,
        "QEMU Virtual CPU version 2.5+",
        {"1_edx": 0x078BFBFD, "1_ecx": 0x80202001, "x1_edx": 0x20100800, "x1_ecx": 0x00000001, "kvm_eax": 0x0100007B},
    ),
    "kvm64": Model(
        "GenuineIntel",
        15,
        0x6,
        1,
        0xD,
        0x80000008,
        "Common KVM processor",
        {"1_edx": 0x078BFBFF, "1_ecx": 0x80202001, "x1_edx": 0x20100800, "kvm_eax": 0x0100007B},
    ),
    "qemu32": Model(
        "GenuineIntel",
        6,
        0x6,
        3,
        0x4,
        0x80000004,
        "QEMU Virtual CPU version 2.5+",
        {"1_edx": 0x0781ABFD, "1_ecx": 0x80200001, "kvm_eax": 0x0100007B},
    ),
    "Nehalem": Model(
        "GenuineIntel",
        6,
        0x1A,
        3,
        0xB,
        0x80000008,
        "Intel Core i7 9xx (Nehalem Class Core i7)",
        {"1_edx": 0x078BFBFF, "1_ecx": 0x80B82201, "x1_edx": 0x20100800, "x1_ecx": 0x00000001, "kvm_eax": 0x0100007B},
    ),
    "Westmere": Model(
        "GenuineIntel",
        6,
        0x2C,
        1,
        0xB,
        0x80000008,
        "Westmere E56xx/L56xx/X56xx (Nehalem-C)",
        {
            "1_edx": 0x078BFBFF,
            "1_ecx": 0x82B82203,
            "x1_edx": 0x20100800,
            "x1_ecx": 0x00000001,
            "kvm_eax": 0x0100007B,
            "6_eax": 0x00000004,
        },
    ),
    "SandyBridge": Model(
        "GenuineIntel",
        6,
        0x2A,
        1,
        0xD,
        0x80000008,
        "Intel Xeon E312xx (Sandy Bridge)",
        {
            "1_edx": 0x078BFBFF,
            "1_ecx": 0x97B82203,
            "x1_edx": 0x28100800,
            "x1_ecx": 0x00000001,
            "kvm_eax": 0x0100007B,
            "d1_eax": 0x00000001,
            "6_eax": 0x00000004,
        },
    ),
    "IvyBridge": Model(
        "GenuineIntel",
        6,
        0x3A,
        9,
        0xD,
        0x80000008,
        "Intel Xeon E3-12xx v2 (Ivy Bridge)",
        {
            "1_edx": 0x078BFBFF,
            "1_ecx": 0xF7B82203,
            "7_ebx": 0x00000281,
            "x1_edx": 0x28100800,
            "x1_ecx": 0x00000001,
            "kvm_eax": 0x0100007B,
            "d1_eax": 0x00000001,
            "6_eax": 0x00000004,
        },
    ),
    "Haswell": Model(
        "GenuineIntel",
        6,
        0x3C,
        4,
        0xD,
        0x80000008,
        "Intel Core Processor (Haswell)",
        {
            "1_edx": 0x078BFBFF,
            "1_ecx": 0xF7FA3203,
            "7_ebx": 0x00000FB9,
            "x1_edx": 0x28100800,
            "x1_ecx": 0x00000021,
            "kvm_eax": 0x0100007B,
            "d1_eax": 0x00000001,
            "6_eax": 0x00000004,
        },
    ),
    "Skylake-Client": Model(
        "GenuineIntel",
        6,
        0x5E,
        3,
        0xD,
        0x80000008,
        "Intel Core Processor (Skylake)",
        {
            "1_edx": 0x078BFBFF,
            "1_ecx": 0xF7FA3203,
            "7_ebx": 0x001C0FB9,
            "x1_edx": 0x28100800,
            "x1_ecx": 0x00000121,
            "kvm_eax": 0x0100007B,
            "d1_eax": 0x00000007,
            "6_eax": 0x00000004,
        },
    ),
    "EPYC": Model(
        "AuthenticAMD",
        23,
        0x1,
        2,
        0xD,
        0x8000001E,
        "AMD EPYC Processor",
        {
            "1_edx": 0x078BFBFF,
            "1_ecx": 0xF6F83203,
            "7_ebx": 0x209C01A9,
            "x1_edx": 0x2E500800,
            "x1_ecx": 0x004003F1,
            "kvm_eax": 0x0100007B,
            "d1_eax": 0x00000007,
            "6_eax": 0x00000004,
        },
    ),
    "Opteron_G3": Model(
        "AuthenticAMD",
        16,
        0x2,
        3,
        0x5,
        0x80000008,
        "AMD Opteron 23xx (Gen 3 Class Opteron)",
        {"1_edx": 0x078BFBFF, "1_ecx": 0x80A02001, "x1_edx": 0x28100800, "x1_ecx": 0x000000E1, "kvm_eax": 0x0100007B},
    ),
}

#: A few features by QEMU name (and the aliases the tests use) with where their bit lives.
FLAGS: dict[str, tuple[str, int]] = {
    "lahf-lm": ("x1_ecx", 0),
    "abm": ("x1_ecx", 5),
    "sse4a": ("x1_ecx", 6),
    "svm": ("x1_ecx", 2),
    "pdpe1gb": ("x1_edx", 26),
    "rdtscp": ("x1_edx", 27),
    "nx": ("x1_edx", 20),
    "x2apic": ("1_ecx", 21),
    "tsc-deadline": ("1_ecx", 24),
    "hypervisor": ("1_ecx", 31),
    "smx": ("1_ecx", 6),
    "ds-cpl": ("1_ecx", 4),
    "pdcm": ("1_ecx", 15),
    "vmx": ("1_ecx", 5),
    "kvm-pv-unhalt": ("kvm_eax", 7),
    "kvm-steal-time": ("kvm_eax", 5),
}
#: How QEMU's warnings name a register: "CPUID.01H:ECX".
LABELS = {k: f"CPUID.{leaf:02X}H:{reg.upper()}" for k, (leaf, _sub, reg) in WORD_REGS.items()}
