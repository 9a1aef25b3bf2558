"""Fixtures of the PCI suite: a stopped machine with virtio-blk and virtio-rng, driven over qtest.

Each test gets a fresh target process (start plus enumeration takes well under a second), so tests may
reprogram BARs and COMMAND freely. Whether the target speaks qtest at all is probed once per session: a
target that refuses its qtest argv is skipped with the line in which it says why; anything else that goes
wrong is a failure.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from conformance.drivers.pci import ConfigMechanism1, PciFunction, enumerate_bus
from conformance.drivers.qtest import QtestSession, QtestStartError
from conformance.targets import Target

VIRTIO_VENDOR = 0x1AF4
#: (transitional, modern) device IDs of the devices under test.
VIRTIO_BLK_IDS = (0x1001, 0x1042)
VIRTIO_RNG_IDS = (0x1005, 0x1044)
DISK_BYTES = 1024 * 1024


@pytest.fixture(scope="session")
def qtest_target(target: Target, machine_args: list[str]) -> Target:
    """The target, once it has shown that it starts under qtest with the devices under test (probed once
    per session: a target that refuses the accelerator or a device model is skipped with its reason)."""
    session = QtestSession(name=target.name)
    try:
        session.start(target, machine_args)
        session.endianness()
    except QtestStartError as err:
        if target.kind == "refvm" and err.exited:
            pytest.skip(f"target lacks the qtest accelerator or a device under test: {err.stderr_line}")
        raise
    finally:
        session.close()
    return target


@pytest.fixture(scope="session")
def disk_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("pci") / "disk0.raw"
    path.write_bytes(bytes(DISK_BYTES))
    return str(path)


@pytest.fixture(scope="session")
def machine_args(disk_image: str) -> list[str]:
    return [
        "-drive", f"if=none,id=d0,file={disk_image},format=raw",
        "-device", "virtio-blk-pci,drive=d0",
        "-device", "virtio-rng-pci",
    ]  # fmt: skip


@pytest.fixture
def qtest(qtest_target: Target, machine_args: list[str], request: pytest.FixtureRequest) -> Iterator[QtestSession]:
    """A freshly started machine; its stderr is attached to the report if the test fails."""
    session = QtestSession(name=qtest_target.name)
    request.node._qtest_sessions = [session]
    session.start(qtest_target, machine_args)
    yield session
    session.close()


@pytest.fixture
def pci(qtest: QtestSession) -> ConfigMechanism1:
    return ConfigMechanism1(qtest)


@pytest.fixture
def functions(pci: ConfigMechanism1) -> list[PciFunction]:
    return enumerate_bus(pci, 0)


def _find(functions: list[PciFunction], device_ids: tuple[int, ...], what: str) -> PciFunction:
    for func in functions:
        ident = func.read32(0)
        if ident & 0xFFFF == VIRTIO_VENDOR and ident >> 16 in device_ids:
            return func
    raise AssertionError(f"{what} not found on bus 0: {[str(f) for f in functions]}")


@pytest.fixture
def blk(functions: list[PciFunction]) -> PciFunction:
    return _find(functions, VIRTIO_BLK_IDS, "virtio-blk-pci")


@pytest.fixture
def rng(functions: list[PciFunction]) -> PciFunction:
    return _find(functions, VIRTIO_RNG_IDS, "virtio-rng-pci")


@pytest.fixture(params=["virtio-blk", "virtio-rng"])
def dut(request: pytest.FixtureRequest, functions: list[PciFunction]) -> PciFunction:
    """Each endpoint device under test in turn."""
    ids = VIRTIO_BLK_IDS if request.param == "virtio-blk" else VIRTIO_RNG_IDS
    return _find(functions, ids, request.param)


@pytest.fixture
def host_bridge(pci: ConfigMechanism1) -> PciFunction:
    return PciFunction(pci, 0, 0, 0)

