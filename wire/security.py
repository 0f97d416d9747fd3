"""How a process secures its sockets: CURVE with its own long-term key (the default), or an
explicit, loud `--insecure` for quick local experiments.

Set once per process (`configure`, like logging) from its command line; every socket the
process opens asks `current()`. A server's sockets authenticate every peer through one ZAP
handler per context that admits any key and hands its public key up as the message's
User-Id: who may do what is decided per message by the server (wire.gate), so a refusal is a
clear error reply, and a key revoked mid-session is refused from its next request on.
"""

from __future__ import annotations

import argparse
import enum
import ipaddress
import sys
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import zmq

from wire.keys import KeyDir, KeyFileError, KeyPair, Role, default_dir, KEYS_ENV

ZAP_DOMAIN = "ballonet"


class Server(enum.StrEnum):
    """The servers a client may talk to; each one's public key is `NAME.key` in the key dir."""

    HYPERVISOR = "hypervisor"
    IRQBUS = "irqbus"


class SecurityError(Exception):
    """The process cannot secure its sockets as asked; the message says what to do."""


@dataclass(frozen=True)
class Security:
    """`keys` and `own` are None in insecure mode (no authentication, no encryption)."""

    keys: KeyDir | None
    own: KeyPair | None

    @property
    def insecure(self) -> bool:
        return self.own is None

    @classmethod
    def insecure_mode(cls) -> Security:
        return cls(None, None)

    @classmethod
    def curve(cls, keys: KeyDir, name: str, role: Role | None = None) -> Security:
        """Key NAME of `keys`, created on first use (and then authorized for `role`)."""
        require_curve()
        return cls(keys, keys.pair(name, role=role))

    def server_key(self, server: Server | str) -> bytes:
        assert self.keys is not None
        return self.keys.public(str(server))

    def secure_server(self, sock: zmq.Socket) -> None:
        """Before bind: this socket authenticates its peers with this process's key."""
        if self.own is None:
            return
        _start_zap(sock.context)
        sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.own.secret)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.own.public)
        sock.setsockopt(zmq.CURVE_SERVER, 1)

    def secure_client(self, sock: zmq.Socket, server: Server | str) -> None:
        """Before connect: this socket proves this process's key and checks the server's."""
        if self.own is None:
            return
        sock.setsockopt(zmq.CURVE_SERVERKEY, self.server_key(server))
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.own.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.own.secret)  # type: ignore[arg-type]

    def describe(self) -> dict[str, str]:
        """For the process's start line: where its keys are and its public key (never the secret)."""
        if self.own is None or self.keys is None:
            return {"security": "insecure"}
        return {"security": "curve", "keys": str(self.keys.path), "key": self.own.name, "public_key": self.own.public.decode()}


def require_curve() -> None:
    if not zmq.has("curve"):
        raise SecurityError(
            f"this libzmq ({zmq.zmq_version()}) was built without CURVE (libsodium): install pyzmq's wheel "
            "(`pip install --force-reinstall pyzmq`), or run with --insecure on a loopback address"
        )


# -- the ZAP handler: one per context, started by the first secured server socket -----------------

_zap_lock = threading.Lock()
_zap_started: dict[int, object] = {}


def _start_zap(context: zmq.Context) -> None:
    with _zap_lock:
        if id(context) in _zap_started:
            return
        from zmq.auth.thread import ThreadAuthenticator  # only servers need it

        auth = ThreadAuthenticator(context)
        auth.start()
        auth.configure_curve(domain=ZAP_DOMAIN, location=zmq.auth.CURVE_ALLOW_ANY)
        _zap_started[id(context)] = auth  # lives as long as the process: the servers' sockets do


def peer_key(frame: zmq.Frame) -> str | None:
    """The public key (Z85) the peer authenticated with, or None on an insecure socket."""
    try:
        return frame.get("User-Id")  # type: ignore[return-value]
    except zmq.ZMQError:
        return None


# -- the process's setting --------------------------------------------------------------------------

_current: Security | None = None


def configure(security: Security) -> Security:
    global _current
    _current = security
    return security


def current() -> Security:
    """The process's setting; a process that never chose gets the toolstack key of the default
    key directory (what a library user or a test's own client wants)."""
    global _current
    if _current is None:
        _current = Security.curve(KeyDir(default_dir()), "toolstack", Role.TOOLSTACK)
    return _current


def add_arguments(parser: argparse.ArgumentParser, default_key: str) -> None:
    group = parser.add_argument_group("security (CURVE; docs/protocol.md)")
    group.add_argument("--keys", dest="key_dir", metavar="DIR", help=f"key directory (env {KEYS_ENV}; default $XDG_CONFIG_HOME/ballonet)")
    group.add_argument("--key", metavar="NAME", default=default_key, help=f"this process's key in DIR, created on first use (default {default_key})")
    group.add_argument("--insecure", action="store_true", help="no authentication or encryption: loopback and ipc:// endpoints only")
    group.add_argument("--insecure-network", action="store_true", help="with --insecure: allow it on other addresses too")


def from_arguments(args: argparse.Namespace, role: Role | None, endpoints: list[str]) -> Security:
    """The process's setting from its command line; refuses --insecure on a non-loopback address
    unless --insecure-network confirms it. Warns on stderr that insecure is insecure."""
    if args.insecure_network and not args.insecure:
        raise SecurityError("--insecure-network only confirms --insecure")
    if args.insecure:
        exposed = [e for e in endpoints if not is_local(e)]
        if exposed and not args.insecure_network:
            raise SecurityError(
                f"--insecure on {', '.join(exposed)}: anyone who can reach it could act as the toolstack; "
                "add --insecure-network if that is really meant"
            )
        print("warning: --insecure: nothing is authenticated or encrypted; any local process may act as any guest or the toolstack", file=sys.stderr)
        return Security.insecure_mode()
    try:
        return Security.curve(KeyDir(default_dir(args.key_dir)), args.key, role)
    except KeyFileError as err:
        raise SecurityError(str(err)) from None


def is_local(endpoint: str) -> bool:
    """ipc://, inproc:// and loopback tcp:// endpoints stay on this machine."""
    scheme, _, rest = endpoint.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        return False
    host = urlsplit("//" + rest).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # '*', an interface name or a DNS name: not provably local


SERVER_KEY_WAIT_S = 10.0


def setup(args: argparse.Namespace, role: Role | None, endpoints: list[str], command: str, servers: tuple[Server, ...] = ()) -> int | None:
    """Configure the process from its command line; an exit status (2) when it cannot be.

    The public keys of the `servers` it will talk to must be in its key directory; a server
    started at the same moment writes its own on first use, so a missing one is waited for
    (SERVER_KEY_WAIT_S) before giving up with what to do."""
    try:
        chosen = configure(from_arguments(args, role, endpoints))
        if chosen.keys is not None:
            deadline = time.monotonic() + SERVER_KEY_WAIT_S
            for server in servers:
                while not chosen.keys.public_file(str(server)).exists() and time.monotonic() < deadline:
                    time.sleep(0.05)
                chosen.server_key(server)  # raises with the message
    except (SecurityError, KeyFileError) as err:
        print(f"{command}: {err}", file=sys.stderr)
        return 2
    return None
