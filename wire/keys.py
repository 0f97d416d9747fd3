"""Long-term CURVE keys and who may do what with them, in one directory per host (or per run).

The directory (`--keys DIR`, else $BALLONET_KEYS, else $XDG_CONFIG_HOME/ballonet, else
~/.config/ballonet) holds, per key NAME, the two files ZeroMQ's own tools use (zmq.auth,
CZMQ's zcert): `NAME.key` with the public key and `NAME.key_secret` with both, mode 0600.
Servers find their clients' rights in `authorized` (one line per key: role, public key, name,
and for a device the guests it may be plugged into); clients find a server's public key in
`hypervisor.key` or `irqbus.key`. A key a command creates on first use is authorized for that
command's role at once: whoever can write this directory already holds the host.

Why files and not a database: Docker secrets, `scp` and `chmod` all work on files, and a
non-Python client reads the same ones (docs/protocol.md).
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import os
import re
import stat
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import zmq

KEYS_ENV = "BALLONET_KEYS"
AUTHORIZED = "authorized"
LOCK = ".lock"
PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
Z85_KEY_CHARS = 40  # a 32-byte Curve25519 key in Z85
MAX_GUEST_SCOPE = 64
SERVER_NAMES = ("hypervisor", "irqbus")  # wire.security.Server: whose public key clients need

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_Z85 = re.compile(r"[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}")


class Role(enum.StrEnum):
    """What a key may do (wire.authority says which operation needs which)."""

    TOOLSTACK = "toolstack"  # dom0: the admin endpoint, and everything on irqbus but virqs
    HYPERVISOR = "hypervisor"  # raises virqs on irqbus and tells it which key owns which domain
    GUEST = "guest"  # registers a domain (only needed where the hypervisor runs `--guests authorized`)
    DEVICE = "device"  # plugs itself into the guests it is scoped to, raises on what it plugged


# The `authorized` files this process parsed, by path, with the stat stamp each had then
# (KeyDir.vet_authorized). The inode too: the file is replaced by a rename (write_atomic).
_vetted: dict[str, tuple[int, int, int]] = {}


def _stamp(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class KeyFileError(Exception):
    """A key file is missing, malformed or unsafe; the message says which file and what to do."""


@dataclass(frozen=True)
class KeyPair:
    name: str
    public: bytes  # Z85, 40 bytes
    secret: bytes | None  # None: only the public half is here (another process's key)


@dataclass(frozen=True)
class Grant:
    """One line of `authorized`."""

    role: Role
    key: str  # Z85 public key
    name: str
    guests: frozenset[int] = frozenset()  # a device's scope; empty: any guest

    def check(self) -> Grant:
        """A grant `authorized` can hold: refused here rather than written into a file that no
        server (nor `ballonet keys list`) could then read."""
        check_public(self.key)
        check_name(self.name)
        if self.guests and self.role is not Role.DEVICE:
            raise KeyFileError(f"guests=... scopes a device key only, not a {self.role} key")
        if len(self.guests) > MAX_GUEST_SCOPE:
            raise KeyFileError(f"{len(self.guests)} guests: a device key is scoped to at most {MAX_GUEST_SCOPE} (or to any guest)")
        from wire.operations import MAX_DOMID  # here: most key files scope nothing, and it is a heavy import

        bad = sorted(g for g in self.guests if not 0 <= g <= MAX_DOMID)
        if bad:
            raise KeyFileError(f"guest {bad[0]} is no domid (0 to {MAX_DOMID})")
        return self

    def line(self) -> str:
        scope = f" guests={','.join(str(g) for g in sorted(self.guests))}" if self.guests else ""
        return f"{self.role} {self.key} {self.name}{scope}"


@dataclass
class Authorized:
    """The parsed `authorized` file: the roles of each key."""

    grants: list[Grant] = field(default_factory=list)

    def roles(self, key: str) -> frozenset[Role]:
        return frozenset(g.role for g in self.grants if g.key == key)

    def device_scope(self, key: str) -> frozenset[int] | None:
        """The guests a device key may plug into: None when it is no device, empty for any."""
        scopes = [g.guests for g in self.grants if g.key == key and g.role is Role.DEVICE]
        if not scopes:
            return None
        if any(not s for s in scopes):
            return frozenset()
        return frozenset().union(*scopes)


def default_dir(flag: str | None = None) -> Path:
    """A flag wins over $BALLONET_KEYS, which wins over the XDG configuration directory."""
    if flag:
        return Path(flag)
    if os.environ.get(KEYS_ENV):
        return Path(os.environ[KEYS_ENV])
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "ballonet"


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise KeyFileError(f"bad key name {name!r}: letters, digits, '_', '.', '-', at most 64, not starting with a symbol")
    return name


def check_public(key: str) -> str:
    if not _Z85.fullmatch(key):
        raise KeyFileError(f"not a Z85 public key (40 characters): {key[:60]!r}")
    return key


class KeyDir:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._held = 0  # depth of _locked() in this object

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Every change to the directory under one lock: processes started together (a run's
        guests, two devices on key `device`) create their keys on first use and add their
        grants to `authorized` at the same moment, and a read-modify-write of it must not
        lose another's grant, nor two processes make two different pairs of one name."""
        if self._held:
            self._held += 1
            try:
                yield
            finally:
                self._held -= 1
            return
        self._ensure_dir()
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._held = 1
            yield
        finally:
            self._held = 0
            os.close(fd)

    def __repr__(self) -> str:
        return f"KeyDir({str(self.path)!r})"

    # -- key pairs -------------------------------------------------------------------------------

    def public_file(self, name: str) -> Path:
        return self.path / (check_name(name) + PUBLIC_SUFFIX)

    def secret_file(self, name: str) -> Path:
        return self.path / (check_name(name) + SECRET_SUFFIX)

    def public_file_exists(self, name: str) -> bool:
        return bool(_NAME.fullmatch(name)) and self.public_file(name).exists()

    def exists(self, name: str) -> bool:
        return self.secret_file(name).exists()

    def pair(self, name: str, *, create: bool = True, role: Role | None = None) -> KeyPair:
        """This process's own key pair NAME, created (and, with `role`, authorized) on first use."""
        secret_file = self.secret_file(name)
        if not secret_file.exists():
            if not create:
                raise KeyFileError(f"no secret key {secret_file} (create it with `ballonet keys create {name}`)")
            with self._locked():
                if not secret_file.exists():  # nobody made it while we waited for the lock
                    public, secret = zmq.curve_keypair()
                    if role is not None:  # granted before the key is there for anyone to use
                        self.authorize(Grant(role, public.decode(), name))
                    return self._write_pair(name, public, secret)
        self.check_dir()
        self._check_private(secret_file)
        public, secret = read_cert(secret_file)
        if secret is None:
            raise KeyFileError(f"{secret_file} holds no secret-key line")
        return KeyPair(name, public, secret)

    def ensure_pairs(self, names: Iterable[str], role: Role) -> int:
        """Every NAME's pair, made (and authorized for `role`) where missing, under one lock and
        with one write of `authorized`: a fleet of a thousand guests makes its keys at once,
        rather than each guest rewriting a growing file (and each server re-reading it) in turn.
        Returns how many were made."""
        wanted = [check_name(n) for n in names]
        with self._locked():
            missing = [n for n in dict.fromkeys(wanted) if not self.secret_file(n).exists()]
            if not missing:
                return 0
            made = {n: zmq.curve_keypair() for n in missing}
            new = {public.decode(): n for n, (public, _) in made.items()}
            kept = [g for g in self.authorized().grants if not (g.key in new and g.role == role)]
            grants = [Grant(role, key, name) for key, name in new.items()]
            for grant in grants:
                grant.check()
            self._write_authorized([*kept, *grants])  # granted before the keys are there to use
            for name, (public, secret) in made.items():
                self._write_pair(name, public, secret)
            return len(made)

    def public(self, name: str) -> bytes:
        """Another process's public key NAME (a server's, for its clients)."""
        public_file = self.public_file(name)
        if not public_file.exists():
            if name in SERVER_NAMES:
                raise KeyFileError(
                    f"no public key {public_file}: copy the server's {name}{PUBLIC_SUFFIX} there "
                    f"(`ballonet keys import {name} FILE`), or start `{name} serve` with the same --keys/{KEYS_ENV}"
                )
            raise KeyFileError(f"no key {name!r} in {self.path} (`ballonet keys list` shows them; `ballonet keys create {name}` makes one)")
        public, _ = read_cert(public_file)
        return public

    def create(self, name: str) -> KeyPair:
        """A new key pair NAME; refuses to replace one (revoke and delete it first)."""
        with self._locked():
            if self.secret_file(name).exists():
                raise KeyFileError(f"key {name!r} exists in {self.path}")
            return self._write_pair(name, *zmq.curve_keypair())

    def _write_pair(self, name: str, public: bytes, secret: bytes) -> KeyPair:
        banner = f"#   ballonet key {name}: written by `ballonet keys`; the secret file is 0600\n"
        # the secret first: the public file is what a client waits for (wire.security.setup)
        write_atomic(self.secret_file(name), cert_text(banner, public, secret), 0o600)
        write_atomic(self.public_file(name), cert_text(banner, public, None), 0o644)
        return KeyPair(name, public, secret)

    def names(self) -> list[str]:
        if not self.path.is_dir():
            return []
        return sorted(p.name[: -len(PUBLIC_SUFFIX)] for p in self.path.glob("*" + PUBLIC_SUFFIX) if _NAME.fullmatch(p.name[: -len(PUBLIC_SUFFIX)]))

    # -- authorization ---------------------------------------------------------------------------

    @property
    def authorized_file(self) -> Path:
        return self.path / AUTHORIZED

    def authorized(self) -> Authorized:
        self.check_dir()
        path = self.authorized_file
        if not path.exists():
            return Authorized()
        st = path.stat()
        self._check_authorized_mode(path, st.st_mode)
        authorized = parse_authorized(path.read_text(encoding="utf-8"), str(path))
        _vetted[str(path)] = _stamp(st)
        return authorized

    def vet_authorized(self) -> None:
        """KeyFileError if `authorized` is unsafe or does not parse. A file this process (or the
        one it was forked from) parsed and that has not changed since is not parsed again: each
        of a fleet's thousand guests checks it at start, and it lists all of them."""
        self.check_dir()
        path = self.authorized_file
        try:
            st = path.stat()
        except FileNotFoundError:
            return
        self._check_authorized_mode(path, st.st_mode)
        if _vetted.get(str(path)) != _stamp(st):
            self.authorized()

    @staticmethod
    def _check_authorized_mode(path: Path, mode: int) -> None:
        if mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise KeyFileError(f"{path} is writable by others (mode {stat.S_IMODE(mode):o}): anyone could grant themselves a role; chmod go-w it")

    def authorize(self, grant: Grant) -> None:
        """Add `grant` (a key already granted the same role gets the new scope instead)."""
        grant.check()
        with self._locked():
            current = self.authorized().grants
            kept = [g for g in current if not (g.key == grant.key and g.role == grant.role)]
            self._write_authorized([*kept, grant])

    def revoke(self, key: str, role: Role | None = None) -> int:
        """Remove the key's grants (of `role`, or all); returns how many went."""
        with self._locked():
            current = self.authorized().grants
            kept = [g for g in current if not (g.key == key and (role is None or g.role == role))]
            self._write_authorized(kept)
            return len(current) - len(kept)

    def _write_authorized(self, grants: Iterable[Grant]) -> None:
        self._ensure_dir()
        text = "# role public-key name [guests=DOMID,...]   (ballonet keys authorize/revoke)\n"
        text += "".join(g.line() + "\n" for g in grants)
        write_atomic(self.authorized_file, text, 0o644)

    # -- safety ----------------------------------------------------------------------------------

    def _ensure_dir(self) -> None:
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)

    def check_dir(self) -> None:
        """A directory others may write to lets them swap a server's public key or `authorized`
        for their own (a replaced file passes every file check), so it is refused as a whole."""
        try:
            mode = self.path.stat().st_mode
        except FileNotFoundError:
            return
        if mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise KeyFileError(
                f"key directory {self.path} is writable by others (mode {stat.S_IMODE(mode):o}): anyone could replace "
                f"a server's public key or the authorized file; chmod 700 it"
            )

    @staticmethod
    def _check_private(path: Path) -> None:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyFileError(f"{path} is readable by others (mode {stat.S_IMODE(mode):o}): refusing to use a leaked secret key; chmod 600 it, or revoke it and create another")


