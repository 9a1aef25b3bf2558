"""Migration capabilities and parameters: what query reports, what set accepts and the texts it refuses with."""

from __future__ import annotations

import pytest

from conformance.migration.conftest import caps, wait_status


def _error(session, command: str, **args) -> str:  # noqa: ANN001
    reply = session.qmp.request(command, **args)
    assert "error" in reply, f"{command} {args} was accepted: {reply}"
    assert reply["error"]["class"] == "GenericError"
    return reply["error"]["desc"]


@pytest.mark.clause("refvm-migration", "capabilities/query-set")
def test_capabilities_default_off_and_set(vm) -> None:
    src = vm()
    states = {c["capability"]: c["state"] for c in src.qmp.execute("query-migrate-capabilities")}
    assert states["events"] is False and states["pause-before-switchover"] is False
    caps(src, events=True, pause_before_switchover=True)
    states = {c["capability"]: c["state"] for c in src.qmp.execute("query-migrate-capabilities")}
    assert states["events"] is True and states["pause-before-switchover"] is True
    caps(src, events=False)
    states = {c["capability"]: c["state"] for c in src.qmp.execute("query-migrate-capabilities")}
    assert states["events"] is False and states["pause-before-switchover"] is True


@pytest.mark.clause("refvm-migration", "capabilities/validation")
@pytest.mark.parametrize("entries,desc", [
    ([{"capability": "no-such-capability", "state": True}], "Parameter 'capability' does not accept value "
                                                            "'no-such-capability'"),
    ([{"capability": "events"}], "Parameter 'capabilities[0].state' is missing"),
    ([{"state": True}], "Parameter 'capabilities[0].capability' is missing"),
    ([{"capability": "events", "state": 1}], "Invalid parameter type for 'capabilities[0].state', expected: boolean"),
    ([{"capability": "events", "state": True, "extra": 1}], "Parameter 'capabilities[0].extra' is unexpected"),
])
def test_bad_capabilities_refused(vm, entries: list, desc: str) -> None:
    src = vm()
    assert _error(src, "migrate-set-capabilities", capabilities=entries) == desc
    states = {c["capability"]: c["state"] for c in src.qmp.execute("query-migrate-capabilities")}
    assert states["events"] is False, "a refused command changes nothing"


@pytest.mark.clause("refvm-migration", "capabilities/while-migrating")
def test_capabilities_fixed_while_migrating_parameters_not(vm, sock_dir) -> None:
    src, dst = vm(), vm("-incoming", "defer")
    caps(src, pause_before_switchover=True)
    dst.qmp.execute("migrate-incoming", uri=f"unix:{sock_dir}/m")
    src.qmp.execute("migrate", uri=f"unix:{sock_dir}/m")
    wait_status(src, "pre-switchover")
    desc = _error(src, "migrate-set-capabilities", capabilities=[{"capability": "events", "state": True}])
    assert desc == "There's a migration process in progress"
    assert src.qmp.execute("migrate-set-parameters", **{"downtime-limit": 1000}) == {}
    assert src.qmp.execute("query-migrate-parameters")["downtime-limit"] == 1000
    assert _error(src, "migrate", uri=f"unix:{sock_dir}/other") == "There's a migration process in progress"
    src.qmp.execute("migrate-continue", state="pre-switchover")
    wait_status(src, "completed")
    caps(src, events=True)  # allowed again once it is over


@pytest.mark.clause("refvm-migration", "parameters/query-set")
def test_parameters_defaults_and_set(vm) -> None:
    src = vm()
    params = src.qmp.execute("query-migrate-parameters")
    assert params["downtime-limit"] == 300 and params["max-bandwidth"] == 128 << 20
    src.qmp.execute("migrate-set-parameters", **{"downtime-limit": 2000 * 1000, "max-bandwidth": 1 << 20})
    params = src.qmp.execute("query-migrate-parameters")
    assert params["downtime-limit"] == 2000 * 1000 and params["max-bandwidth"] == 1 << 20
    src.qmp.execute("migrate-set-parameters", **{"downtime-limit": 0})
    assert src.qmp.execute("query-migrate-parameters")["downtime-limit"] == 0
    src.qmp.execute("migrate-set-parameters", **{"tls-creds": ""})  # what libvirt sends to reset TLS
    assert src.qmp.execute("query-migrate-parameters")["tls-creds"] == ""


@pytest.mark.clause("refvm-migration", "parameters/validation")
@pytest.mark.parametrize("args,desc", [
    ({"downtime-limit": 2000 * 1000 + 1},
     "Parameter 'downtime_limit' expects an integer in the range of 0 to (2000 * 1000) ms"),
    ({"downtime-limit": -1}, "Parameter 'downtime_limit' expects an integer in the range of 0 to (2000 * 1000) ms"),
    ({"downtime-limit": "100"}, "Parameter 'downtime-limit' expects uint64"),
    ({"max-bandwidth": 1.5}, "Parameter 'max-bandwidth' expects uint64"),
    ({"max-bandwidth": 1 << 64}, "Parameter 'max-bandwidth' expects uint64"),
    ({"no-such-parameter": 1}, "Parameter 'no-such-parameter' is unexpected"),
])
def test_bad_parameters_refused(vm, args: dict, desc: str) -> None:
    src = vm()
    assert _error(src, "migrate-set-parameters", **args) == desc
    assert src.qmp.execute("query-migrate-parameters")["downtime-limit"] == 300, "a refused command changes nothing"


@pytest.mark.clause("refvm-migration", "switchover/migrate-continue")
@pytest.mark.parametrize("args,desc", [
    ({"state": "pre-switchover"}, "Migration not in expected state: none"),
    ({"state": "no-such-state"}, "Parameter 'state' does not accept value 'no-such-state'"),
    ({}, "Parameter 'state' is missing"),
])
def test_migrate_continue_refused_without_a_paused_migration(vm, args: dict, desc: str) -> None:
    assert _error(vm(), "migrate-continue", **args) == desc


@pytest.mark.clause("refvm-migration", "migrate/uri")
def test_bad_uris_refused(vm) -> None:
    src = vm()
    assert _error(src, "migrate", uri="no-such-protocol:x") == "Parameter 'uri' expects a valid migration protocol"
    assert _error(src, "migrate", uri="fd:never-passed") == "File descriptor named 'never-passed' has not been found"
    assert src.qmp.execute("query-migrate") == {
        "status": "failed", "error-desc": "File descriptor named 'never-passed' has not been found"}
