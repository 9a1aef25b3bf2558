"""One ``-drive``: the opened image, its cache mode, its live write-cache flag and its throttling.

:func:`open_drive` does for one ``-drive`` what QEMU's ``drive_new``/``blockdev_init`` do for the
formats refvm has (raw, qcow2): parse the cache mode, ``read-only`` and the ``throttling.*`` limits
(all validated *before* the image is opened, as QEMU does, so a bad limit never touches the file),
open the image -- with O_DIRECT when the cache mode says ``direct`` -- and put the drive in its
throttle group. Errors are :class:`ValueError` carrying QEMU's one-line text; the caller prefixes
``-drive TEXT: `` as QEMU's error reporting does.

The resulting :class:`Drive` *is* the block backend device models use (it satisfies
:class:`refvm.block.BlockBackend`), so a device cannot bypass the cache policy by accident.

Known gap: qcow2 under ``cache=none``/``directsync`` is opened without O_DIRECT (the qcow2 host file
does unaligned metadata I/O; QEMU does open it O_DIRECT). :attr:`Drive.direct_effective` says what the
image file really got, and the conformance open-flag check is for raw images.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import random
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from refvm.block.cache import CacheMode, CachePolicyBackend, parse_cache_options
from refvm.block.driver import BlockDriver, BlockError, open_image
from refvm.block.throttle_config import ThrottleConfig
from refvm.block.throttle_group import Clock, ThrottleGroupMember, ThrottleGroups

__all__ = ["Drive", "open_drive", "SUPPORTED_FORMATS"]

SUPPORTED_FORMATS = ("raw", "qcow2")

class NodeNames:
    """QEMU's anonymous node names, ``#block`` + a counter + two random digits (its id_generate), one sequence
    per machine (QEMU has one per process, which is one machine; refvm may hold a migration's source and
    destination in one process). Each image takes two counter values (format and protocol node), so the
    numbers look like QEMU's."""

    def __init__(self) -> None:
        self._counter = itertools.count(1, 2)
        self._lock = threading.Lock()

    def generate(self, images: int) -> str:
        """The name of a drive whose chain has ``images`` images (the image plus its backing files)."""
        with self._lock:
            n = next(self._counter)
            for _ in range(images - 1):
                next(self._counter)
        return f"#block{n}{random.randrange(100):02d}"


_BOOL = {"on": True, "yes": True, "true": True, "off": False, "no": False, "false": False}


def _chain_depth(driver: BlockDriver) -> int:
    depth, cur = 0, getattr(driver, "backing", None)
    while cur is not None:
        depth += 1
        cur = getattr(cur, "backing", None)
    return depth


def host_fd(driver: BlockDriver) -> int | None:
    """The host file descriptor of a driver's top image (for fdinfo checks), if it has one."""
    raw = getattr(driver, "_f", None)  # RawDriver -> RawFile
    if raw is not None:
        return int(raw.fd)
    f = getattr(driver, "f", None)  # Qcow2Image -> HostFile
    if f is not None and getattr(f, "fd", -1) >= 0:
        return int(f.fd)
    return None