def parse_authorized(text: str, where: str = AUTHORIZED) -> Authorized:
    grants = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):  # whole-line comments only: '#' is a Z85 digit
            continue
        words = line.split()
        try:
            if len(words) not in (3, 4):
                raise KeyFileError("expected: role public-key name [guests=DOMID,...]")
            role = Role(words[0]) if words[0] in Role.__members__.values() else None
            if role is None:
                raise KeyFileError(f"unknown role {words[0]!r} (one of {', '.join(Role)})")
            guests: frozenset[int] = frozenset()
            if len(words) == 4:
                if not words[3].startswith("guests="):
                    raise KeyFileError(f"unexpected {words[3]!r}")
                guests = frozenset(int(g) for g in words[3][len("guests="):].split(","))
            grants.append(Grant(role, words[1], words[2], guests).check())
        except (KeyFileError, ValueError) as err:
            raise KeyFileError(f"{where}:{number}: {err}") from None
    return Authorized(grants)


def cert_text(banner: str, public: bytes, secret: bytes | None) -> str:
    """ZeroMQ's certificate format (ZPL), as zmq.auth and CZMQ's zcert read and write it."""
    text = banner + "metadata\ncurve\n" + f'    public-key = "{public.decode()}"\n'
    if secret is not None:
        text += f'    secret-key = "{secret.decode()}"\n'
    return text


