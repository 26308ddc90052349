"""The job server's messages (:mod:`geopeft.jobserver`): JSON objects over a Unix socket, each
preceded by its length, with file descriptors passed alongside (``SCM_RIGHTS``)."""

from __future__ import annotations

import array
import json
import os
import socket
import struct
from collections.abc import Sequence

_HEADER = struct.Struct("!I")
#: The largest message sent or accepted, in bytes. A request carries a job's command line and
#: environment, which Linux bounds by ARG_MAX (2 MiB by default) before JSON escapes them; a
#: larger declared length is refused after its 4-byte header, before its body is read.
MAX_MESSAGE_BYTES = 16 * 2**20
_CHUNK = 2**16  # read at most this much at once: memory grows with what arrives, no faster


def _check_size(size: int) -> None:
    if size > MAX_MESSAGE_BYTES:
        raise ValueError(f"a message of {size} bytes is over the limit of {MAX_MESSAGE_BYTES} bytes "
                         "(geopeft.wire.MAX_MESSAGE_BYTES)")


def send(sock: socket.socket, obj: dict, fds: Sequence[int] = ()) -> None:
    """Send ``obj`` as one message on ``sock``, passing the file descriptors ``fds`` with it.

    Raises:
        ValueError: the message is over :data:`MAX_MESSAGE_BYTES` (nothing is sent).
    """
    data = json.dumps(obj).encode()
    _check_size(len(data))
    payload = _HEADER.pack(len(data)) + data
    if fds:
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
        sent = sock.sendmsg([payload], anc)
        payload = payload[sent:]
    if payload:
        sock.sendall(payload)


class Reader:
    """One message, read as its bytes arrive (a non-blocking socket's too), its length checked
    against :data:`MAX_MESSAGE_BYTES` before its body is read; the file descriptors passed with
    it collect in ``fds``."""

    def __init__(self) -> None:
        self.fds: list[int] = []
        self._buf = bytearray()
        self._size: int | None = None

    def feed(self, sock: socket.socket) -> dict | None:
        """Read what has arrived: the message once it is whole, else None.

        Raises:
            ConnectionError: the connection closed before the whole message came.
            ValueError: its declared length is over the limit, or it is not a JSON object.
        """
        want = (_HEADER.size if self._size is None else self._size) - len(self._buf)
        try:
            chunk, anc, _, _ = sock.recvmsg(min(want, _CHUNK), socket.CMSG_SPACE(16 * 4))
        except BlockingIOError:
            return None
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                self.fds.extend(array.array("i", data[: len(data) - len(data) % 4]))
        if not chunk:
            raise ConnectionError("connection closed")
        self._buf += chunk
        if self._size is None and len(self._buf) == _HEADER.size:
            (self._size,) = _HEADER.unpack(self._buf)
            _check_size(self._size)
            self._buf = bytearray()
        if self._size is None or len(self._buf) < self._size:
            return None
        msg = json.loads(self._buf)
        if not isinstance(msg, dict):
            raise ValueError(f"a message is a JSON object, not {type(msg).__name__}")
        return msg


def recv(sock: socket.socket, fds: list[int] | None = None) -> dict:
    """Receive one message from ``sock`` (blocking); the file descriptors passed with it are
    appended to ``fds`` (None: none are expected, any passed are closed).

    Raises:
        ConnectionError: the connection closed before the whole message came.
        ValueError: its declared length is over :data:`MAX_MESSAGE_BYTES`, or it is not JSON.
    """
    reader = Reader()
    try:
        while (msg := reader.feed(sock)) is None:
            pass
    finally:
        if fds is not None:
            fds.extend(reader.fds)
        else:
            for fd in reader.fds:
                os.close(fd)
    return msg
