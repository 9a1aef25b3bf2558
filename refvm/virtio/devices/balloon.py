"""virtio-balloon: the traditional memory balloon (VIRTIO 1.2 section 5.5), as QEMU 7.2's
``virtio-balloon-pci``.

Properties (plus the transport's ``addr id bus disable-legacy disable-modern vectors`` and the core's
``indirect_desc event_idx packed``):

=======================  =======  ==================================================================
property                 default  meaning
=======================  =======  ==================================================================
``deflate-on-oom``       off      offer VIRTIO_BALLOON_F_DEFLATE_ON_OOM
``page-poison``          on       offer VIRTIO_BALLOON_F_PAGE_POISON (``poison_val`` is driver-written)
``free-page-hint``       off      only ``off`` is supported here
``free-page-reporting``  off      only ``off`` is supported here
=======================  =======  ==================================================================

QEMU 7.2 facts (measured, ``disable-legacy=on``): features STATS_VQ | PAGE_POISON (0x12); three
queues (inflateq, deflateq, statsq) of 128; config ``num_pages, actual, free_page_hint_cmd_id,
poison_val`` = 16 bytes, all 0 at start.

5.5.6: the host sets the target with :meth:`set_target_pages` (QMP ``balloon``: ``num_pages`` =
(RAM - target) / 4096), which raises a configuration change notification; the driver gives pages
back on the inflateq and takes them on the deflateq as arrays of le32 page frame numbers (4 KiB
pages, 5.5.6) and writes ``actual``. Inflated pages are dropped from the host mapping with
madvise(MADV_DONTNEED) unless the driver uses a nonzero poison value (the guest then expects the
pattern, 5.5.6.4). The statsq (5.5.6.3) buffer is kept by the device until :meth:`request_stats`
returns it so the driver refills it; the latest tag/value pairs are in :attr:`stats`.
"""

from __future__ import annotations

import logging
import mmap
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from refvm.memory import GuestMemory, GuestMemoryError
from refvm.migration.state import BOOL, U32, DeviceState, sfield
from refvm.virtio.device import VirtioDevice
from refvm.virtio.devices.props import Props
from refvm.virtio.queue import Chain, Virtqueue, VirtqueueError
from refvm.virtio.state import VirtioCoreState

__all__ = ["VirtioBalloon"]

log = logging.getLogger(__name__)

VIRTIO_BALLOON_F_MUST_TELL_HOST = 0
VIRTIO_BALLOON_F_STATS_VQ = 1
VIRTIO_BALLOON_F_DEFLATE_ON_OOM = 2
VIRTIO_BALLOON_F_FREE_PAGE_HINT = 3
VIRTIO_BALLOON_F_PAGE_POISON = 4
VIRTIO_BALLOON_F_REPORTING = 5

PAGE_SHIFT = 12
QUEUE_SIZE = 128
MAX_PFNS_PER_BUFFER = 16384  # bound on one inflate/deflate buffer (Linux sends at most 256)
MAX_STATS = 64

#: 5.5.6.3 statistic tags, named as QEMU's query-balloon / guest-stats report them.
STAT_NAMES = {
    0: "stat-swap-in",
    1: "stat-swap-out",
    2: "stat-major-faults",
    3: "stat-minor-faults",
    4: "stat-free-memory",
    5: "stat-total-memory",
    6: "stat-available-memory",
    7: "stat-disk-caches",
    8: "stat-htlb-pgalloc",
    9: "stat-htlb-pgfail",
}

_STAT = struct.Struct("<HQ")


@dataclass
class BalloonState(DeviceState):
    """The target (num_pages), the driver's actual, the poison value, and whether a stats buffer is held."""

    VMSD_NAME = "virtio-balloon-device"

    num_pages: int = sfield(U32, 0)
    actual: int = sfield(U32, 0)
    poison_val: int = sfield(U32, 0)
    stats_held: bool = sfield(BOOL, False)


