"""The corrupted-image corpus: each image gets a clear error naming the file, and is never written to.

Problems in the header are found at open (a read-only ``info`` must refuse); problems in the tables are
found when I/O reaches them (a read and a write must refuse). The image's checksum is compared before and
after. QEMU deviates on purpose for some entries (it opens the image anyway, or marks it corrupt — a
write — when I/O reaches the damage); those are xfail with that reason under --target=qemu.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conformance.block.qcow2.conftest import ImgTool
from conformance.block.qcow2.corpus import CORPUS, build, sha256

#: QEMU 7.2 behaviour on the corpus (observed): why it does not meet the clause.
QEMU_DEVIATIONS = {
    "l1_past_eof": "qemu reads the missing L1 table as zeroes and extends the file on write",
    "backing_loop": "qemu-img info follows no loop check (it opens only one level); qemu-io fails on a lock",
    "l2_entry_past_eof": "qemu reads and writes past the end of the file without an error",
    "l1_entry_misaligned": "qemu sets the corrupt bit in the image (a write) when it meets the entry",
    "refcount_overflow": "qemu allocates elsewhere and writes; the image is modified",
}


@pytest.mark.parametrize("entry", CORPUS, ids=[e.name for e in CORPUS])
def test_corrupt_image_refused_and_untouched(
    tool: ImgTool,
    tmp_path: Path,
    entry,
    request: pytest.FixtureRequest,  # noqa: ANN001
) -> None:
    request.node.add_marker(pytest.mark.clause("qcow2", entry.clause))
    if tool.kind == "qemu" and entry.name in QEMU_DEVIATIONS:
        request.node.add_marker(pytest.mark.xfail(reason=QEMU_DEVIATIONS[entry.name], strict=True))
    path = build(entry.name, tmp_path)
    before = sha256(path)
    if entry.at_open:
        results = [tool.run_img("info", "-f", "qcow2", str(path), check=False)]
    else:
        results = [
            tool.run_io("-f", "qcow2", "-c", "read 0 64k", str(path), check=False),
            tool.run_io("-f", "qcow2", "-c", "write -P 0x66 0 64k", "-c", "write -P 0x67 1M 64k", str(path),
                        check=False),
        ]  # fmt: skip
    assert sha256(path) == before, "the tool wrote to a corrupt image"
    for proc in results:
        if entry.name == "refcount_overflow" and "read" in proc.args[-2]:
            continue  # reading is fine: the damage is in the allocator's way, not in the data
        assert proc.returncode != 0, f"accepted a corrupt image:\n{proc.stdout}"
        message = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.stdout
        assert path.name in message, message
        if tool.kind == "refvm":
            assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
            for word in entry.keywords:
                assert word in message, message
