"""Error codes on the wire, named after the Xen/POSIX errno a C client would expect."""

from __future__ import annotations

import enum
import sys

from wire.shown import for_terminal


class ErrorCode(enum.StrEnum):
    EINVAL = "EINVAL"  # a field has the wrong type or is out of range
    ENOMEM = "ENOMEM"  # the pool cannot build what was asked (domain creation)
    EPERM = "EPERM"  # the caller may not do this (someone else's pages, not its endpoint)
    EACCES = "EACCES"  # the caller's key has no right to this (wire.gate): who it is, not what it asked
    ESRCH = "ESRCH"  # no such domain, or the client has not registered one
    EEXIST = "EEXIST"  # a domain with that name exists
    EPROTO = "EPROTO"  # the envelope is broken: not msgpack, wrong version, bad sequence
    ENOSYS = "ENOSYS"  # unknown operation
    EMSGSIZE = "EMSGSIZE"  # the frame is larger than MAX_MESSAGE_BYTES
    EBUSY = "EBUSY"  # the resource is in use (interrupt lines)
    ENOSPC = "ENOSPC"  # (irqbus) no free line source left on a guest
    ETIMEDOUT = "ETIMEDOUT"  # (irqbus) a guest did not answer a forwarded query in time
    EAGAIN = "EAGAIN"  # not executed: the server has no room to record it now; retry later


class WireError(Exception):
    """Raised by validation and by cores; the shell turns it into an error reply."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


MAX_BOOT_ID = 64  # a boot id longer than this is not one
MAX_REASON = 32  # nor is a longer `reason` one


class RemoteError(Exception):
    """An error reply, as the client sees it; `boot_id` is the hypervisor's, on a guest's ESRCH,
    and `reason` why that guest's domain is gone (wire/domain_end.py), when the reply says."""

    def __init__(self, code: str, message: str, boot_id: str | None = None, reason: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.boot_id = boot_id
        self.reason = reason


class Unreachable(Exception):
    """No reply came from the endpoint within the client's retries."""


def report_failure(err: RemoteError | Unreachable, command: str, server: str, endpoint: str) -> int:
    """How every client command tells its user that the server refused it or never answered;
    the exit status is 1 either way. The server's words are escaped for the terminal."""
    if isinstance(err, Unreachable):
        hint = str(err).partition("; ")[2]  # the client's own diagnosis (a failed CURVE handshake)
        print(f"{command}: no {server} answered at {endpoint} (is `{server} serve` running?){'; ' + hint if hint else ''}", file=sys.stderr)
    else:
        print(f"{command}: {for_terminal(err.code)}: {for_terminal(err.message)}", file=sys.stderr)
    return 1
