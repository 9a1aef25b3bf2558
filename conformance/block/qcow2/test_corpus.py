"""The corrupted-image corpus: each image gets a clear error naming the file, and is never written to.

Problems in the header are found at open (a read-only ``info`` must refuse); problems in the tables are
found when I/O reaches them (a read and a write must refuse). The image's checksum is compared before and
after. QEMU deviates on purpose for some entries (it opens the image anyway, or marks it corrupt — a
write — when I/O reaches the damage); qcow2.txt requires neither, so those are known behaviours of kind
policy or implementation-defined (conformance/verdicts.py), not deviations.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conformance.block.qcow2.conftest import ImgTool
from conformance.block.qcow2.corpus import CORPUS, build, sha256
from conformance.targets import Target
from conformance.verdicts import Known, expect, known

#: QEMU 7.2's behaviour on corpus entries where it does something else than refvm, with what the expectation
#: rests on: none of them is a deviation (qcow2.txt does not say "must refuse" for these).
POLICY = ("the suite's robustness rule (conformance/clauses/qcow2.yaml): a damaged image is refused with an error "
          "naming the file, and never written to. qcow2.txt defines the structures but has no 'must refuse'.")
QEMU_BEHAVIOURS = {
    "l1_past_eof": Known(
        target="qemu", kind="policy", behaviour="qemu-img-l1-past-eof-zero-filled", sentence=POLICY,
        reason="qemu reads the missing L1 table as zeroes and extends the file on write"),
    "l2_entry_past_eof": Known(
        target="qemu", kind="policy", behaviour="qemu-io-cluster-past-eof-zero-filled", sentence=POLICY,
        reason="qemu reads and writes past the end of the file without an error"),
    "l1_entry_misaligned": Known(
        target="qemu", kind="implementation-defined", behaviour="qemu-marks-misaligned-l1-corrupt",
        sentence="qcow2.txt incompatible feature bit 1: Corrupt bit. If this bit is set then any data structure may "
                 "be corrupt and the image must not be written to (unless for regaining consistency). (The spec's "
                 "own mechanism for damage found at run time: setting it is legal, as is refusing without a write.)",
        reason="qemu sets the corrupt bit in the header (a write) when I/O meets the misaligned L2 offset"),
}  # fmt: skip


@pytest.mark.parametrize("entry", CORPUS, ids=[e.name for e in CORPUS])
def test_corrupt_image_refused_and_untouched(
    tool: ImgTool,
    target: Target,
    tmp_path: Path,
    entry,
    request: pytest.FixtureRequest,  # noqa: ANN001
) -> None:
    request.node.add_marker(pytest.mark.clause("qcow2", entry.clause))
    if entry.name in QEMU_BEHAVIOURS:
        known(request, target, QEMU_BEHAVIOURS[entry.name])
    path = build(entry.name, tmp_path)
    before = sha256(path)
    if entry.at_open:  # --backing-chain: without it qemu-img opens the top image only and sees no loop
        results = [tool.run_img("info", "--backing-chain", "-f", "qcow2", str(path), check=False)]
    else:
        results = [
            tool.run_io("-f", "qcow2", "-c", "read 0 64k", str(path), check=False),
            tool.run_io("-f", "qcow2", "-c", "write -P 0x66 0 64k", "-c", "write -P 0x67 1M 64k", str(path),
                        check=False),
        ]  # fmt: skip
    expect(sha256(path) == before, "the tool wrote to a corrupt image")
    for proc in results:
        expect(proc.returncode != 0, f"accepted a corrupt image:\n{proc.stdout}")
        message = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.stdout
        expect(path.name in message, f"the error does not name {path.name}: {message}")
        if tool.kind == "refvm":
            assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
            for word in entry.keywords:
                assert word in message, message
