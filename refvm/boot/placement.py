"""Where loaders may put things: bounds checks and a tiny first-fit allocator over the E820 map.

Every byte a loader writes must land in usable RAM and must not clobber another piece of the boot
(kernel, modules, info structures). Checking that here, with the file name in the message, turns
what would be a mysterious guest crash into an error the user can act on.
"""

from __future__ import annotations

from refvm.boot.cpu_state import Memory
from refvm.boot.e820 import E820Entry, in_usable_ram, ram_ranges
from refvm.boot.errors import BootError
from refvm.memory import GuestMemoryError

PAGE = 0x1000


def align_up(value: int, align: int) -> int:
    return (value + align - 1) // align * align


def align_down(value: int, align: int) -> int:
    return value // align * align


def write_checked(mem: Memory, e820: list[E820Entry], addr: int, data: bytes, name: str, what: str) -> None:
    """Write ``data`` at ``addr`` after checking it lies in usable RAM; BootError otherwise."""
    require_ram(e820, addr, len(data), name, what)
    try:
        mem.write(addr, data)
    except GuestMemoryError as exc:
        raise BootError(f"{name}: {what} at {addr:#x}+{len(data):#x} is outside guest RAM ({exc})") from exc


def require_ram(e820: list[E820Entry], addr: int, size: int, name: str, what: str) -> None:
    if size and not in_usable_ram(e820, addr, size):
        ranges = ", ".join(f"{s:#x}-{e:#x}" for s, e in ram_ranges(e820))
        raise BootError(
            f"{name}: {what} at {addr:#x}..{addr + size:#x} is not in usable guest RAM ({ranges})"
        )


def overlaps(a_start: int, a_end: int, ranges: list[tuple[int, int]]) -> bool:
    return any(a_start < end and start < a_end for start, end in ranges)


def find_free(
    e820: list[E820Entry], size: int, used: list[tuple[int, int]], floor: int, align: int = 16
) -> int | None:
    """Lowest ``align``-aligned address >= ``floor`` where ``size`` bytes fit in one usable RAM range
    without touching any ``used`` (start, end) range; None if there is no such place."""
    candidates = [floor] + [end for _, end in used] + [start for start, _ in ram_ranges(e820)]
    for cand in sorted(align_up(max(c, floor), align) for c in candidates):
        if in_usable_ram(e820, cand, size) and not overlaps(cand, cand + size, used):
            return cand
    return None
