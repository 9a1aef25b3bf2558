"""The `refvm` command line: QEMU's spelling accepted, every mistake a one-line error with status 1."""

from __future__ import annotations

import subprocess
import sys

import pytest

from refvm.cli import UsageError, parse_args, parse_size
from refvm.config import MIB


def run_refvm(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "refvm", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize(
    "args,message",
    [
        (["-frobnicate"], "refvm: -frobnicate: invalid option"),
        (["-m"], "refvm: -m: requires an argument"),
        (["-m", "12x", "-kernel", "k"], "refvm: -m 12x: invalid size"),
        (["-smp", "3,maxcpus=2", "-kernel", "k"], "refvm: -smp 3,maxcpus=2: Invalid CPU topology"),
        (["-smp", "cpus=two", "-kernel", "k"], "refvm: -smp cpus=two: Parameter 'smp.cpus' expects integer"),
        (["-device", "e1000", "-kernel", "k"], "refvm: -device e1000: 'e1000' is not a valid device model name"),
        (["-device", "isa-debug-exit,iobase=zz", "-kernel", "k"], "Property 'isa-debug-exit.iobase' expects a number"),
        (["-device", "isa-debug-exit,color=red", "-kernel", "k"], "Property 'isa-debug-exit.color' not found"),
        (["-accel", "tcg", "-kernel", "k"], "refvm: -accel tcg: unsupported accelerator 'tcg'"),
        (["-M", "q35", "-kernel", "k"], "unsupported machine type 'q35'"),
        (["-display", "gtk", "-kernel", "k"], "refvm: -display gtk: refvm has no graphical display"),
        (["-serial", "chardev:nope", "-kernel", "k"], "refvm: -serial chardev:nope: chardev 'nope' not found"),
        (["-nographic"], "refvm: -kernel: no kernel given"),
        (["-kernel", "/nonexistent/k.elf", "-nodefaults"], "could not load kernel '/nonexistent/k.elf'"),
        (["disk.img"], "refvm: disk.img: invalid option"),
        (["-accel", "qtest"], "refvm: -accel qtest: needs -qtest ADDRESS"),
        (["-qtest", "tcp:1234"], "refvm: -qtest tcp:1234:"),
    ],
)
def test_bad_command_lines_fail_with_one_line(args: list[str], message: str) -> None:
    proc = run_refvm(*args)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert message in lines[0]
    assert lines[0].startswith("refvm: ")


def test_help_and_version() -> None:
    proc = run_refvm("-help")
    assert proc.returncode == 0
    for opt in (
        "-m ",
        "-smp",
        "-kernel",
        "-initrd",
        "-append",
        "-serial",
        "-chardev",
        "-device",
        "-nographic",
        "-nodefaults",
        "-accel",
        "-name",
        "-no-reboot",
        "-S",
    ):
        assert opt in proc.stdout
    assert run_refvm("--version").stdout.startswith("refvm version ")


def test_device_help_lists_debug_exit() -> None:
    proc = run_refvm("-device", "help")
    assert proc.returncode == 0
    assert '"isa-debug-exit"' in proc.stdout


@pytest.mark.parametrize(
    "text,size",
    [
        ("128", 128 * MIB),
        ("64M", 64 * MIB),
        ("1G", 1024 * MIB),
        ("size=256M", 256 * MIB),
        ("2048k", 2 * MIB),
        ("1.5G", 1536 * MIB),
    ],
)
def test_memory_sizes_use_qemu_units(text: str, size: int) -> None:
    assert parse_size("m", text) == size


def test_qemu_spelling_parses_into_config() -> None:
    parsed = parse_args(
        [
            "-m",
            "256",
            "-smp",
            "cpus=2",
            "-kernel",
            "k.elf",
            "-initrd",
            "i.img",
            "-append",
            "a b",
            "-nographic",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "--no-reboot",
            "-name",
            "guest=vm1",
            "-accel",
            "kvm",
            "-enable-kvm",
            "-M",
            "pc,accel=kvm",
            "-S",
        ]
    )
    cfg = parsed.config
    assert (cfg.memory_bytes, cfg.smp, cfg.kernel, cfg.initrd, cfg.append) == (256 * MIB, 2, "k.elf", "i.img", "a b")
    assert cfg.no_reboot and cfg.start_paused and cfg.name == "vm1"
    assert cfg.devices[0].driver == "isa-debug-exit" and cfg.devices[0].props["iobase"] == "0xf4"
    assert len(cfg.serials) == 1, "-nographic puts the serial port on stdio"


def test_nodefaults_means_no_serial() -> None:
    assert parse_args(["-nodefaults", "-kernel", "k"]).config.serials == []


def test_too_many_serials() -> None:
    with pytest.raises(UsageError, match="too many serial ports"):
        parse_args(["-kernel", "k"] + ["-serial", "null"] * 5)
