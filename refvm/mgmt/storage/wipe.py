"""Wipe algorithms (virStorageVolWipeAlgorithm) and the passes each standard defines (scrub(1)'s tables).

A pass is a byte pattern repeated over the volume, or None for random data. ``REFVM_WIPE_PAUSE_DIR`` is a
test hook: while DIR/enabled exists, after each pass the daemon creates DIR/pass-N and waits until it
is removed, so a test can read every pass's bytes from the file.
"""
from __future__ import annotations

import os
import time

from refvm.block.raw import _fallocate
from refvm.mgmt import errors

R = None  # a random pass
_GUTMANN = [bytes([0x55]), bytes([0xAA]), bytes([0x92, 0x49, 0x24]), bytes([0x49, 0x24, 0x92]),
            bytes([0x24, 0x92, 0x49])] + [bytes([v * 0x11]) for v in range(16)] + [
    bytes([0x92, 0x49, 0x24]), bytes([0x49, 0x24, 0x92]), bytes([0x24, 0x92, 0x49]), bytes([0x6D, 0xB6, 0xDB]),
    bytes([0xB6, 0xDB, 0x6D]), bytes([0xDB, 0x6D, 0xB6])]

#: algorithm number -> (name, passes)
ALGORITHMS: dict[int, tuple[str, list[bytes | None]]] = {
    0: ("zero", [b"\0"]),
    1: ("nnsa", [R, R, b"\0"]),
    2: ("dod", [R, b"\0", b"\xff"]),
    3: ("bsi", [bytes([b]) for b in (0xFF, 0xFE, 0xFD, 0xFB, 0xF7, 0xEF, 0xDF, 0xBF, 0x7F)]),
    4: ("gutmann", [R] * 4 + _GUTMANN + [R] * 4),
    5: ("schneier", [b"\0", b"\xff"] + [R] * 5),
    6: ("pfitzner7", [R] * 7),
    7: ("pfitzner33", [R] * 33),
    8: ("random", [R]),
    9: ("trim", []),
}
CHUNK = 1 << 20


def _pause(index: int) -> None:
    folder = os.environ.get("REFVM_WIPE_PAUSE_DIR")
    if not folder or not os.path.exists(os.path.join(folder, "enabled")):
        return
    mark = os.path.join(folder, f"pass-{index}")
    open(mark, "w").close()
    deadline = time.monotonic() + 30
    while os.path.exists(mark) and time.monotonic() < deadline:
        time.sleep(0.005)


def wipe_file(path: str, length: int, algorithm: int) -> None:
    """Run every pass of ``algorithm`` over the first ``length`` bytes of ``path``, fsync after each."""
    if algorithm not in ALGORITHMS:
        raise errors.VirError(errors.VIR_ERR_INVALID_ARG, f"wiping algorithm {algorithm} not supported",
                              domain=errors.VIR_FROM_STORAGE)
    fd = os.open(path, os.O_WRONLY)
    try:
        if algorithm == 9:  # trim: one pass that discards (punches holes), reads back as zeroes
            _fallocate(fd, 0x02 | 0x01, 0, length)  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
            os.fsync(fd)
            _pause(1)
            return
        for index, pattern in enumerate(ALGORITHMS[algorithm][1], start=1):
            pos = 0
            while pos < length:
                n = min(CHUNK, length - pos)
                if pattern is None:
                    data = os.urandom(n)
                else:
                    data = (pattern * (CHUNK // len(pattern) + 1))[pos % len(pattern):][:n]
                pos += os.pwrite(fd, data, pos)
            os.fsync(fd)
            _pause(index)
    finally:
        os.close(fd)
