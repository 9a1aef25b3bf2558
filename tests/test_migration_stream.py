"""QEMU's migration stream framing: refvm's reader on a real QEMU 7.2 stream, and refvm's writer round-tripping."""
from __future__ import annotations

import io
import json
import shutil
import socket
import subprocess
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refvm.migration.stream import StreamWriter, read_stream
from refvm.migration.wire import TARGET_PAGE_SIZE, StreamError

QEMU = shutil.which("qemu-system-x86_64")


def _qmp(f, command: str, **args) -> dict:
    f.write(json.dumps({"execute": command, "arguments": args}).encode() + b"\n")
    f.flush()
    while True:
        reply = json.loads(f.readline())
        if "return" in reply or "error" in reply:
            return reply


@pytest.fixture(scope="module")
def qemu_stream(tmp_path_factory) -> bytes:
    """A stream written by a real QEMU 7.2 (-S, 32 MiB, TCG) through QMP migrate to exec:cat."""
    if QEMU is None:
        pytest.skip("qemu-system-x86_64 not installed")
    tmp = tmp_path_factory.mktemp("qemu-mig")
    sock, out = tmp / "qmp.sock", tmp / "stream.bin"
    proc = subprocess.Popen([QEMU, "-accel", "tcg", "-nodefaults", "-display", "none", "-S", "-m", "32",
                             "-qmp", f"unix:{sock},server=on,wait=off"])
    try:
        deadline = time.monotonic() + 30
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(sock))
            f = s.makefile("rwb")
            f.readline()
            _qmp(f, "qmp_capabilities")
            assert "return" in _qmp(f, "migrate", uri=f"exec:cat > {out}")
            while (status := _qmp(f, "query-migrate")["return"].get("status")) not in ("completed", "failed"):
                assert time.monotonic() < deadline, "QEMU migration did not finish"
                time.sleep(0.05)
            assert status == "completed"
            _qmp(f, "quit")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
    return out.read_bytes()


def test_reads_qemu_72_stream(qemu_stream: bytes) -> None:
    parsed = read_stream(qemu_stream)
    assert parsed.machine_type.startswith("pc-i440fx-")
    assert parsed.ram.blocks["pc.ram"] == 32 << 20
    assert "pc.bios" in parsed.ram.blocks
    ram = [s.kind for s in parsed.sections if s.idstr == "ram"]
    assert ram[0] == "start" and ram[-1] == "end" and set(ram[1:-1]) <= {"part"}
    sent = parsed.ram.zero_pages + parsed.ram.normal_pages
    assert sent >= (32 << 20) // TARGET_PAGE_SIZE  # every page of pc.ram at least once
    devices = {(s.idstr, s.instance_id) for s in parsed.devices()}
    assert {("timer", 0), ("cpu", 0), ("mc146818rtc", 0), ("i8259", 1), ("globalstate", 0)} <= devices
    assert parsed.vmdesc is not None
    described = {(d["name"], d["instance_id"]) for d in parsed.vmdesc["devices"]}
    assert described <= devices
    # Cross-check the footer-delimited payloads against the sizes QEMU's own description gives for devices
    # made only of fixed-size scalar fields.
    by_key = {(s.idstr, s.instance_id): s for s in parsed.devices()}
    checked = 0
    for desc in parsed.vmdesc["devices"]:
        fields = desc["fields"]
        if desc.get("subsections") or any("array_len" in f or "struct" in f or "size" not in f for f in fields):
            continue
        assert len(by_key[(desc["name"], desc["instance_id"])].payload) == sum(f["size"] for f in fields), desc
        checked += 1
    assert checked >= 3


