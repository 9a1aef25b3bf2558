"""The corrupted-image corpus through refvm's driver in-process: a BlockError naming the file, no write."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conformance.block.qcow2.corpus import CORPUS, build, sha256
from refvm.block.driver import BlockError, open_image
from tests.conftest import require


@pytest.mark.parametrize("entry", CORPUS, ids=[e.name for e in CORPUS])
def test_corpus_entry(tmp_path: Path, entry) -> None:  # noqa: ANN001
    require(shutil.which("qemu-img") is not None and shutil.which("qemu-io") is not None, "qemu-utils missing")
    path = build(entry.name, tmp_path)
    before = sha256(path)
    with pytest.raises(BlockError) as exc:
        if entry.at_open:
            open_image(str(path), "qcow2", readonly=True)
        else:
            with open_image(str(path), "qcow2") as img:
                with pytest.raises(BlockError):
                    img.read(0, 65536)
                img.write(0, b"\x66" * 65536)
    assert sha256(path) == before
    assert str(path) in str(exc.value)
    for word in entry.keywords:
        assert word in str(exc.value)
