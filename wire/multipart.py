"""Moving one message's frames through a pyzmq socket, as cheaply as pyzmq allows.

pyzmq's flags are IntFlag members: `SNDMORE | NOBLOCK` runs the enum machinery in Python on
every message, and send_multipart / recv_multipart add a type check and a getsockopt per part.
On the servers' per-request path that was ~30 Python lines an interrupt; these are two
libzmq calls per part.
"""

from __future__ import annotations

import zmq

NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)


def receive(sock: zmq.Socket, flags: int = 0) -> list[bytes]:
    """One multipart message; each frame's own `more` flag says whether another follows."""
    frame = sock.recv(flags, copy=False)
    parts = [frame.bytes]
    while frame.more:
        frame = sock.recv(flags, copy=False)
        parts.append(frame.bytes)
    return parts


def send(sock: zmq.Socket, parts: list[bytes], flags: int = 0) -> None:
    """One multipart message; with NOBLOCK, all of it or (zmq.Again) none of it, since
    ZeroMQ takes the rest of a message once it took the first part."""
    for part in parts[:-1]:
        sock.send(part, flags | _SNDMORE)
    sock.send(parts[-1], flags)