def _sample_stream() -> tuple[bytes, dict[str, bytes]]:
    """A refvm-written stream: two RAM blocks over two parts and an end, two devices, EOF, vmdesc."""
    ram = {"pc.ram": bytearray(16 * TARGET_PAGE_SIZE), "pc.bios": bytearray(2 * TARGET_PAGE_SIZE)}
    ram["pc.ram"][TARGET_PAGE_SIZE:TARGET_PAGE_SIZE + 5] = b"hello"
    ram["pc.bios"][-1] = 0xAA
    out = io.BytesIO()
    w = StreamWriter(out)
    w.header("pc-i440fx-7.2")
    w.ram_start({k: len(v) for k, v in ram.items()})
    pages = [(b, off, bytes(m[off:off + TARGET_PAGE_SIZE])) for b, m in ram.items()
             for off in range(0, len(m), TARGET_PAGE_SIZE)]
    w.ram_part(pages[:9])
    w.ram_part(pages[9:])
    ram["pc.ram"][0:3] = b"new"  # dirtied after the first pass: resent at switchover
    w.ram_part([("pc.ram", 0, bytes(ram["pc.ram"][:TARGET_PAGE_SIZE]))], last=True)
    w.device("serial", 0, 1, b"\x01\x02\x03\x7e\x00\x00\x00\x01", {"fields": [{"name": "regs", "size": 8}]})
    w.device("serial", 1, 1, b"\x7e")
    w.finish()
    return out.getvalue(), {k: bytes(v) for k, v in ram.items()}


def test_refvm_stream_round_trips() -> None:
    data, ram = _sample_stream()
    parsed = read_stream(data)
    assert parsed.machine_type == "pc-i440fx-7.2"
    assert parsed.ram.blocks == {k: len(v) for k, v in ram.items()}
    for block, mem in ram.items():
        for off in range(0, len(mem), TARGET_PAGE_SIZE):
            assert parsed.ram.page(block, off) == mem[off:off + TARGET_PAGE_SIZE], (block, off)
    assert [(s.kind, s.idstr) for s in parsed.sections] == [
        ("start", "ram"), ("part", "ram"), ("part", "ram"), ("end", "ram"), ("full", "serial"), ("full", "serial")]
    serial0, serial1 = parsed.devices()
    # a payload that itself contains a footer-like "~" + id is still delimited correctly
    assert (serial0.payload, serial0.instance_id, serial1.payload, serial1.instance_id) == (
        b"\x01\x02\x03\x7e\x00\x00\x00\x01", 0, b"\x7e", 1)
    assert serial0.section_id != serial1.section_id
    assert parsed.vmdesc["devices"][0]["fields"] == [{"name": "regs", "size": 8}]


def test_every_truncation_is_one_named_error() -> None:
    data, _ = _sample_stream()
    eof = data.rindex(b"\x00\x06")
    for cut in range(len(data)):
        if cut == eof + 1:
            assert read_stream(data[:cut]).vmdesc is None  # QEMU may omit the vmdesc: a complete stream
            continue
        with pytest.raises(StreamError) as exc:
            read_stream(data[:cut])
        msg = str(exc.value)
        assert "\n" not in msg and "field '" in msg, (cut, msg)


@pytest.mark.parametrize("mutate,expect", [
    (lambda d: b"XEVM" + d[4:], "header: field 'magic'"),
    (lambda d: d[:4] + b"\x00\x00\x00\x02" + d[8:], "field 'version'"),
    (lambda d: d.replace(b"\x7e\x00\x00\x00\x00\x02", b"\x7e\x00\x00\x00\x09\x02", 1), "section 'ram' (id 0)"),
    (lambda d: d.replace(b"\x06pc.ram\x00", b"\x06pc.rAm\x00", 1), "field 'ram block id'"),
    (lambda d: d.replace(b"\x00\x00\x00\x00\x00\x00\x10\x28", b"\x00\x00\x00\x00\x09\x00\x10\x28", 1),
     "field 'ram page offset'"),
    (lambda d: d[:-3] + b"}}}", "field 'vmdesc json'"),
])
def test_corruption_names_section_and_field(mutate, expect) -> None:
    data, _ = _sample_stream()
    bad = mutate(data)
    assert bad != data
    with pytest.raises(StreamError, match=expect.replace("(", r"\(").replace(")", r"\)")):
        read_stream(bad)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_random_corruption_never_crashes(data) -> None:
    good, _ = _sample_stream()
    pos = data.draw(st.integers(0, len(good) - 1))
    byte = data.draw(st.integers(0, 255))
    bad = good[:pos] + bytes([byte]) + good[pos + 1:]
    try:
        read_stream(bad)
    except StreamError as exc:
        assert "\n" not in str(exc)


