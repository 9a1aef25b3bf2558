"""The BIOS E820 memory map a PC firmware would report, built from the guest's RAM size.

Both boot protocols hand the guest this map (Linux in ``boot_params.e820_table``, Multiboot as
``mmap``), so it lives in one place and the two loaders describe the same machine.
"""

from __future__ import annotations

from dataclasses import dataclass

E820_RAM = 1
E820_RESERVED = 2

LOW_RAM_END = 0x9FC00  # 639 KiB: the top 1 KiB below 640 KiB is the EBDA on a PC
HIGH_RAM_START = 0x100000  # 1 MiB: 0xA0000..0xFFFFF is VGA memory and BIOS ROM


@dataclass(frozen=True)
class E820Entry:
    """One range of the map: ``type`` is E820_RAM (1) or E820_RESERVED (2) (ACPI types unused)."""

    addr: int
    size: int
    type: int

    @property
    def end(self) -> int:
        return self.addr + self.size


def default_e820(ram_size: int) -> list[E820Entry]:
    """The map of a PC with ``ram_size`` bytes of RAM starting at 0.

    Low RAM stops at the EBDA, the legacy hole up to 1 MiB is reserved (guests must not put
    anything there), and the rest of RAM follows contiguously from 1 MiB. Machines that split RAM
    around a PCI hole pass their own map to the loaders instead.
    """
    if ram_size < HIGH_RAM_START:
        raise ValueError(f"guest RAM of {ram_size:#x} bytes is below the 1 MiB a PC layout needs")
    entries = [
        E820Entry(0, LOW_RAM_END, E820_RAM),
        E820Entry(LOW_RAM_END, HIGH_RAM_START - LOW_RAM_END, E820_RESERVED),
    ]
    if ram_size > HIGH_RAM_START:
        entries.append(E820Entry(HIGH_RAM_START, ram_size - HIGH_RAM_START, E820_RAM))
    return entries


def ram_ranges(e820: list[E820Entry]) -> list[tuple[int, int]]:
    """Usable RAM as sorted (start, end) pairs: where a loader may place things."""
    return sorted((e.addr, e.end) for e in e820 if e.type == E820_RAM)


def usable_end(e820: list[E820Entry], addr: int) -> int:
    """End of the usable RAM range that contains ``addr``, or ``addr`` itself if none does."""
    for start, end in ram_ranges(e820):
        if start <= addr < end:
            return end
    return addr


def in_usable_ram(e820: list[E820Entry], addr: int, size: int) -> bool:
    """True when [addr, addr+size) lies entirely in one usable RAM range."""
    return any(start <= addr and addr + size <= end for start, end in ram_ranges(e820))
