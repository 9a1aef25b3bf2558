"""Build and load virtio-blk's compiled fast path (``blk_fast.c``) with cffi in API (out-of-line) mode.

The extension is compiled at first use (the first VirtioBlk made in a process) into the user's cache
(``$XDG_CACHE_HOME/refvm/ffi``, where the KVM cdef cache lives too), named by a hash of the C source, the
cdef, cffi's version and the interpreter's ABI tag, so an edited source or another Python never loads a
stale build. It is compiled in a private temporary directory and moved into place with one rename, so
processes starting together never load a half-written file. Without a working compiler (or Python headers)
:func:`load` returns None after one debug line and
virtio-blk runs on the Python model, which is the reference anyway.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.machinery
import importlib.util
import io
import logging
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

__all__ = ["CDEF", "load", "load_error"]

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("blk_fast.c")

CDEF = """
struct bf_region { uint64_t gpa; uint64_t size; uint8_t *hva; };
struct bf_dev {
    int fd;
    uint32_t nregions;
    struct bf_region *regions;
    uint64_t capacity;
    uint32_t blk_size;
    uint64_t rd_bytes, wr_bytes, rd_ops, wr_ops;
    uint64_t served;
};
struct bf_queue { uint8_t *desc, *avail, *used; uint32_t size; uint32_t limit; };
uint64_t bf_serve(struct bf_dev *dev, const struct bf_queue *q, uint32_t last, uint32_t shadow, uint32_t used_idx,
                  int32_t avail_event, uint32_t flags, uint32_t budget, uint32_t signalled, uint32_t pushed);
"""

_lock = threading.Lock()
_loaded: tuple[Any, Any] | None = None
_error: str | None = None


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "refvm" / "ffi"


def _module_name(source: str) -> str:
    import _cffi_backend

    key = f"{CDEF}\0{source}\0{_cffi_backend.__version__}\0{sys.implementation.cache_tag}\0{sys.platform}"
    return "_refvm_blk_fast_" + hashlib.sha256(key.encode()).hexdigest()[:16]


def _import(name: str, path: Path) -> tuple[Any, Any]:
    loader = importlib.machinery.ExtensionFileLoader(name, str(path))
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module.ffi, module.lib


def _build(name: str, source: str, dest: Path) -> None:
    """Compile the extension into a temporary directory next to ``dest`` and rename it into place."""
    import cffi

    builder = cffi.FFI()
    builder.cdef(CDEF)
    builder.set_source(name, source, extra_compile_args=["-O2", "-std=gnu11", "-Wall"])
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f"{name}.", dir=dest.parent)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # cffi and setuptools announce their steps on stdout
            built = builder.compile(tmpdir=tmp, verbose=False)
        os.replace(built, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load() -> tuple[Any, Any] | None:
    """``(ffi, lib)`` of the compiled fast path, building it on first use; None if it cannot be built."""
    global _loaded, _error
    if _loaded is not None or _error is not None:
        return _loaded
    with _lock:
        if _loaded is not None or _error is not None:
            return _loaded
        try:
            source = SOURCE.read_text()
            name = _module_name(source)
            path = _cache_dir() / f"{name}{importlib.machinery.EXTENSION_SUFFIXES[0]}"
            if not path.exists():
                _build(name, source, path)
            _loaded = _import(name, path)
        except Exception as exc:  # noqa: BLE001 - no compiler, no headers, read-only cache: run on Python
            _error = f"{type(exc).__name__}: {exc}".splitlines()[0]
            log.debug("virtio-blk fast path unavailable, using the Python model: %s", _error)
        return _loaded


def load_error() -> str | None:
    """Why :func:`load` returned None (None if it has not failed)."""
    return _error
