"""Identity-mapped 4-level page tables, so a 64-bit kernel can be entered directly in long mode.

Linux' 64-bit entry wants paging on with an identity map covering the kernel, boot_params, the
command line and the initrd. Mapping all of the low 4 GiB with 2 MiB pages covers every place the
loader can put them (all are below 4 GiB) at the cost of six page-table pages.
"""

from __future__ import annotations

import struct

from refvm.boot.cpu_state import Memory

PTE_PRESENT = 1 << 0
PTE_WRITABLE = 1 << 1
PTE_PAGE_SIZE = 1 << 7  # in a PD entry: maps a 2 MiB page
PAGE_2M = 2 << 20
GiB = 1 << 30


def write_identity_map(mem: Memory, pml4: int, gib: int = 4) -> int:
    """Write PML4 at ``pml4``, the PDPT in the next page and ``gib`` PDs after it, mapping
    [0, gib GiB) virtual == physical with 2 MiB pages. Returns the first address after the tables."""
    if not 1 <= gib <= 512:
        raise ValueError("identity map size must be 1..512 GiB")
    pdpt = pml4 + 0x1000
    pd0 = pdpt + 0x1000
    mem.write(pml4, struct.pack("<Q", pdpt | PTE_PRESENT | PTE_WRITABLE) + bytes(0x1000 - 8))
    pdpt_entries = [(pd0 + i * 0x1000) | PTE_PRESENT | PTE_WRITABLE for i in range(gib)]
    mem.write(pdpt, struct.pack(f"<{gib}Q", *pdpt_entries) + bytes(0x1000 - 8 * gib))
    pd_entries = [(i * PAGE_2M) | PTE_PRESENT | PTE_WRITABLE | PTE_PAGE_SIZE for i in range(512 * gib)]
    mem.write(pd0, struct.pack(f"<{512 * gib}Q", *pd_entries))
    return pd0 + gib * 0x1000
