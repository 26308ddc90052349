"""The job server's messages (:mod:`geopeft.jobserver`): JSON objects over a Unix socket, each
preceded by its length, with file descriptors passed alongside (``SCM_RIGHTS``)."""

from __future__ import annotations

import array
import json
import socket
import struct
from collections.abc import Sequence

_HEADER = struct.Struct("!I")


def send(sock: socket.socket, obj: dict, fds: Sequence[int] = ()) -> None:
    """Send ``obj`` as one message on ``sock``, passing the file descriptors ``fds`` with it."""
    data = json.dumps(obj).encode()
    payload = _HEADER.pack(len(data)) + data
    if fds:
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
        sent = sock.sendmsg([payload], anc)
        payload = payload[sent:]
    if payload:
        sock.sendall(payload)


def _recv_exact(sock: socket.socket, n: int, fds: list[int] | None = None) -> bytes:
    buf = b""
    while len(buf) < n:
        if fds is not None:
            chunk, anc, _, _ = sock.recvmsg(n - len(buf), socket.CMSG_SPACE(16 * 4))
            for level, kind, data in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.extend(array.array("i", data[: len(data) - len(data) % 4]))
        else:
            chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    return buf


def recv(sock: socket.socket, fds: list[int] | None = None) -> dict:
    """Receive one message from ``sock``; the file descriptors passed with it are appended to
    ``fds`` (None: none are expected).

    Raises:
        ConnectionError: the connection closed before the whole message came.
    """
    (size,) = _HEADER.unpack(_recv_exact(sock, _HEADER.size, fds))
    return json.loads(_recv_exact(sock, size, fds))

