"""A server's view of who is calling: the key a message came with, and that key's roles as the
key directory's `authorized` file gives them now.

Checked per message, not per connection, so a revocation applies to a session already open.
The file is read again when it changes (looked at every RELOAD_S at most); a file that does
not parse leaves the last good one in force, and says so once.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from wire.keys import Authorized, KeyDir, KeyFileError, Role

RELOAD_S = 0.25
_ALL_ROLES = frozenset(Role)


@dataclass(frozen=True, slots=True)
class Peer:
    """`key` None: an insecure socket, where everyone may do everything (as before CURVE)."""

    key: str | None
    roles: frozenset[Role]
    device_scope: frozenset[int] | None = None  # Authorized.device_scope

    def has(self, role: Role) -> bool:
        return role in self.roles

    def short(self) -> str:
        """For log lines: enough of the public key to tell keys apart, and never a secret."""
        return "insecure" if self.key is None else self.key[:8]


INSECURE = Peer(None, _ALL_ROLES, frozenset())


class Gate:
    def __init__(self, keys: KeyDir | None, clock: Callable[[], float], on_problem: Callable[[str], None] | None = None) -> None:
        self.keys = keys
        self.clock = clock
        self._on_problem = on_problem
        self._authorized = Authorized()
        self._stamp: tuple[int, int] | None = None
        self._next_look = 0.0
        self._peers: dict[str, Peer] = {}
        self._problem: str | None = None
        self.reloads = 0
        if keys is not None:
            self.refresh(force=True)

    def peer(self, key: str | None) -> Peer:
        if key is None:
            return INSECURE
        found = self._peers.get(key)
        if found is None:
            found = Peer(key, self._authorized.roles(key), self._authorized.device_scope(key))
            if len(self._peers) > 65536:  # keys are cheap to make: bound the cache
                self._peers.clear()
            self._peers[key] = found
        return found

    def refresh(self, force: bool = False) -> bool:
        """Read `authorized` again if it changed; True when the rights changed."""
        if self.keys is None:
            return False
        now = self.clock()
        if not force and now < self._next_look:
            return False
        self._next_look = now + RELOAD_S
        path = self.keys.authorized_file
        try:
            st = os.stat(path)
            stamp = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp == self._stamp and not force:
            return False
        try:
            authorized = self.keys.authorized()
        except (KeyFileError, OSError) as err:
            message = f"keeping the last good rights: {err}"
            if message != self._problem and self._on_problem is not None:
                self._on_problem(message)
            self._problem = message
            return False
        self._problem = None
        self._stamp = stamp
        self._authorized = authorized
        self._peers.clear()
        self.reloads += 1
        return True

    def recheck(self) -> bool:
        """A key was just refused: look at `authorized` now rather than at the next RELOAD_S, so
        a key authorized a moment ago (a command creates and authorizes its key on first use,
        then sends at once) is not refused its first request. One stat when nothing changed;
        True when the rights did (the refused request may then be served)."""
        self._next_look = 0.0
        return self.refresh()

    def keys_with(self, role: Role) -> list[str]:
        return [g.key for g in self._authorized.grants if g.role is role]
