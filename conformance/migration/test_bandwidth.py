"""max-bandwidth: the source sends at most that many bytes a second."""

from __future__ import annotations

import pytest

from conformance.migration.conftest import wait_status

LIMIT = 2 << 20  # bytes/s
DATA = 2 << 20  # bytes of non-zero guest RAM: about a second at the limit


@pytest.mark.clause("refvm-migration", "parameters/max-bandwidth")
def test_max_bandwidth_bounds_the_rate(vm, sock_dir) -> None:
    src, dst = vm(), vm("-incoming", "defer")
    src.memset(8 << 20, DATA, 0x5A)
    src.qmp.execute("migrate-set-parameters", **{"max-bandwidth": LIMIT, "downtime-limit": 10})
    dst.qmp.execute("migrate-incoming", uri=f"unix:{sock_dir}/m")
    src.qmp.execute("migrate", uri=f"unix:{sock_dir}/m")
    done = wait_status(src, "completed")
    ram = done["ram"]
    assert ram["transferred"] >= DATA
    rate = ram["transferred"] / (done["total-time"] / 1000)
    assert rate <= LIMIT * 1.25, f"{rate:.0f} bytes/s at a limit of {LIMIT} bytes/s"
