"""Fuzz: the qtest line parser and QMP's JSON input.

qtest: any line (known commands with random, missing, huge, negative or non-numeric operands, and raw
junk) gets exactly one reply line: ``OK ...``, ``ERR ...`` or a protocol ``FAIL`` (``Unknown command``,
``Unknown device``). A ``FAIL <Exception>: ...`` reply is the server's catch-all for a bug in refvm: a finding.
QMP: any byte stream is cut into messages without error escaping, and every message -- junk or a JSON
object with random keys and values -- is answered with a ``return`` or an ``error`` whose text is QEMU's,
never a Python exception's name (the catch-all for a handler bug).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from fuzzing import FUZZ, example
from hypothesis import given
from hypothesis import strategies as st

from refvm.bus import MmioBus, PioBus
from refvm.clock import VirtualClock
from refvm.memory import GuestMemory
from refvm.monitor.qmp import QmpServer, _Session
from refvm.monitor.qtest import QtestServer

QTEST_WORDS = ["outb", "outw", "outl", "inb", "inw", "inl", "writeb", "writew", "writel", "writeq", "readb",
               "readw", "readl", "readq", "read", "write", "b64read", "b64write", "memset", "endianness",
               "irq_intercept_in", "irq_intercept_out", "clock_step", "clock_set"]
operand = st.one_of(
    st.integers(0, 0x2000).map(hex),
    st.sampled_from(["0", "-1", "0x", "0xffffffffffffffff", "0x10000000000000000", "99999999999999999999", "z",
                     "0x1000", "4096", "AAAA", "=", "0xfffff000", "/machine/i440fx", "1e3"]),
    st.integers(-(1 << 70), 1 << 70).map(str),
    st.text(max_size=12),
)
qtest_line = st.one_of(
    st.tuples(st.sampled_from(QTEST_WORDS), st.lists(operand, max_size=4)).map(lambda t: " ".join([t[0], *t[1]])),
    st.text(max_size=60),
)
_BUG = re.compile(r"^FAIL [A-Za-z_]\w*: ")  # the catch-all's "FAIL TypeError: ..." (not "FAIL Unknown device")


@pytest.fixture(scope="module")
def qtest(tmp_path_factory: pytest.TempPathFactory) -> QtestServer:
    mem = GuestMemory()
    mem.add_ram(0, 1 << 20)
    path = tmp_path_factory.mktemp("qt") / "qtest.sock"
    return QtestServer(f"unix:{path},server=on", memory=mem, pio=PioBus(), mmio=MmioBus(), clock=VirtualClock())


def test_fuzz_qtest_lines(qtest: QtestServer) -> None:
    @FUZZ
    @given(line=qtest_line)
    def target(line: str) -> None:
        with example():
            reply = qtest.execute(line)
            assert "\n" not in reply and reply.split(" ", 1)[0] in ("OK", "ERR", "FAIL"), reply
            assert not _BUG.match(reply), f"{line!r} -> {reply!r}"

    target()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
COMMANDS = ["qmp_capabilities", "query-commands", "query-version", "query-status", "stop", "cont", "nope", ""]
request = st.fixed_dictionaries(
    {"execute": st.sampled_from(COMMANDS) | st.text(max_size=8) | json_values},
    optional={"arguments": json_values | st.dictionaries(st.sampled_from(["enable", "x", "id"]), json_values),
              "id": json_values, "exec-oob": json_values, "junk": json_values},
)
message = st.one_of(request.map(lambda r: json.dumps(r).encode()), st.binary(max_size=80),
                    json_values.map(lambda v: json.dumps(v).encode()))
_PY_ERROR = re.compile(r"^[A-Z]\w*(Error|Exception)\b: ")


@pytest.fixture(scope="module")
def qmp(tmp_path_factory: pytest.TempPathFactory) -> QmpServer:
    path: Path = tmp_path_factory.mktemp("qmp") / "qmp.sock"
    return QmpServer(str(path))  # never started: messages go straight to its dispatcher


def test_fuzz_qmp_json_input(qmp: QmpServer) -> None:
    @FUZZ
    @given(messages=st.lists(message, min_size=1, max_size=5), negotiate=st.booleans())
    def target(messages: list[bytes], negotiate: bool) -> None:
        with example():
            session = _Session()
            if negotiate:
                assert "return" in qmp._handle(session, b'{"execute": "qmp_capabilities"}')
            stream = b"".join(messages)
            for text, error in session.streamer.feed(stream) + session.streamer.feed(b"\n"):
                if text is None:
                    assert isinstance(error, str)
                    continue
                reply = qmp._handle(session, text)
                assert ("return" in reply) != ("error" in reply), reply
                if "error" in reply:
                    desc = reply["error"]["desc"]
                    assert isinstance(desc, str) and not _PY_ERROR.match(desc), f"{text!r} -> {desc!r}"

    target()
