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
_POLLIN = int(zmq.POLLIN)
_poll = zmq.zmq_poll  # libzmq's own: Socket.get(EVENTS) builds an enum for the option and one for the answer
_USER_ID = b"User-Id"  # bytes: Frame.get encodes a str on every call


def receive(sock: zmq.Socket, flags: int = 0) -> list[bytes]:
    """One multipart message; each frame's own `more` flag says whether another follows."""
    frame = sock.recv(flags, copy=False)
    parts = [frame.bytes]
    while frame.more:
        frame = sock.recv(flags, copy=False)
        parts.append(frame.bytes)
    return parts


def readable(sock: zmq.Socket) -> bool:
    """Whether a message is queued. A drain loop asks this after each message instead of
    trying one more NOBLOCK receive: that ends every batch in a zmq.Again, which pyzmq builds
    in Python (two constructors, two imports), about three times what this costs."""
    return bool(_poll([(sock, _POLLIN)], 0))


def send(sock: zmq.Socket, parts: list[bytes], flags: int = 0) -> None:
    """One multipart message; with NOBLOCK, all of it or (zmq.Again) none of it, since
    ZeroMQ takes the rest of a message once it took the first part."""
    for part in parts[:-1]:
        sock.send(part, flags | _SNDMORE)
    sock.send(parts[-1], flags)


def send_routed(sock: zmq.Socket, route: list[bytes], frame: bytes, flags: int = 0) -> None:
    """`send` of a ROUTER's message: the route's frames (identity, REQ's delimiter), then
    the one frame of the message; no list of parts to build per message."""
    more = flags | _SNDMORE
    for part in route:
        sock.send(part, more)
    sock.send(frame, flags)


def receive_routed(sock: zmq.Socket, flags: int = 0, authenticated: bool = False) -> tuple[bytes, list[bytes], bool, str | None]:
    """A ROUTER's message: the peer's identity, the message's frames, whether the peer is
    a REQ socket, and (`authenticated`: a CURVE socket) the public key it authenticated with,
    as the ZAP handler named it (wire.security), else None. A REQ peer's empty delimiter frame is removed here; the peer type comes from
    the connection's ZMTP metadata ("Socket-Type"), so a DEALER that sends ["", payload] is
    not mistaken for REQ (its message has two frames), and no event is pushed to a REQ peer,
    which would drop the connection on an unsolicited message."""
    identity = sock.recv(flags)  # a ROUTER's first frame: the peer's identity, never with metadata we read
    frame = sock.recv(flags, copy=False)
    if not frame.more:  # the usual message, one frame: no list of frames to build, no REQ to tell
        user = None
        if authenticated:
            try:
                user = frame.get(_USER_ID)
            except zmq.ZMQError:
                user = None
        return identity, [frame.bytes], False, user
    frames = [frame]
    while frame.more:
        frame = sock.recv(flags, copy=False)
        frames.append(frame)
    req = False
    if not frames[0].bytes:
        try:
            req = frames[0].get("Socket-Type") == "REQ"
        except zmq.ZMQError:  # no metadata (inproc): a leading empty frame can only be REQ's
            req = True
        if req:
            del frames[0]
    user = None
    if authenticated:
        try:
            user = frames[-1].get(_USER_ID)
        except zmq.ZMQError:
            user = None
    return identity, [f.bytes for f in frames], req, user


def envelope_of(identity: bytes, req: bool) -> list[bytes]:
    """The frames that route a reply back to a peer: its identity, and REQ's delimiter."""
    return [identity, b""] if req else [identity]
