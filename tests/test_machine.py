"""refvm as a whole process: the probe guest booted through the CLI with different backends and options."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conformance.drivers.console import SerialConsole
from conformance.drivers.guests import probe_elf
from tests.conftest import kvm_available, require

REFVM = [sys.executable, "-m", "refvm"]
DEBUG_EXIT = ["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]


@pytest.fixture(scope="module")
def kernel() -> str:
    require(kvm_available(), "/dev/kvm is missing or not accessible")
    return str(probe_elf())


def boot(kernel: str, *extra: str, timeout: float = 30) -> SerialConsole:
    return SerialConsole([*REFVM, "-kernel", kernel, *DEBUG_EXIT, "-watchdog-timeout", "60", *extra], timeout=timeout)


def test_nographic_boots_to_prompt_and_exit_status(kernel: str) -> None:
    with boot(kernel, "-nographic") as con:
        banner = con.wait_prompt()
        # (host-KVM filter warnings about the default CPU model, as QEMU prints them, may come first)
        assert "\nrefvm probe guest" in "\n" + banner
        con.send("exit 5\r")
        assert con.wait_exit() == 11


def test_serial_to_file_backend(kernel: str, tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    proc = subprocess.run(
        [*REFVM, "-kernel", kernel, *DEBUG_EXIT, "-nodefaults", "-serial", f"file:{log}", "-watchdog-timeout", "3"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 124, "no input ever arrives, so the watchdog ends the run"
    assert "watchdog" in proc.stderr
    assert log.read_text().startswith("refvm probe guest")


def test_chardev_socket_serial(kernel: str, tmp_path: Path) -> None:
    path = tmp_path / "serial.sock"
    args = ["-nodefaults", "-chardev", f"socket,id=s0,path={path},server=on,wait=off", "-serial", "chardev:s0"]
    proc = subprocess.Popen([*REFVM, "-kernel", kernel, *DEBUG_EXIT, "-watchdog-timeout", "60", *args])
    try:
        deadline = time.monotonic() + 20
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(str(path))
        sock.settimeout(20)
        sock.sendall(b"\r")  # the banner may have gone out before we connected; a new prompt comes anyway
        received = b""
        while b"probe> " not in received:
            received += sock.recv(4096)
        sock.sendall(b"exit 2\r")
        assert proc.wait(timeout=20) == 5
    finally:
        proc.kill()
        proc.wait()


def test_two_vcpus_boot(kernel: str) -> None:
    with boot(kernel, "-nodefaults", "-serial", "stdio", "-smp", "2", "-m", "64") as con:
        assert "mem_upper=64512K" in con.wait_prompt()
        con.send("exit 0\r")
        assert con.wait_exit() == 1


def test_too_many_vcpus_is_a_clear_error(kernel: str) -> None:
    proc = subprocess.run([*REFVM, "-kernel", kernel, "-nodefaults", "-smp", "5000"], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "The max CPUs supported by machine" in proc.stderr and "Traceback" not in proc.stderr


def test_sigterm_ends_cleanly(kernel: str) -> None:
    con = boot(kernel, "-nodefaults", "-serial", "stdio")
    con.wait_prompt()
    con.child.kill(signal.SIGTERM)
    assert con.wait_exit() == 0
    assert "terminating on signal 15" in con.transcript


def test_paused_start_runs_nothing(kernel: str, tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    proc = subprocess.run(
        [*REFVM, "-kernel", kernel, "-nodefaults", "-serial", f"file:{log}", "-S", "-watchdog-timeout", "1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 124
    assert log.read_text() == "", "with -S the vCPUs must not run"


def test_doctor_describes_host() -> None:
    require(kvm_available(), "/dev/kvm is missing or not accessible")
    proc = subprocess.run([*REFVM, "doctor"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "API version" in proc.stdout or "api version" in proc.stdout.lower()
    if os.path.exists("/sys/module/kvm_pvm"):
        assert "kvm-pvm" in proc.stdout or "kvm_pvm" in proc.stdout
