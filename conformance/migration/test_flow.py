"""A whole migration between two processes of one target: statuses, events, run states and guest RAM."""

from __future__ import annotations

import pytest

from conformance.migration.conftest import RAM_MB, caps, events, run_state, wait_status

MiB = 1 << 20
#: (address, bytes) written on the source and read back on the destination: first page, a page-crossing
#: run of every byte value, a lone word, and the last bytes of RAM.
PATTERN = [(0x0, b"first page of RAM"), (0x7FF0, bytes(range(256)) * 8), (0x123456, b"\xde\xad\xbe\xef"),
           (RAM_MB * MiB - 17, b"last bytes of RAM")]
FILLED = (8 * MiB, MiB, 0xA5)  # (address, length, byte): a whole MiB by memset


def _migrate(src, dst, uri: str) -> dict:  # noqa: ANN001
    dst.qmp.execute("migrate-incoming", uri=uri)
    assert src.qmp.execute("migrate", uri=uri) == {}
    done = wait_status(src, "completed")
    wait_status(dst, "completed")
    return done


@pytest.mark.clause("refvm-migration", "ram/identical")
def test_guest_ram_identical_after_migration(vm, sock_dir) -> None:
    src, dst = vm(), vm("-incoming", "defer")
    for addr, data in PATTERN:
        src.write(addr, data)
    src.memset(*FILLED)
    done = _migrate(src, dst, f"unix:{sock_dir}/m")
    for addr, data in PATTERN:
        assert dst.read(addr, len(data)) == data, f"guest RAM at {addr:#x} differs after migration"
    addr, length, byte = FILLED
    assert dst.b64read(addr, length) == bytes([byte]) * length
    ram = done["ram"]
    assert ram["total"] >= RAM_MB * MiB and ram["remaining"] == 0
    assert ram["normal"] >= length // 4096, "every non-zero page is sent as a normal page"
    assert ram["normal-bytes"] == ram["normal"] * ram["page-size"]
    assert ram["duplicate"] > 0, "zero pages are sent as duplicates, not as page data"
    assert ram["transferred"] < RAM_MB * MiB // 2, "zero pages cost a few bytes, not a page each"


@pytest.mark.clause("refvm-migration", "status/order")
@pytest.mark.clause("refvm-migration", "events/migration")
@pytest.mark.clause("refvm-migration", "runstate/switchover")
def test_status_and_event_order_of_a_running_source(vm, sock_dir) -> None:
    src, dst = vm(), vm("-incoming", "defer")
    caps(src, events=True)
    caps(dst, events=True)
    src.qmp.execute("cont")
    assert run_state(src) == "running" and run_state(dst) == "inmigrate"
    done = _migrate(src, dst, f"unix:{sock_dir}/m")
    assert run_state(src) == "postmigrate"
    assert run_state(dst) == "paused", "a -S destination of a running guest stays paused"
    got = [e for e in events(src, "MIGRATION", "MIGRATION_PASS", "STOP", "RESUME") if e[0] != "RESUME"]
    statuses = [d["status"] for name, d in got if name == "MIGRATION"]
    assert statuses[:2] == ["setup", "active"] and statuses[-1] == "completed"
    assert set(statuses) <= {"setup", "active", "device", "completed"}, statuses
    assert ("STOP", None) in got and got.index(("STOP", None)) < got.index(("MIGRATION", {"status": "completed"}))
    passes = [d["pass"] for name, d in got if name == "MIGRATION_PASS"]
    assert passes == list(range(1, len(passes) + 1)) and passes[-1] == done["ram"]["dirty-sync-count"]
    dst_statuses = [d["status"] for _, d in events(dst, "MIGRATION")]
    assert dst_statuses == ["setup", "active", "completed"]
    dst.qmp.execute("cont")
    assert run_state(dst) == "running"


@pytest.mark.clause("refvm-migration", "runstate/stopped-source")
def test_stopped_source_leaves_destination_stopped(vm, sock_dir) -> None:
    src, dst = vm(), vm("-incoming", "defer")
    assert run_state(src) == "prelaunch"
    _migrate(src, dst, f"unix:{sock_dir}/m")
    assert run_state(src) == "postmigrate"
    assert run_state(dst) == "prelaunch", "the destination takes the state of a source that was not running"
    assert not events(src, "STOP"), "no STOP for a guest that was not running"


@pytest.mark.clause("refvm-migration", "query/fields")
def test_query_migrate_members(vm, sock_dir) -> None:
    src, dst = vm(), vm("-incoming", "defer")
    assert src.qmp.execute("query-migrate") == {}, "nothing to report before the first migration"
    caps(src, pause_before_switchover=True)
    dst.qmp.execute("migrate-incoming", uri=f"unix:{sock_dir}/m")
    src.qmp.execute("migrate", uri=f"unix:{sock_dir}/m")
    held = wait_status(src, "pre-switchover")
    assert {"total-time", "setup-time", "expected-downtime", "ram"} <= set(held)
    ram_members = {"transferred", "remaining", "total", "duplicate", "normal", "normal-bytes", "dirty-sync-count",
                   "dirty-pages-rate", "mbps", "pages-per-second", "page-size"}
    assert ram_members <= set(held["ram"]), ram_members - set(held["ram"])
    src.qmp.execute("migrate-continue", state="pre-switchover")
    done = wait_status(src, "completed")
    assert {"total-time", "setup-time", "downtime", "ram"} <= set(done) and "expected-downtime" not in done
    assert 0 <= done["downtime"] <= done["total-time"] and done["setup-time"] <= done["total-time"]
    assert ram_members <= set(done["ram"]) and done["ram"]["mbps"] > 0
    assert done["ram"]["transferred"] >= held["ram"]["transferred"] and done["ram"]["remaining"] == 0


