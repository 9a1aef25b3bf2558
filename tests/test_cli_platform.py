"""The management-stack options (issue 8): machine types, -realtime/-overcommit, -boot, -msg, -sandbox, -monitor,
-add-fd, -netdev tap,fd=, isa-serial, -global, and the devices refvm refuses -- each bad value a one-line error,
with QEMU 7.2's text where QEMU has the option (checked against the installed qemu-system-x86_64)."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import struct
import subprocess
import sys
import time

import pytest

from refvm import machine_types
from refvm.cli import UsageError, parse_args
from tests.conftest import require

QEMU = shutil.which("qemu-system-x86_64")
K = ["-kernel", "k", "-nodefaults"]


def run(argv: list[str], pass_fds: tuple[int, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
                          pass_fds=pass_fds)  # fmt: skip


def refvm_error(args: list[str], pass_fds: tuple[int, ...] = ()) -> str:
    proc = run([sys.executable, "-m", "refvm", *K, *args], pass_fds)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("refvm: "), proc.stderr
    return lines[0]


#: (arguments, the text both refvm and QEMU 7.2 print for them)
SAME_AS_QEMU = [
    (["-machine", "pc,usb=maybe"], "Parameter 'usb' expects 'on' or 'off'"),
    (["-machine", "pc,dump-guest-core=x"], "Parameter 'dump-guest-core' expects 'on' or 'off'"),
    (["-machine", "pc,foo=1"], "Property 'pc-i440fx-7.2-machine.foo' not found"),
    (["-machine", "pc-i440fx-9.9"], "unsupported machine type"),
    (["-overcommit", "mem-lock=x"], "-overcommit mem-lock=x: Parameter 'mem-lock' expects 'on' or 'off'"),
    (["-overcommit", "foo=on"], "-overcommit foo=on: Invalid parameter 'foo'"),
    (["-boot", "order=z"], "Invalid boot device 'z'"),
    (["-boot", "strict=x"], "Parameter 'boot.strict' expects 'on' or 'off'"),
    (["-boot", "menu=x"], "Parameter 'boot.menu' expects 'on' or 'off'"),
    (["-boot", "foo=1"], "Parameter 'boot.foo' is unexpected"),
    (["-msg", "timestamp=x"], "-msg timestamp=x: Parameter 'timestamp' expects 'on' or 'off'"),
    (["-sandbox", "x"], "-sandbox x: Parameter 'enable' expects 'on' or 'off'"),
    (["-netdev", "tap,id=n,fd=99"], "-netdev tap,id=n,fd=99: n: Can't use file descriptor 99: Bad file descriptor"),
    (["-netdev", "tap,id=n,fd=abc"], "-netdev tap,id=n,fd=abc: Invalid file descriptor number 'abc'"),
    (["-netdev", "tap,id=n,fd=0"], "-netdev tap,id=n,fd=0: Unable to query TUNGETIFF on FD 0"),
    (["-netdev", "tap,id=n,fd=3,ifname=x"], "-netdev tap,id=n,fd=3,ifname=x: ifname=, script=, downscript=, "
                                            "vnet_hdr=, helper=, queues=, fds=, and vhostfds= are invalid with fd="),
    (["-add-fd", "fd=99,set=1"], "-add-fd fd=99,set=1: fd is not valid or already in use"),
    (["-add-fd", "fd=1"], "-add-fd fd=1: fd cannot be a standard I/O stream"),
    (["-add-fd", "set=1"], "-add-fd set=1: fd option is required and must be non-negative"),
    (["-device", "isa-serial,index=5"], "-device isa-serial,index=5: Max. supported number of ISA serial ports is 4."),
    (["-device", "isa-serial,chardev=nope"], "Property 'serial.chardev' can't find value 'nope'"),
    (["-monitor", "chardev:nope"], 'chardev "nope" not found'),
    (["-monitor", "stdio", "-serial", "stdio"], "cannot use stdio by multiple character devices"),
    (["-mon", "chardev=c0,mode=frob", "-chardev", "null,id=c0"], "Parameter 'mode' does not accept value 'frob'"),
]


@pytest.mark.parametrize("args,text", SAME_AS_QEMU, ids=[" ".join(a) for a, _ in SAME_AS_QEMU])
def test_errors_match_qemu(args: list[str], text: str) -> None:
    assert text in refvm_error(args)
    require(QEMU is not None, "qemu-system-x86_64 not installed")
    proc = run([QEMU, "-accel", "tcg", "-display", "none", "-nodefaults", "-S", *args])
    assert proc.returncode == 1 and text in proc.stderr, proc.stderr


#: Options QEMU 7.2 lacks or where it has no one-line text: refvm's own one line.
REFVM_ONLY = [
    (["-realtime", "mlock=x"], "-realtime mlock=x: Parameter 'mlock' expects 'on' or 'off'"),
    (["-realtime", "foo=on"], "-realtime foo=on: Invalid parameter 'foo'"),
    (["-machine", "pc,usb=on"], "refvm models no USB controller"),
    (["-monitor", "foo:bar"], "-monitor foo:bar: refvm's human monitor takes none, stdio or chardev:ID"),
    (["-netdev", "tap,id=n,fd=3,vhost=on"], "vhost-net requested but could not be initialized: /dev/vhost-net"),
    (["-netdev", "tap,id=n,fd=3,vhostfd=4,vhost=off"], "vhostfd=/vhostfds= is not valid with vhost=off"),
    (["-device", "isa-serial,irq=99"], "Property 'isa-serial.irq' value 99 is out of range"),
    (["-device", "isa-serial,index=0", "-device", "isa-serial,index=0"], "serial port index 0 is already in use"),
    (["-global", "kvm-pit.lost_tick_policy=foo"], "Parameter 'lost_tick_policy' does not accept value 'foo'"),
    (["-global", "kvm-pit.lost_tick_policy=slew"], "kvm-pit.lost_tick_policy=slew: Lost tick policy not supported."),
    (["-device", "piix3-usb-uhci,id=usb"], "'piix3-usb-uhci' is not supported: refvm models no USB controller"),
    (["-device", "usb-tablet,id=input0"], "'usb-tablet' is not supported: refvm models no USB"),
    (["-device", "cirrus-vga,id=video0"], "'cirrus-vga' is not supported: refvm has no graphical display"),
    (["-vnc", "0.0.0.0:12"], "-vnc 0.0.0.0:12: refvm has no graphical display, so no VNC server"),
    (["-k", "en-us"], "-k en-us: refvm has no graphical display, so no keyboard layout"),
    (["-usb"], "-usb: refvm models no USB controller"),
    (["-device", "virtio-blk-pci,scsi=on"], "Please set scsi=off for virtio-blk devices"),
    (["-device", "virtio-blk-pci,bootindex=x"], "Property 'virtio-blk-pci.bootindex' expects a number"),
]


@pytest.mark.parametrize("args,text", REFVM_ONLY, ids=[" ".join(a) for a, _ in REFVM_ONLY])
def test_refvm_one_line_errors(args: list[str], text: str) -> None:
    assert text in refvm_error(args)


def test_every_versioned_and_distribution_name_is_the_pc_board() -> None:
    for name in ["pc", *(f"pc-i440fx-{v}" for v in machine_types.UPSTREAM), "pc-i440fx-trusty",
                 "pc-i440fx-rhel7.6.0", "pc-i440fx-jammy"]:  # fmt: skip
        parsed = parse_args(["-M", f"{name},accel=kvm,usb=off,dump-guest-core=off,mem-merge=off", *K])
        opts = parsed.platform.machine
        assert opts.type.name == ("pc-i440fx-7.2" if name == "pc" else name)
        assert (opts.usb, opts.dump_guest_core, opts.mem_merge) == (False, False, False)


def test_machine_help_lists_qemus_names() -> None:
    proc = run([sys.executable, "-m", "refvm", "-machine", "help"])
    assert proc.returncode == 0
    names = {line.split()[0] for line in proc.stdout.splitlines()[1:]}
    assert {"pc", "pc-i440fx-2.0", "pc-i440fx-2.12", "pc-i440fx-7.2", "pc-i440fx-trusty"} <= names
    if QEMU:  # every upstream pc-i440fx-2.0+ name QEMU lists is one refvm lists
        qemu = run([QEMU, "-machine", "help"]).stdout.splitlines()
        upstream = {ln.split()[0] for ln in qemu if ln.startswith("pc-i440fx-") and "deprecated" not in ln}
        assert upstream <= names


def test_accepted_options_are_recorded() -> None:
    parsed = parse_args([
        *K, "-realtime", "mlock=off", "-overcommit", "mem-lock=on", "-no-user-config", "-boot", "order=c,strict=on",
        "-msg", "timestamp=on", "-sandbox", "on,obsolete=deny", "-monitor", "none",
        "-global", "kvm-pit.lost_tick_policy=discard", "-device", "virtio-rng-pci,id=rng0,bootindex=2",
    ])  # fmt: skip
    plat = parsed.platform
    assert plat.mem_lock and plat.no_user_config and plat.msg_timestamp
    assert plat.boot == {"order": "c", "strict": "on"}
    assert plat.boot_indexes == {"rng0": 2}
    assert parsed.config.globals["kvm-pit"] == {"lost_tick_policy": "discard"}
    assert "bootindex" not in parsed.config.devices[0].props


def test_isa_serial_ports_take_qemus_com_ports_and_irqs() -> None:
    cfg = parse_args([*K, "-chardev", "null,id=a", "-chardev", "null,id=b", "-chardev", "null,id=c",
                      "-device", "isa-serial,chardev=a", "-device", "isa-serial,chardev=b,index=3",
                      "-device", "isa-serial,chardev=c,iobase=0x3e0,irq=5"]).config  # fmt: skip
    assert [s is not None for s in cfg.serials] == [True, True, False, True]
    assert cfg.serials[0] is cfg.chardevs["a"] and cfg.serials[3] is cfg.chardevs["b"]
    assert cfg.serial_ports == {0: (0x3F8, 4), 3: (0x2E8, 3), 1: (0x3E0, 5)}
    with pytest.raises(UsageError, match="it's in use"):
        parse_args([*K, "-chardev", "null,id=a", "-device", "isa-serial,chardev=a", "-serial", "chardev:a"])


def test_mon_readline_is_the_human_monitor() -> None:
    plat = parse_args([*K, "-chardev", "pty,id=hmp", "-mon", "chardev=hmp,mode=readline"]).platform
    assert plat.monitor_chardev == "hmp"
    with pytest.raises(UsageError, match='chardev "nope" not found'):
        parse_args([*K, "-mon", "chardev=nope"])


def test_add_fd_takes_an_inherited_descriptor() -> None:
    r, w = os.pipe()
    try:
        plat = parse_args([*K, "-add-fd", f"fd={r},set=2,opaque=rdonly:/x"]).platform
        assert plat.fd_sets == {2: [(r, "rdonly:/x")]}
        with pytest.raises(UsageError, match="already in use"):
            parse_args([*K, "-add-fd", f"fd={r},set=2", "-add-fd", f"fd={r},set=3"])
    finally:
        os.close(r)
        os.close(w)


def _open_tap(flags: int) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH", b"", flags).ljust(40, b"\0"))  # TUNSETIFF
    return fd


def test_tap_fd_checks_a_real_inherited_tap() -> None:
    require(os.path.exists("/dev/net/tun") and os.geteuid() == 0, "needs root and /dev/net/tun")
    tap = _open_tap(0x0002 | 0x1000 | 0x4000)  # IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, as libvirt opens it
    tun = _open_tap(0x0001 | 0x1000)  # IFF_TUN
    try:
        parsed = parse_args([*K, "-netdev", f"tap,fd={tap},id=hostnet0,vhost=off"])
        assert parsed.config.netdevs["hostnet0"]["fd"] == str(tap)
        with pytest.raises(UsageError, match="is a tun device, not a tap"):
            parse_args([*K, "-netdev", f"tap,fd={tun},id=n"])
        with pytest.raises(UsageError, match="vhost-net requested but could not be initialized"):
            parse_args([*K, "-netdev", f"tap,fd={tap},id=n,vhost=on,vhostfd={tun}"])
        with pytest.raises(UsageError, match="fd= and fds= are mutually exclusive"):
            parse_args([*K, "-netdev", f"tap,fd={tap},fds={tap},id=n"])
        assert parse_args([*K, "-netdev", f"tap,fds={tap},id=n"]).config.netdevs["n"]["fds"] == str(tap)
    finally:
        os.close(tap)
        os.close(tun)


def test_msg_timestamp_prefixes_runtime_errors() -> None:
    proc = run([sys.executable, "-m", "refvm", "-msg", "timestamp=on", "-nodefaults", "-kernel", "/nonexistent"])
    assert proc.returncode == 1
    line = proc.stderr.strip()
    assert line[:4].isdigit() and line[10] == "T" and " refvm: " in line, line


def test_human_monitor_on_stdio(tmp_path) -> None:  # noqa: ANN001
    """-monitor stdio: QEMU's greeting and prompt, info status through the run states, cont starts the guest."""
    import pexpect

    probe = "guests/probe/build/probe.elf"
    require(os.path.exists(probe), "probe guest not built")
    log = tmp_path / "serial.log"
    argv = ["-m", "refvm", "-kernel", probe, "-nodefaults", "-S", "-monitor", "stdio", "-serial", f"file:{log}",
            "-watchdog-timeout", "60"]  # fmt: skip
    child = pexpect.spawn(sys.executable, argv, timeout=30)
    try:
        # (the pty's output processing turns each CR LF into CR CR LF: refvm leaves the terminal's modes alone)
        def answer(text: str) -> None:
            child.expect(re.escape(text).replace("\\\r\\\n", "\\r+\\n") + re.escape("(qemu) "))

        answer("QEMU 7.2.0 monitor - type 'help' for more information\r\n")
        child.sendline("info status")
        answer("VM status: paused (prelaunch)\r\n")
        child.sendline("cont")
        answer("")
        child.sendline("info status")
        answer("VM status: running\r\n")
        child.sendline("info frob")
        answer("unknown command: 'info frob'\r\n")
        deadline = time.monotonic() + 30
        while "probe> " not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "refvm probe guest" in log.read_text()
        child.sendline("info cpus")
        child.expect(r"\* CPU #0: thread_id=[1-9][0-9]*\r+\n")
        child.sendline("quit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


@pytest.mark.parametrize("opt", [["-overcommit", "mem-lock=on"], ["-realtime", "mlock=on"]],
                         ids=["overcommit", "realtime"])
def test_mem_lock_locks_the_vmm_memory(opt: list[str]) -> None:
    """mem-lock=on is mlockall(MCL_CURRENT|MCL_FUTURE): the kernel reports locked memory (VmLck) for the VMM."""
    probe = "guests/probe/build/probe.elf"
    require(os.path.exists(probe), "probe guest not built")
    proc = subprocess.Popen([sys.executable, "-m", "refvm", "-kernel", probe, "-nodefaults", "-m", "16", "-S",
                             "-watchdog-timeout", "30", *opt], stdin=subprocess.DEVNULL)  # fmt: skip
    try:
        locked = 0
        deadline = time.monotonic() + 20
        while locked < 16 * 1024 and time.monotonic() < deadline:  # kB: at least the guest's 16 MiB
            status = open(f"/proc/{proc.pid}/status").read()
            locked = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmLck:")))
            time.sleep(0.1)
        assert locked >= 16 * 1024, f"VmLck {locked} kB"
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("policy", ["discard", "delay"])
def test_kvm_pit_lost_tick_policy_reaches_kvm(policy: str) -> None:
    """discard turns the in-kernel PIT's re-injection off (KVM_REINJECT_CONTROL, which fails loudly if the
    kernel refuses it); the guest still boots to its prompt either way."""
    probe = "guests/probe/build/probe.elf"
    require(os.path.exists(probe), "probe guest not built")
    child_argv = [sys.executable, "-m", "refvm", "-kernel", probe, "-nodefaults", "-serial", "stdio",
                  "-global", f"kvm-pit.lost_tick_policy={policy}", "-watchdog-timeout", "60"]  # fmt: skip
    import pexpect

    child = pexpect.spawn(child_argv[0], child_argv[1:], timeout=60)
    try:
        child.expect_exact("probe> ")
    finally:
        child.close(force=True)


def test_tap_fds_become_the_queues_of_one_backend() -> None:
    """fds=A:B (libvirt's multiqueue tap): each inherited descriptor is one queue of the netdev."""
    from refvm.device_assembly import open_backends

    require(os.path.exists("/dev/net/tun") and os.geteuid() == 0, "needs root and /dev/net/tun")
    flags = 0x0002 | 0x1000 | 0x4000 | 0x0100  # IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE
    first = os.open("/dev/net/tun", os.O_RDWR)
    ifr = fcntl.ioctl(first, 0x400454CA, struct.pack("16sH", b"mq%d", flags).ljust(40, b"\0"))
    second = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(second, 0x400454CA, struct.pack("16sH", ifr[:16].rstrip(b"\0"), flags).ljust(40, b"\0"))
    cfg = parse_args([*K, "-netdev", f"tap,fds={first}:{second},id=mq0,vhost=off"]).config
    backends = open_backends(cfg, set(), clock=None, throttle_groups=None)
    try:
        tap = backends.netdevs["mq0"]
        assert tap.fds == [first, second] and tap.queues == 2
    finally:
        backends.close()  # closes both descriptors