class Drive:
    """An open ``-drive``: a :class:`refvm.block.BlockBackend` with QEMU's cache and throttle semantics.

    ``writeback`` is the live guest-visible write cache (QEMU's ``blk_enable_write_cache``): it starts
    from the cache mode and the guest may toggle it (virtio-blk CONFIG_WCE); ``query-block`` reports it.
    ``original_writeback`` is what a device reset restores, as QEMU's virtio-blk reset does.
    """

    def __init__(
        self,
        drive_id: str,
        props: Mapping[str, str],
        driver: BlockDriver,
        mode: CacheMode,
        throttle: ThrottleGroupMember,
        throttle_groups: ThrottleGroups | None,
        node_name: str,
    ) -> None:
        self.id = drive_id
        self.device = drive_id  # QMP 'device' (the BlockBackend name)
        self.props = dict(props)
        self.driver = driver
        self.mode = mode
        self.cache_name = props.get("cache", "writeback")
        self.policy = CachePolicyBackend(driver, mode)
        self.readonly = bool(driver.readonly)
        self.writeback = mode.writeback
        self.original_writeback = mode.writeback
        self.direct = mode.direct
        self.no_flush = mode.no_flush
        self.throttle = throttle
        self.throttle_groups = throttle_groups
        self.node_name = node_name
        self.file = props.get("file", "")
        self.format = driver.format_name
        self.detect_zeroes = props.get("detect-zeroes", "off")
        self.backing_file_depth = _chain_depth(driver)
        self.closed = False
        self.preadv_into = self.policy.preadv_into  # type: ignore[method-assign]  # per request: no extra layer
        self.pwritev_from = self.policy.pwritev_from  # type: ignore[method-assign]

    # --- BlockBackend ---------------------------------------------------------------------------
    def length(self) -> int:
        return self.policy.length()

    def pread(self, offset: int, length: int) -> bytes:
        return self.policy.pread(offset, length)

    def pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        self.policy.pwrite(offset, data)

    def preadv_into(self, offset: int, bufs: Sequence[memoryview]) -> None:
        self.policy.preadv_into(offset, bufs)

    def pwritev_from(self, offset: int, bufs: Sequence[memoryview]) -> None:
        self.policy.pwritev_from(offset, bufs)

    def vectored_file(self) -> Any:
        """The raw file under this drive (see :meth:`refvm.block.raw.RawFile.vectored_file`), or None."""
        return self.policy.vectored_file()

    def flush(self) -> None:
        self.policy.flush()

    def discard(self, offset: int, length: int) -> None:
        self.policy.discard(offset, length)

    def write_zeroes(self, offset: int, length: int, *, may_unmap: bool = False) -> None:
        self.policy.write_zeroes(offset, length, may_unmap=may_unmap)

    # --- state ----------------------------------------------------------------------------------
    def set_write_cache(self, on: bool) -> None:
        """The guest (or a reset) switched the volatile write cache: writeback vs write-through."""
        self.writeback = bool(on)

    @property
    def fd(self) -> int | None:
        """The image file's descriptor (its open flags are what QEMU's fdinfo comparisons look at)."""
        return host_fd(self.driver)

    @property
    def direct_effective(self) -> bool:
        """Whether the image file really is open with O_DIRECT (False for qcow2: see the module doc)."""
        fd = self.fd
        return fd is not None and bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)

    def image_info(self) -> dict[str, Any]:
        return self.driver.info()

    def resize(self, size: int) -> None:
        """QMP ``block_resize``: grow or shrink the image to ``size`` bytes (QEMU 7.2's ``blk_truncate``).

        Raises ValueError with QEMU's text: a read-only image ("Image is read-only"), a format whose
        driver cannot truncate ("Image format driver does not support resize") and qcow2 sizes that
        are not a multiple of 512 (``qcow2_co_truncate``); raw files take any size, as file-posix does.
        """
        if self.readonly:
            raise ValueError("Image is read-only")
        truncate = getattr(self.driver, "truncate", None)
        if truncate is None:
            raise ValueError("Image format driver does not support resize")
        if self.format == "qcow2" and size % 512:
            raise ValueError("The new size must be a multiple of 512")
        try:
            truncate(size)
        except BlockError as exc:
            raise ValueError(exc.problem) from None
        except OSError as exc:
            raise ValueError(f"Failed to resize the image: {exc.strerror or exc}") from None

    def close(self) -> None:
        """Leave the throttle group (queued requests are released first) and close the image."""
        if self.closed:
            return
        self.closed = True
        if self.throttle_groups is not None and self.throttle.group is not None:
            self.throttle_groups.disable(self.throttle)
        self.policy.close()

    def __repr__(self) -> str:
        return f"<Drive {self.id!r} {self.format} {self.file!r} cache={self.cache_name} wce={int(self.writeback)}>"


def _open_error(path: str, exc: BlockError) -> ValueError:
    """QEMU's spelling of open failures: ``Could not open 'PATH': strerror``."""
    problem = exc.problem
    if problem.startswith("Could not open: "):
        return ValueError(f"Could not open '{path}': {problem[len('Could not open: '):]}")
    if problem.startswith("Unknown driver"):
        return ValueError(problem.split(" (", 1)[0])
    return ValueError(f"{path}: {problem}")


def open_drive(
    drive_id: str,
    props: Mapping[str, str],
    *,
    clock: Clock,
    throttle_groups: ThrottleGroups | None = None,
    node_names: NodeNames | None = None,
) -> Drive:
    """Open one ``-drive`` (``props`` as given: ``file``, ``format``, ``cache``, ``read-only``, ...).

    ``throttle_groups`` is the machine's group registry (one per machine, on ``clock``); when None a
    private one is made on ``clock``. ``node_names`` is the machine's node-name sequence (None: a fresh one).
    Raises :class:`ValueError` with QEMU's message.
    """
    mode = parse_cache_options(props)
    ro_key = "readonly" if "readonly" in props else "read-only"
    ro_text = props.get(ro_key, "off")
    if ro_text not in _BOOL:
        raise ValueError("Parameter 'read-only' expects 'on' or 'off'")
    readonly = _BOOL[ro_text]
    dz = props.get("detect-zeroes", "off")
    if dz not in ("off", "on", "unmap"):
        raise ValueError(f"invalid parameter value: {dz}")
    config = ThrottleConfig.from_drive_options(props)  # validated before the image is touched
    fmt = props.get("format")
    if fmt is not None and fmt not in SUPPORTED_FORMATS:
        raise ValueError(f"Unknown driver '{fmt}'")
    path = props.get("file")
    if not path:
        raise ValueError(f"drive '{drive_id}' has no file= (empty drives are not supported by refvm)")
    if not os.path.exists(path):
        raise ValueError(f"Could not open '{path}': No such file or directory")
    if fmt == "qcow2":
        try:
            with open(path, "rb") as f:
                if f.read(4) != b"QFI\xfb":
                    raise ValueError("Image is not in qcow2 format")
        except OSError as exc:
            raise ValueError(f"Could not open '{path}': {exc.strerror}") from None
    try:
        driver = open_image(path, fmt, readonly, direct=mode.direct)
    except BlockError as exc:
        raise _open_error(path, exc) from None
    groups = throttle_groups if throttle_groups is not None else ThrottleGroups(clock)
    member = ThrottleGroupMember(drive_id)
    node_name = (node_names or NodeNames()).generate(1 + _chain_depth(driver))
    drive = Drive(drive_id, props, driver, mode, member, groups, node_name)
    try:
        groups.attach_drive(member, config, drive_id)
    except Exception:
        drive.close()
        raise
    return drive
