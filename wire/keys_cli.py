"""`ballonet keys`: list, create, authorize, revoke, show and import the host's keys."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from wire.keys import _Z85, Grant, KeyDir, KeyFileError, Role, check_name, check_public, default_dir, KEYS_ENV, cert_text, read_cert, write_atomic


class _KeyParser(argparse.ArgumentParser):
    """'-' is in Z85's alphabet, so one public key in 85 begins with it, and argparse read such a
    key (`ballonet keys import NAME -x1...`) as an unknown flag. A word that is a whole Z85 key
    is an argument here, never a flag."""

    def _parse_optional(self, arg_string: str):  # type: ignore[no-untyped-def]
        if arg_string not in self._option_string_actions and _Z85.fullmatch(arg_string):
            return None
        return super()._parse_optional(arg_string)


def build_parser() -> argparse.ArgumentParser:
    parser = _KeyParser(prog="ballonet", description="ballonet's host-wide tools")
    sub = parser.add_subparsers(dest="tool", required=True)
    keys = sub.add_parser("keys", help="the CURVE keys of this host (docs/protocol.md)")
    keys.add_argument("--keys", metavar="DIR", help=f"key directory (env {KEYS_ENV}; default $XDG_CONFIG_HOME/ballonet)")
    # also after the command (`ballonet keys list --keys DIR`), as every other CLI takes it
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--keys", metavar="DIR", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    cmd = keys.add_subparsers(dest="command", required=True, parser_class=lambda **kw: _KeyParser(parents=[where], **kw))
    listing = cmd.add_parser("list", help="every key here, and the roles `authorized` gives each")
    listing.add_argument("--json", action="store_true")
    create = cmd.add_parser("create", help="a new key pair NAME (secret 0600); with --role, authorized at once")
    create.add_argument("name")
    scope_options(create, required=False)
    authorize = cmd.add_parser("authorize", help="give a key a role (takes effect at once, also on open sessions)")
    authorize.add_argument("key", help="a key name here, a .key file, or a 40-character Z85 public key")
    authorize.add_argument("--name", help="the name to list it under (default: the key's name)")
    scope_options(authorize, required=True)
    revoke = cmd.add_parser("revoke", help="take a key's roles away (its next request is refused, even mid-session)")
    revoke.add_argument("key", help="a key name here, a .key file, or a Z85 public key")
    revoke.add_argument("--role", choices=[str(r) for r in Role], help="only this role (default: all)")
    show = cmd.add_parser("show", help="print a key's public half (Z85), e.g. to authorize it on another host")
    show.add_argument("name")
    imp = cmd.add_parser("import", help="keep another host's public key as NAME.key (a server's, for its clients)")
    imp.add_argument("name")
    imp.add_argument("key", help="a .key file or a Z85 public key")
    return parser


def scope_options(cmd: argparse.ArgumentParser, required: bool) -> None:
    cmd.add_argument("--role", choices=[str(r) for r in Role], required=required, help="toolstack, hypervisor, guest or device")
    cmd.add_argument("--guest", type=int, action="append", default=[], metavar="DOMID", help="a device's guests (repeat; default any)")


def resolve(keys: KeyDir, ref: str) -> tuple[str, str]:
    """(public key, name) for a key name in the directory, a certificate file, or a Z85 key."""
    if len(ref) == 40 and not Path(ref).exists() and not keys.public_file_exists(ref):
        return check_public(ref), "imported"
    path = Path(ref)
    if path.suffix in (".key", ".key_secret") and path.exists():
        return read_cert(path)[0].decode(), path.name.split(".")[0]
    if not keys.public_file_exists(check_name(ref)):  # a key authorized by name, its file elsewhere
        named = {g.key for g in keys.authorized().grants if g.name == ref}
        if len(named) == 1:
            return named.pop(), ref
        if named:
            raise KeyFileError(f"{len(named)} keys are authorized as {ref!r}: name one by its public key (`ballonet keys list`)")
    return keys.public(ref).decode(), ref


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keys = KeyDir(default_dir(args.keys))
    try:
        if args.command == "list":
            authorized = keys.authorized()
            rows = []
            names = keys.names()
            for name in names:
                public = keys.public(name).decode()
                rows.append({"name": name, "public_key": public, "secret": keys.exists(name), "roles": sorted(authorized.roles(public))})
            listed = {r["public_key"] for r in rows}
            for grant in authorized.grants:  # authorized keys whose files live elsewhere
                if grant.key not in listed:
                    listed.add(grant.key)
                    rows.append({"name": grant.name, "public_key": grant.key, "secret": False, "roles": sorted(authorized.roles(grant.key))})
            for row in rows:
                scope = authorized.device_scope(row["public_key"])
                row["guests"] = sorted(scope) if scope else None
            if args.json:
                print(json.dumps(rows, indent=2))
            else:
                print(f"keys in {keys.path}")
                for row in rows:
                    where = f" guests={','.join(map(str, row['guests']))}" if row["guests"] else ""
                    print(f"  {row['name']:<24} {row['public_key']}  {'secret ' if row['secret'] else 'public '} {','.join(row['roles']) or '-'}{where}")
        elif args.command == "create":
            if args.guest and not args.role:
                raise KeyFileError("--guest scopes a device: add --role device")
            if args.role:  # the grant checked before the key exists, so a refused one leaves nothing
                Grant(Role(args.role), "0" * 40, check_name(args.name), frozenset(args.guest)).check()
            pair = keys.create(check_name(args.name))
            if args.role:
                keys.authorize(Grant(Role(args.role), pair.public.decode(), pair.name, frozenset(args.guest)))
            print(f"{pair.name}: {pair.public.decode()} ({keys.secret_file(pair.name)}, 0600)")
        elif args.command == "authorize":
            public, name = resolve(keys, args.key)
            keys.authorize(Grant(Role(args.role), public, check_name(args.name or name), frozenset(args.guest)))
            print(f"{args.name or name}: {args.role}{' on guests ' + ','.join(map(str, args.guest)) if args.guest else ''}")
        elif args.command == "revoke":
            public, name = resolve(keys, args.key)
            gone = keys.revoke(public, Role(args.role) if args.role else None)
            if not gone:
                print(f"ballonet keys revoke: {name} had no {args.role or 'role'} to revoke", file=sys.stderr)
                return 1
            print(f"{name}: {gone} grant(s) revoked")
        elif args.command == "show":
            print(keys.public(check_name(args.name)).decode())
        elif args.command == "import":
            if keys.exists(check_name(args.name)):
                raise KeyFileError(f"{args.name!r} is a key pair of this directory ({keys.secret_file(args.name)}): importing another public key under its name would part it from its secret; choose another name")
            public, _ = resolve(keys, args.key)
            keys.path.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_atomic(keys.public_file(check_name(args.name)), cert_text(f"#   ballonet public key {args.name}, imported\n", public.encode(), None), 0o644)
            print(f"{args.name}: {public}")
    except KeyFileError as err:
        print(f"ballonet keys {args.command}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
