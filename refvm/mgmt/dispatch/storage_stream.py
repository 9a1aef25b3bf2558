"""Volume upload and download as libvirt streams, plain or sparse (STREAM_HOLE packets carry holes).

Upload: the client's STREAM CONTINUE packets are written at the volume offset in order; a STREAM_HOLE
(remote_stream_hole: hyper length, uint flags) punches a hole of that length; STREAM OK ends it (answered OK).
A client abort or a write error leaves the bytes written so far and answers with an error naming the volume.
Download: data goes out in 256 KiB packets, holes (SEEK_HOLE/SEEK_DATA) as STREAM_HOLE when sparse was asked;
an empty CONTINUE is the end, then the client's OK is answered with OK.
"""
from __future__ import annotations

import os
import struct
import threading
import time

from refvm.block.raw import _fallocate
from refvm.mgmt import errors
from refvm.mgmt.rpc import message
from refvm.mgmt.rpc.message import Header
from refvm.mgmt.rpc.protocol import MsgType, Status

CHUNK = 256 * 1024 - 64
PUNCH = 0x02 | 0x01


class _Stream:
    def __init__(self, session, hdr: Header, path: str, offset: int, length: int, done) -> None:
        self.session, self.hdr, self.path = session, hdr, path
        self.offset, self.length, self.done = offset, length, done
        self.closed = False

    def _packet(self, status: int, data: bytes = b"", type_: int = MsgType.STREAM) -> bytes:
        return message.encode(self.hdr.reply(status, type_), data)

    def _error(self, detail: str) -> None:
        err = errors.VirError(errors.VIR_ERR_OPERATION_FAILED, detail, domain=errors.VIR_FROM_STORAGE)
        self.session.send_error(self.hdr, err, MsgType.STREAM)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with self.session.lock:
            self.session.streams.pop(self.hdr.serial, None)
        self.done()


class Upload(_Stream):
    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.fd = os.open(self.path, os.O_WRONLY)
        self.pos = self.offset
        self.failed: str | None = None

    def __call__(self, hdr: Header, payload: bytes) -> None:
        if self.closed:
            return
        try:
            if hdr.type == MsgType.STREAM_HOLE and hdr.status == Status.CONTINUE:
                (n,) = struct.unpack_from(">q", payload)
                end = self.pos + n
                size = os.fstat(self.fd).st_size
                if self.pos < size:
                    _fallocate(self.fd, PUNCH, self.pos, min(end, size) - self.pos)
                if end > size:
                    os.ftruncate(self.fd, end)
                self.pos = end
                return
            if hdr.status == Status.CONTINUE:
                if self.length and self.pos + len(payload) > self.offset + self.length:
                    raise OSError(0, "data beyond the requested length")
                view = memoryview(payload)
                while view:
                    n = os.pwrite(self.fd, view, self.pos)
                    self.pos += n
                    view = view[n:]
                return
        except (OSError, struct.error) as exc:
            self.failed = f"upload to '{self.path}' failed at offset {self.pos} ({exc.strerror or exc}); bytes " \
                          f"before it are written, the rest of the volume is unchanged"
            self._error(self.failed)
            self.close()
            return
        if hdr.status == Status.OK:
            os.fsync(self.fd)
            self.session.send(self._packet(Status.OK))
        else:
            self._error(f"upload to '{self.path}' aborted by the client at offset {self.pos}; bytes before it "
                        "are written, the rest of the volume is unchanged")
        self.close()

    def close(self) -> None:
        if not self.closed:
            os.close(self.fd)
        super().close()


class Download(_Stream):
    def __init__(self, *args, sparse: bool = False) -> None:
        super().__init__(*args)
        self.sparse = sparse
        self.finished = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._pump, name="refvmd-download", daemon=True).start()

    def _wait_queue(self) -> None:
        q = getattr(self.session, "_out", None)
        while q is not None and q.qsize() > 32 and not self.closed:
            time.sleep(0.001)

    def _pump(self) -> None:
        fd = os.open(self.path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            end = min(size, self.offset + self.length) if self.length else size
            pos = self.offset
            while pos < end and not self.closed:
                if self.sparse:
                    try:
                        data_at = os.lseek(fd, pos, os.SEEK_DATA)
                    except OSError:
                        data_at = end
                    if data_at > pos:
                        hole = min(data_at, end) - pos
                        self.session.send(self._packet(Status.CONTINUE, struct.pack(">qI", hole, 0),
                                                       MsgType.STREAM_HOLE))
                        pos += hole
                        continue
                    stop = min(os.lseek(fd, pos, os.SEEK_HOLE), end)
                else:
                    stop = end
                while pos < stop and not self.closed:
                    data = os.pread(fd, min(CHUNK, stop - pos), pos)
                    if not data:
                        pos = end
                        break
                    self._wait_queue()
                    self.session.send(self._packet(Status.CONTINUE, data))
                    pos += len(data)
            if not self.closed:
                self.session.send(self._packet(Status.CONTINUE))
        except OSError as exc:
            self._error(f"download of '{self.path}' failed: {exc.strerror or exc}")
            self.close()
        finally:
            os.close(fd)

    def __call__(self, hdr: Header, payload: bytes) -> None:
        if hdr.status == Status.OK:
            self.session.send(self._packet(Status.OK))
        self.close()
