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
import signal
import sys
import threading
import time
from dataclasses import dataclass

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
        # its thread starts with SIGTERM and SIGINT blocked (a thread takes its creator's mask),
        # so they reach the main thread, whose handler blocks them there to hold off the next
        # (wire/signals.py); an unblocked thread would take those, and tests of it in one process
        stop = {signal.SIGTERM, signal.SIGINT}
        before = signal.pthread_sigmask(signal.SIG_BLOCK, stop)
        try:
            auth.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, before)
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
    except OSError as err:  # a key directory that cannot be made or read
        raise SecurityError(f"key directory {default_dir(args.key_dir)}: {err.strerror or err} ({err.filename or ''}); choose another with --keys DIR or ${KEYS_ENV}") from None


def is_local(endpoint: str) -> bool:
    """ipc://, inproc:// and loopback tcp:// endpoints stay on this machine."""
    scheme, _, rest = endpoint.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        return False
    # ZeroMQ's own form (zmq_tcp(7)): HOST:PORT, an IPv6 HOST in brackets; a source address
    # (`SRC;HOST:PORT`), user info or a path are no URL parts to it, so none is local here
    host, colon, _port = rest.rpartition(":")
    if not colon:
        return False
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False  # '*', an interface name or a DNS name: not provably local
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 is IPv4's loopback too
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


SERVER_KEY_WAIT_S = 10.0  # for each server's key
SERVER_KEY_TOLD_S = 1.0  # a wait longer than this is said on stderr, so a silent client is no mystery


def wait_for_server_key(keys: KeyDir, server: Server | str, command: str) -> None:
    """Wait up to SERVER_KEY_WAIT_S for `server`'s public key (its own `serve` writes it on
    first use); KeyFileError saying what to do when it never comes."""
    path = keys.public_file(str(server))
    start = time.monotonic()
    told = False
    while not path.exists():
        waited = time.monotonic() - start
        if waited >= SERVER_KEY_WAIT_S:
            raise KeyFileError(
                f"no public key of {server} in {keys.path} after waiting {SERVER_KEY_WAIT_S:g} s for {path.name}: "
                f"start `{server} serve` with the same key directory (--keys or ${KEYS_ENV}), "
                f"or copy its {path.name} here (`ballonet keys import {server} FILE`)"
            )
        if not told and waited >= SERVER_KEY_TOLD_S:
            print(f"{command}: waiting up to {SERVER_KEY_WAIT_S:g} s for {path} ({server} serve writes it when it starts)", file=sys.stderr)
            told = True
        time.sleep(0.05)


def setup(args: argparse.Namespace, role: Role | None, endpoints: list[str], command: str, servers: tuple[Server, ...] = ()) -> int | None:
    """Configure the process from its command line; an exit status (2) when it cannot be.

    The public keys of the `servers` it will talk to must be in its key directory; a server
    started at the same moment writes its own on first use, so a missing one is waited for
    (SERVER_KEY_WAIT_S) before giving up with what to do."""
    try:
        chosen = configure(from_arguments(args, role, endpoints))
        if chosen.keys is not None:
            # an unsafe or unreadable `authorized` stops the process at start, with what to do,
            # rather than a server that refuses every key (wire.gate keeps no good rights)
            chosen.keys.vet_authorized()
            for server in servers:
                wait_for_server_key(chosen.keys, server, command)
                chosen.server_key(server)  # a malformed file raises with its own message
    except (SecurityError, KeyFileError) as err:
        print(f"{command}: {err}", file=sys.stderr)
        return 2
    return None
