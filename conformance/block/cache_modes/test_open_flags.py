"""How the target opens the image in each cache mode, read from /proc/PID/fdinfo of the live process.

qemu-options: cache.direct=on (modes none and directsync) opens the image with O_DIRECT; the other modes
go through the host page cache. O_DSYNC is not part of QEMU's contract (it implements write-through with a
data sync after each write), so it is recorded, not judged: test_sync_order checks the guarantee itself.
QMP `query-block` reports the same three switches as its `cache` object (BlockdevCacheInfo).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from conformance.block.cache_modes.conftest import FLUSH, MODE_NAMES, WCE, CacheVm
from conformance.block.cache_modes.host import flag_names, image_fds
from conformance.block.conftest import clause
from conformance.virtio.devices import S_OK, T_IN, T_OUT, blk_header


@clause("cache/direct")
@pytest.mark.parametrize("mode", MODE_NAMES)
def test_image_open_flags(
    cache_vm: Callable[[str], CacheVm], mode: str, record_property: Callable[[str, object], None]
) -> None:
    cvm = cache_vm(mode)
    _, vq = cvm.vm.ready(want=WCE | FLUSH)
    # Some targets reopen the image while the device comes up (QEMU does on enumeration): look after a
    # read and a write have gone through, at the descriptors that serve the guest.
    assert vq.transact([blk_header(T_OUT, 8), b"w" * 4096], [1]).data[-1][0] == S_OK
    assert vq.transact([blk_header(T_IN, 8)], [4096, 1]).data[-1][0] == S_OK
    fds = image_fds(cvm.vm.pid, cvm.image)
    assert fds, f"cache={mode}: the target (pid {cvm.vm.pid}) has no open descriptor for {cvm.image}"
    described = ", ".join(f"pid {f.pid} fd {f.fd}: {flag_names(f.flags)}" for f in fds)
    record_property("image_fds", described)
    record_property("o_dsync", any(f.dsync for f in fds))
    for f in fds:
        assert f.direct == cvm.mode.direct, (
            f"cache={mode}: O_DIRECT should be {'set' if cvm.mode.direct else 'clear'} (cache.direct="
            f"{'on' if cvm.mode.direct else 'off'}); found {described}"
        )


@clause("cache/query-block")
@pytest.mark.parametrize("mode", MODE_NAMES)
def test_query_block_cache(cache_vm: Callable[..., CacheVm], mode: str) -> None:
    cvm = cache_vm(mode, qmp=True)
    assert cvm.vm.qmp is not None
    (entry,) = [e for e in cvm.vm.qmp.execute("query-block") if e.get("device") == "d0"]
    m = cvm.mode
    assert entry["inserted"]["cache"] == {"writeback": m.writeback, "direct": m.direct, "no-flush": m.no_flush}