def test_reader_handles_qemu_stream_quickly(qemu_stream: bytes) -> None:
    start = time.monotonic()
    read_stream(qemu_stream)
    assert time.monotonic() - start < 5, "parsing a 32 MiB guest's stream should take well under a second"


@pytest.mark.parametrize(("offset", "count"), [(0, 1), (7 * 4096, 5), (1 << 20, 256)])
def test_zero_run_is_the_records_of_its_zero_pages(offset: int, count: int) -> None:
    """Pre-copy's fast path for idle RAM writes exactly what the page-by-page encoder writes for zero pages."""
    from refvm.migration.ram import encode_ram_pages, encode_zero_run

    pages = [("pc.ram", offset + i * 4096, bytes(4096)) for i in range(count)]
    assert encode_zero_run("pc.ram", offset, count) == encode_ram_pages(pages)


class _Counts:
    normal = duplicate = 0


@pytest.mark.parametrize("most", [256, 3])  # parts of up to 256 pages / runs split across parts of 3
def test_gather_parts_are_the_records_of_the_page_by_page_encoder(most: int) -> None:
    """Pre-copy's gather lists (pages as views of guest RAM, headers packed per run) make exactly the records the
    page-by-page encoder makes: zero pages (also one whose first word is zero but not the rest) and blocks."""
    from refvm.migration.ram_parts import RamParts

    page = TARGET_PAGE_SIZE
    run = bytearray(8 * page)
    run[1 * page] = 0x5A                 # page 1: first byte set
    run[3 * page + page - 1] = 0x01      # page 3: first word zero, last byte set (not a zero page)
    run[4 * page + 8] = 0x02             # page 4: second word set
    run[6 * page:7 * page] = b"\xff" * page
    pages = [("pc.ram", 0x10000 + i * page, bytes(run[i * page:(i + 1) * page])) for i in range(8)]
    out = io.BytesIO()
    w = StreamWriter(out)
    w.ram_start({"pc.ram": 1 << 20})
    start = len(out.getvalue())
    counts = _Counts()
    parts = RamParts(w, "pc.ram", counts, most)
    parts.add_run(0x10000, memoryview(run)[:5 * page])
    parts.add_run(0x10000 + 5 * page, memoryview(run)[5 * page:])
    parts.flush(last=True)
    assert (counts.normal, counts.duplicate) == (4, 4)

    want = io.BytesIO()
    ref = StreamWriter(want)
    ref.ram_start({"pc.ram": 1 << 20})
    chunks = [pages[i:i + most] for i in range(0, 8, most)]
    for chunk in chunks[:-1]:
        ref.ram_part(chunk)
    ref.ram_part(chunks[-1], last=True)
    assert out.getvalue()[start:] == want.getvalue()[start:]
    assert w.bytes_written == len(out.getvalue())


@pytest.mark.parametrize("room", [1 << 20, 4096])  # the whole stream fits the prefaulted buffer / overflows it
def test_stream_read_into_a_prefaulted_buffer_parses_as_bytes_do(room: int) -> None:
    """The destination's read (channel.read_all into pages mapped in advance) parses in place, and a stream
    longer than the buffer is read whole."""
    from refvm.migration.channel import prefaulted, read_all

    out = io.BytesIO()
    w = StreamWriter(out)
    w.header("pc-i440fx-7.2")
    w.ram_start({"pc.ram": 64 * TARGET_PAGE_SIZE})
    w.ram_part([("pc.ram", 3 * TARGET_PAGE_SIZE, b"\x42" * TARGET_PAGE_SIZE)], last=True)
    w.device("serial", 0, 1, b"\x01\x02\x03")
    w.finish()
    raw = out.getvalue()
    a, b = socket.socketpair()
    with a, b:
        a.sendall(raw)
        a.shutdown(socket.SHUT_WR)
        buf = prefaulted(room)
        data = read_all(b.makefile("rb"), 1 << 20, buf)
    assert bytes(data) == raw
    parsed, expected = read_stream(data), read_stream(raw)
    assert parsed.ram.page("pc.ram", 3 * TARGET_PAGE_SIZE) == b"\x42" * TARGET_PAGE_SIZE
    assert [(s.idstr, s.payload) for s in parsed.sections] == [(s.idstr, s.payload) for s in expected.sections]