@pytest.mark.clause("refvm-migration", "incoming/defer")
def test_defer_then_migrate_incoming(vm, sock_dir) -> None:
    plain = vm()
    err = plain.qmp.request("migrate-incoming", uri=f"unix:{sock_dir}/x")["error"]
    assert err["desc"] == "'-incoming' was not specified on the command line"
    dst = vm("-incoming", "defer")
    assert run_state(dst) == "inmigrate"
    err = dst.qmp.request("migrate", uri=f"unix:{sock_dir}/y")["error"]
    assert err["desc"] == "Guest is waiting for an incoming migration"
    assert dst.qmp.execute("migrate-incoming", uri=f"unix:{sock_dir}/m") == {}
    listening = dst.qmp.execute("query-migrate")
    assert listening.get("socket-address") == [{"type": "unix", "path": f"{sock_dir}/m"}], listening
    err = dst.qmp.request("migrate-incoming", uri=f"unix:{sock_dir}/n")["error"]
    assert err["desc"] == "The incoming migration has already been started"
    src = vm()
    src.write(0x2000, b"deferred")
    src.qmp.execute("migrate", uri=f"unix:{sock_dir}/m")
    wait_status(dst, "completed")
    assert dst.read(0x2000, 8) == b"deferred"


@pytest.mark.clause("refvm-migration", "switchover/pause-before-switchover")
@pytest.mark.clause("refvm-migration", "ram/dirty-after-first-pass")
def test_pause_before_switchover_then_continue(vm, sock_dir) -> None:
    src, dst = vm(), vm("-incoming", "defer")
    caps(src, events=True, pause_before_switchover=True)
    src.write(0x3000, b"before")
    src.qmp.execute("cont")
    dst.qmp.execute("migrate-incoming", uri=f"unix:{sock_dir}/m")
    src.qmp.execute("migrate", uri=f"unix:{sock_dir}/m")
    wait_status(src, "pre-switchover")
    assert run_state(src) == "finish-migrate", "the source is stopped while it waits"
    assert ("STOP", None) in events(src, "STOP")
    err = src.qmp.request("migrate-continue", state="active")["error"]
    assert err["desc"] == "Migration not in expected state: pre-switchover"
    src.write(0x3000, b"changed")  # written after the first pass over RAM: must still arrive
    assert src.qmp.execute("query-migrate")["status"] == "pre-switchover", "it waits for migrate-continue"
    src.qmp.execute("migrate-continue", state="pre-switchover")
    wait_status(src, "completed")
    wait_status(dst, "completed")
    assert dst.read(0x3000, 7) == b"changed"
    statuses = [d["status"] for _, d in events(src, "MIGRATION")]
    assert statuses.index("pre-switchover") < statuses.index("completed")
    assert statuses[statuses.index("pre-switchover") + 1] == "device"


@pytest.mark.clause("refvm-migration", "cancel/resumes")
def test_cancel_at_pre_switchover_resumes_source(vm, sock_dir) -> None:
    src, dst = vm(), vm("-incoming", "defer")
    caps(src, events=True, pause_before_switchover=True)
    src.write(0x4000, b"kept")
    src.qmp.execute("cont")
    dst.qmp.execute("migrate-incoming", uri=f"unix:{sock_dir}/m")
    src.qmp.execute("migrate", uri=f"unix:{sock_dir}/m")
    wait_status(src, "pre-switchover")
    assert src.qmp.execute("migrate_cancel") == {}
    wait_status(src, "cancelled")
    assert run_state(src) == "running"
    got = events(src, "MIGRATION", "RESUME")
    assert got[-3:] == [("MIGRATION", {"status": "cancelling"}), ("RESUME", None),
                        ("MIGRATION", {"status": "cancelled"})], got
    assert src.read(0x4000, 4) == b"kept"
    dst.proc.wait(timeout=20)  # the destination got a truncated stream
    assert dst.proc.returncode != 0


@pytest.mark.clause("refvm-migration", "cancel/resumes")
def test_cancel_while_active(vm, sock_dir) -> None:
    src, dst = vm(), vm("-incoming", "defer")
    caps(src, events=True)
    src.qmp.execute("migrate-set-parameters", **{"max-bandwidth": 20_000})  # so that it is still sending
    dst.qmp.execute("migrate-incoming", uri=f"unix:{sock_dir}/m")
    src.qmp.execute("migrate", uri=f"unix:{sock_dir}/m")
    wait_status(src, "active")
    src.qmp.execute("migrate_cancel")
    assert wait_status(src, "cancelled") == {"status": "cancelled"}
    assert run_state(src) == "prelaunch", "a source that was not running stays as it was"
    statuses = [d["status"] for _, d in events(src, "MIGRATION")]
    assert statuses == ["setup", "active", "cancelling", "cancelled"]