def read_cert(path: Path) -> tuple[bytes, bytes | None]:
    public = secret = None
    for raw in path.read_bytes().splitlines():
        line = raw.strip()
        if line.startswith(b"public-key"):
            public = line.split(b"=", 1)[1].strip(b" \t'\"")
        elif line.startswith(b"secret-key"):
            secret = line.split(b"=", 1)[1].strip(b" \t'\"")
    if public is None or len(public) != Z85_KEY_CHARS or (secret is not None and len(secret) != Z85_KEY_CHARS):
        raise KeyFileError(f"{path} is not a ZeroMQ certificate with a 40-character Z85 public-key line")
    return public, secret


def write_atomic(path: Path, text: str, mode: int) -> None:
    """Write then rename, so a reader never sees half a file, and the secret is never readable
    by others, not even for an instant (created with its mode, not chmod'ed after)."""
    fd, tmp = tempfile.mkstemp(prefix="." + path.name, dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def key_name_for(guest: str) -> str:
    """A guest's default key name: `guest-NAME`, or for a name a file may not carry (any
    printable text up to 64 characters is a domain name) its safe characters and a digest."""
    candidate = "guest-" + guest
    if _NAME.fullmatch(candidate):
        return candidate
    import hashlib

    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", guest)[:40]
    return f"guest-{safe}-{hashlib.blake2b(guest.encode(), digest_size=6).hexdigest()}"