class VirtioBalloon(VirtioDevice):
    """A memory balloon over GuestMemory."""

    device_id = 5
    VMSD_NAME = "virtio-balloon"
    DEVICE_STATE = BalloonState
    queue_max_sizes = (QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE)
    feature_names = {0: "MUST_TELL_HOST", 1: "STATS_VQ", 2: "DEFLATE_ON_OOM", 3: "FREE_PAGE_HINT",
                     4: "PAGE_POISON", 5: "REPORTING"}

    def __init__(self, mem: GuestMemory, *, deflate_on_oom: bool = False, page_poison: bool = True,
                 release_pages: bool = True, **virtio: bool) -> None:
        feats = 1 << VIRTIO_BALLOON_F_STATS_VQ
        if deflate_on_oom:
            feats |= 1 << VIRTIO_BALLOON_F_DEFLATE_ON_OOM
        if page_poison:
            feats |= 1 << VIRTIO_BALLOON_F_PAGE_POISON
        self.features = feats
        self.release_pages = release_pages
        self.target_pages = 0
        self.inflated: set[int] = set()
        self.stats: dict[str, int] = {}
        self.stats_last_update = 0.0
        self._stats_chain: Chain | None = None
        self.poison_val = 0
        #: Called with (actual pages) when the driver changes ``actual`` (QMP BALLOON_CHANGE).
        self.on_actual_change: Callable[[int], None] = lambda _n: None
        super().__init__(mem, config_size=16 if page_poison else 8, **virtio)

    PROPERTIES = ("deflate-on-oom", "page-poison", "free-page-hint", "free-page-reporting", "iothread")

    @classmethod
    def create(
        cls,
        mem: GuestMemory,
        props: Mapping[str, str],
        *,
        chardevs: Mapping[str, object] | None = None,
        drives: Mapping[str, object] | None = None,
        netdevs: Mapping[str, object] | None = None,
        objects: Mapping[str, object] | None = None,
        type_name: str = "virtio-balloon-pci",
    ) -> VirtioBalloon:
        p = Props(type_name, props, cls.PROPERTIES)
        for name in ("free-page-hint", "free-page-reporting"):
            if p.flag(name, False):
                raise ValueError(f"Property '{type_name}.{name}': 'on' is not supported by refvm")
        return cls(mem, deflate_on_oom=p.flag("deflate-on-oom", False), page_poison=p.flag("page-poison", True),
                   **p.virtio_flags())

    # ------------------------------------------------------------------ configuration (5.5.4)
    @property
    def actual(self) -> int:
        return int.from_bytes(self.config[4:8], "little")

    def set_target_pages(self, num_pages: int) -> None:
        """The host asks the guest to hold ``num_pages`` 4 KiB pages in the balloon (5.5.6)."""
        with self.lock:
            num_pages = max(0, min(num_pages, 0xFFFFFFFF))
            self.target_pages = num_pages
            self.config[0:4] = num_pages.to_bytes(4, "little")
            self.config_changed()

    def set_target_bytes(self, target: int) -> None:
        """QMP ``balloon value=target``: guest RAM should become ``target`` bytes."""
        self.set_target_pages(max(0, self.mem.size - target) >> PAGE_SHIFT)

    def write_config(self, offset: int, data: bytes) -> None:
        end = offset + len(data)
        if offset >= 4 and end <= 8:  # actual: written by the driver
            old = self.actual
            self.config[offset:end] = data
            if self.actual != old:
                self.on_actual_change(self.actual)
            return
        if offset >= 12 and end <= 16 and self.negotiated(VIRTIO_BALLOON_F_PAGE_POISON):
            self.config[offset:end] = data
            self.poison_val = int.from_bytes(self.config[12:16], "little")
            return
        super().write_config(offset, data)

    def reset_device(self) -> None:
        self._stats_chain = None
        self.poison_val = 0
        self.config[4:8] = bytes(4)
        if len(self.config) >= 16:
            self.config[12:16] = bytes(4)

    # ------------------------------------------------------------------ queues (5.5.6)
    def handle_queue(self, queue: Virtqueue) -> None:
        if queue.index == 2:
            self._stats_queue(queue)
            return
        inflate = queue.index == 0
        for _ in range(queue.size):
            chain = queue.pop()
            if chain is None:
                return
            nbytes = min(chain.readable_len, 4 * MAX_PFNS_PER_BUFFER) & ~3
            raw = chain.read(0, nbytes)
            for (pfn,) in struct.iter_unpack("<I", raw):
                if inflate:
                    self._inflate(pfn)
                else:
                    self.inflated.discard(pfn)
            queue.push(chain, 0)

    def _inflate(self, pfn: int) -> None:
        gpa = pfn << PAGE_SHIFT
        region = self.mem.find_region(gpa)
        if region is None or gpa + (1 << PAGE_SHIFT) > region.end:
            return  # not RAM: ignored, as QEMU does
        self.inflated.add(pfn)
        if not self.release_pages:
            return
        if self.negotiated(VIRTIO_BALLOON_F_PAGE_POISON) and self.poison_val:
            return  # 5.5.6.4: the guest expects its poison pattern to survive
        try:
            region.mmap.madvise(mmap.MADV_DONTNEED, gpa - region.gpa, 1 << PAGE_SHIFT)
        except (OSError, ValueError) as exc:  # pragma: no cover - platform dependent
            log.debug("balloon: madvise failed for pfn %#x: %s", pfn, exc)

    def _stats_queue(self, queue: Virtqueue) -> None:
        for _ in range(queue.size):
            chain = queue.pop()
            if chain is None:
                return
            if self._stats_chain is not None:  # the driver may only have one outstanding: give it back
                self._violation("5.5.6.3: a second stats buffer while one is held; the older is returned")
                queue.push(self._stats_chain, 0)
            self._take_stats(chain)

    def _take_stats(self, chain: Chain) -> None:
        raw = chain.read(0, min(chain.readable_len, _STAT.size * MAX_STATS))
        stats = {}
        for off in range(0, len(raw) - _STAT.size + 1, _STAT.size):
            tag, val = _STAT.unpack_from(raw, off)
            stats[STAT_NAMES.get(tag, f"stat-{tag}")] = val
        self.stats = stats
        self.stats_last_update = time.time()
        self._stats_chain = chain

    # ------------------------------------------------------------------ migration (QEMU: num_pages, actual, poison)
    def held_chains(self, index: int) -> tuple[Chain, ...]:
        """The stats buffer held until the next request is given back at save and popped again at load."""
        return (self._stats_chain,) if index == 2 and self._stats_chain is not None else ()

    def save_device(self) -> BalloonState:
        return BalloonState(num_pages=self.target_pages, actual=self.actual,
                            poison_val=self.poison_val, stats_held=self._stats_chain is not None)

    def device_problem(self, st: object, core: VirtioCoreState) -> tuple[str, str] | None:
        assert isinstance(st, BalloonState)
        if st.poison_val and len(self.config) < 16:
            return "poison_val", "set on a balloon without page-poison"
        if st.stats_held and len(self.queues) < 3:
            return "stats_held", "a stats buffer held on a balloon without a stats queue"
        return None

    def load_device(self, st: object) -> None:
        assert isinstance(st, BalloonState)
        self.target_pages = st.num_pages
        self.config[0:4] = st.num_pages.to_bytes(4, "little")
        self.config[4:8] = st.actual.to_bytes(4, "little")
        self.poison_val = st.poison_val
        if len(self.config) >= 16:
            self.config[12:16] = st.poison_val.to_bytes(4, "little")
        self._stats_chain = None
        if st.stats_held:  # RAM is loaded: the buffer the source held is the next available one
            try:
                chain = self.queues[2].pop()
            except (VirtqueueError, GuestMemoryError) as exc:
                self.fail(f"virtio-balloon: held stats buffer: {exc}")
                return
            if chain is not None:
                self._take_stats(chain)

    def request_stats(self) -> bool:
        """Return the held stats buffer so the driver posts fresh statistics (5.5.6.3); False if none."""
        with self.lock:
            chain = self._stats_chain
            if chain is None or not self.live:
                return False
            self._stats_chain = None
            self.complete(self.queues[2], chain, 0)
            return True
