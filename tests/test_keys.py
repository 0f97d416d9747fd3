"""The key workflow as a user meets it: `ballonet keys`, keys made on first use, files whose
permissions give a secret away refused, --insecure kept to loopback, and where a process
looks for its keys (docs/protocol.md)."""

from __future__ import annotations

import argparse
import os
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.processes import REPO, Processes, wait_for
from wire import security
from wire.keys import KEYS_ENV, Grant, KeyDir, KeyFileError, Role, default_dir, parse_authorized
from wire.security import Security, SecurityError, Server, from_arguments, is_local

pytestmark = pytest.mark.timeout(30)


def ballonet(keys: Path | None, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`ballonet keys ...` as a user types it."""
    where = ("--keys", str(keys)) if keys is not None else ()
    return subprocess.run(
        [sys.executable, "-m", "wire.keys_cli", "keys", *where, *args],
        capture_output=True, text=True, timeout=20, cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO), **(env or {})),
    )


def cli(procs: Processes, module: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return procs.run(module, *args, timeout=20, env=env)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- ballonet keys --------------------------------------------------------------------------------


def test_create_list_authorize_with_scope_revoke_show_and_import(tmp_path):
    keys = tmp_path / "keys"
    made = ballonet(keys, "create", "ops", "--role", "toolstack")
    assert made.returncode == 0, made.stderr
    public = ballonet(keys, "show", "ops").stdout.strip()
    assert len(public) == 40 and public in made.stdout
    assert mode(keys / "ops.key_secret") == 0o600 and mode(keys) == 0o700

    assert ballonet(keys, "create", "nic").returncode == 0
    scoped = ballonet(keys, "authorize", "nic", "--role", "device", "--guest", "3", "--guest", "5")
    assert scoped.returncode == 0, scoped.stderr
    rows = {r["name"]: r for r in __import__("json").loads(ballonet(keys, "list", "--json").stdout)}
    assert rows["ops"]["roles"] == ["toolstack"] and rows["ops"]["secret"] is True
    assert rows["nic"]["roles"] == ["device"] and rows["nic"]["guests"] == [3, 5]
    assert KeyDir(keys).authorized().device_scope(rows["nic"]["public_key"]) == {3, 5}

    # another host's key: imported by its public half, authorized by its file
    other = KeyDir(tmp_path / "other").pair("remote-tool")
    imported = ballonet(keys, "import", "remote-tool", str(tmp_path / "other" / "remote-tool.key"))
    assert imported.returncode == 0, imported.stderr
    assert (keys / "remote-tool.key").exists() and not (keys / "remote-tool.key_secret").exists()
    assert ballonet(keys, "authorize", other.public.decode(), "--name", "remote-tool", "--role", "toolstack").returncode == 0
    assert KeyDir(keys).authorized().roles(other.public.decode()) == {Role.TOOLSTACK}

    revoked = ballonet(keys, "revoke", "nic")
    assert revoked.returncode == 0 and "1 grant(s) revoked" in revoked.stdout
    assert KeyDir(keys).authorized().roles(rows["nic"]["public_key"]) == frozenset()
    again = ballonet(keys, "revoke", "nic")
    assert again.returncode == 1 and "no role to revoke" in again.stderr
    listing = ballonet(keys, "list").stdout
    assert f"keys in {keys}" in listing and "ops" in listing and "toolstack" in listing


def test_keys_takes_its_directory_after_the_command_too(tmp_path):
    assert ballonet(None, "create", "a", "--keys", str(tmp_path)).returncode == 0
    listed = ballonet(None, "list", "--keys", str(tmp_path))
    assert listed.returncode == 0 and f"keys in {tmp_path}" in listed.stdout and " a " in listed.stdout


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--role", "device", *[x for g in range(1, 66) for x in ("--guest", str(g))]), "at most 64"),
        (("--role", "device", "--guest", "-1"), "no domid"),
        (("--role", "device", "--guest", "32752"), "no domid"),
        (("--role", "toolstack", "--guest", "3"), "device key only"),
    ],
)
def test_a_grant_no_server_could_read_is_refused_and_authorized_stays_readable(tmp_path, args, words):
    assert ballonet(tmp_path, "create", "d").returncode == 0
    refused = ballonet(tmp_path, "authorize", "d", *args)
    assert refused.returncode == 1 and words in refused.stderr, refused
    assert ballonet(tmp_path, "list").returncode == 0  # every server still reads the file
    assert KeyDir(tmp_path).authorized().grants == []
    made = ballonet(tmp_path, "create", "e", *args)  # refused before a key is made
    assert made.returncode == 1 and words in made.stderr and not (tmp_path / "e.key").exists()


def test_importing_over_a_key_pair_of_the_directory_is_refused(tmp_path):
    own = KeyDir(tmp_path).pair("hypervisor")
    other = KeyDir(tmp_path / "o").pair("x")
    refused = ballonet(tmp_path, "import", "hypervisor", other.public.decode())
    assert refused.returncode == 1 and "part it from its secret" in refused.stderr
    assert KeyDir(tmp_path).public("hypervisor") == own.public


@pytest.mark.parametrize("command", ["import", "authorize", "revoke"])
def test_a_z85_key_that_begins_with_a_dash_is_a_key_not_a_flag(tmp_path, command):
    key = "-x" + "0" * 38  # '-' is Z85's digit 63: one key in 85 begins with it (digits after it would read as a negative number)
    args = {"import": ("import", "peer", key), "authorize": ("authorize", key, "--role", "device"), "revoke": ("revoke", key)}[command]
    if command == "revoke":
        KeyDir(tmp_path).authorize(Grant(Role.DEVICE, key, "peer"))
    result = ballonet(tmp_path, *args)
    assert result.returncode == 0, result.stderr
    expected = frozenset() if command == "revoke" else (frozenset({Role.DEVICE}) if command == "authorize" else None)
    if expected is None:
        assert KeyDir(tmp_path).public("peer") == key.encode()
    else:
        assert KeyDir(tmp_path).authorized().roles(key) == expected


def test_a_key_authorized_by_name_whose_file_is_gone_is_revoked_by_that_name(tmp_path):
    pair = KeyDir(tmp_path).pair("old-device", role=Role.DEVICE)
    (tmp_path / "old-device.key").unlink()
    revoked = ballonet(tmp_path, "revoke", "old-device")
    assert revoked.returncode == 0, revoked.stderr
    assert KeyDir(tmp_path).authorized().roles(pair.public.decode()) == frozenset()


def test_a_missing_key_is_named_with_what_to_do(tmp_path):
    shown = ballonet(tmp_path, "show", "bob")
    assert shown.returncode == 1 and "no key 'bob'" in shown.stderr and "ballonet keys create bob" in shown.stderr


def test_processes_started_together_keep_every_grant_and_one_pair_per_name(tmp_path):
    """A run's guests (and two devices on key `device`) make their keys at the same moment.

    A real barrier, not a time: each process says it is ready on one pipe, then blocks on
    another until the test closes it, which wakes them all at once (EOF), and only once all
    are there; an instant chosen in advance is already past when they start on a loaded
    machine, and they would then make their keys one after another."""
    code = (
        "import os, sys; from wire.keys import KeyDir, Role\n"
        "os.write(int(sys.argv[1]), b'r')\n"
        "os.read(int(sys.argv[2]), 1)\n"  # EOF: the test closed its end, every process is here
        "print(KeyDir(sys.argv[3]).pair(sys.argv[4], role=Role(sys.argv[5])).public.decode())\n"
    )
    names = [(f"guest-{i}", "guest") for i in range(12)] + [("device", "device")] * 6
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    procs: list[subprocess.Popen] = []
    try:
        for name, role in names:
            procs.append(subprocess.Popen(
                [sys.executable, "-c", code, str(ready_w), str(go_r), str(tmp_path), name, role], stdout=subprocess.PIPE, text=True,
                cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), pass_fds=(ready_w, go_r)))
        os.close(ready_w)  # the children hold theirs: one that dies early ends the wait below with EOF
        os.close(go_r)
        ready_w = go_r = -1
        arrived = b""
        while len(arrived) < len(names):
            got = os.read(ready_r, len(names))
            if not got:
                break
            arrived += got
        assert len(arrived) == len(names), "a process died before the barrier"
        os.close(go_w)  # all of them go
        go_w = -1
        publics = [p.communicate(timeout=20)[0].strip() for p in procs]
    finally:
        for fd in (ready_r, ready_w, go_r, go_w):
            if fd >= 0:
                os.close(fd)
        for p in procs:  # a child hung past communicate's timeout (or never released) goes too
            if p.poll() is None:
                p.kill()
                p.wait()
    assert all(p.returncode == 0 for p in procs)
    authorized = KeyDir(tmp_path).authorized()
    assert {g.name for g in authorized.grants} == {n for n, _ in names}
    assert len(set(publics[-6:])) == 1  # one `device` pair, used by all six
    assert publics[-1] == KeyDir(tmp_path).public("device").decode()
    assert all(authorized.roles(p) for p in publics)


# -- a process's own keys ---------------------------------------------------------------------------


def test_a_secret_readable_by_others_is_refused_with_exit_status_2(procs, tmp_path):
    keys = KeyDir(tmp_path)
    keys.pair("leaked")
    os.chmod(keys.secret_file("leaked"), 0o644)
    result = cli(procs, "hypervisor", "list", "--keys", str(tmp_path), "--key", "leaked", "--admin-endpoint", procs.ipc("nowhere"))
    assert result.returncode == 2, result
    assert "leaked.key_secret is readable by others (mode 644)" in result.stderr and "chmod 600" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_authorized_file_writable_by_others_stops_a_server_at_start(procs, tmp_path):
    keys = KeyDir(tmp_path)
    keys.pair("hypervisor", role=Role.HYPERVISOR)
    os.chmod(keys.authorized_file, 0o666)
    server = procs.start("hypervisor", "hypervisor", "serve", "--keys", str(tmp_path),
                         "--guest-endpoint", procs.ipc("hv"), "--admin-endpoint", procs.ipc("adm"))
    assert server.wait(15) == 2
    log = procs.log("hypervisor")
    assert "authorized is writable by others (mode 666)" in log and "chmod go-w" in log


@pytest.mark.timeout(40)
def test_a_servers_key_is_made_on_first_use_0600_in_a_0700_directory_and_its_client_finds_it(procs, tmp_path):
    fresh = tmp_path / "fresh" / "keys"
    env = {KEYS_ENV: str(fresh)}
    procs.start("hypervisor", "hypervisor", "serve", "--memory", "64m", "--guest-endpoint", procs.ipc("hv"),
                "--admin-endpoint", procs.ipc("adm"), env=env)
    wait_for(lambda: (fresh / "hypervisor.key").exists(), 15, "the hypervisor's key")
    assert mode(fresh) == 0o700 and mode(fresh / "hypervisor.key_secret") == 0o600 and mode(fresh / "hypervisor.key") == 0o644
    info = cli(procs, "hypervisor", "info", "--admin-endpoint", procs.ipc("adm"), env=env)
    assert info.returncode == 0, info.stderr
    assert mode(fresh / "toolstack.key_secret") == 0o600
    roles = {g.name: g.role for g in KeyDir(fresh).authorized().grants}
    assert roles == {"hypervisor": Role.HYPERVISOR, "toolstack": Role.TOOLSTACK}


def test_insecure_off_loopback_is_refused_without_insecure_network(procs):
    result = cli(procs, "hypervisor", "serve", "--insecure", "--guest-endpoint", "tcp://0.0.0.0:5699", "--admin-endpoint", procs.ipc("adm"))
    assert result.returncode == 2
    assert "--insecure on tcp://0.0.0.0:5699" in result.stderr and "--insecure-network" in result.stderr


def namespace(**kw: object) -> argparse.Namespace:
    args = argparse.Namespace(key_dir=None, key="toolstack", insecure=False, insecure_network=False)
    vars(args).update(kw)
    return args


def test_insecure_network_confirms_it_and_warns(capsys):
    chosen = from_arguments(namespace(insecure=True, insecure_network=True), Role.TOOLSTACK, ["tcp://0.0.0.0:5600"])
    assert chosen.insecure
    assert "warning: --insecure: nothing is authenticated or encrypted" in capsys.readouterr().err
    from_arguments(namespace(insecure=True), Role.TOOLSTACK, ["tcp://127.0.0.1:5600", "ipc:///tmp/x"])  # loopback: no confirmation
    assert "warning" in capsys.readouterr().err
    with pytest.raises(SecurityError, match="only confirms --insecure"):
        from_arguments(namespace(insecure_network=True), Role.TOOLSTACK, [])


@pytest.mark.parametrize(
    ("endpoint", "local"),
    [
        ("ipc:///tmp/ballonet/hv", True),
        ("inproc://x", True),
        ("tcp://127.0.0.1:5600", True),
        ("tcp://127.8.9.10:5600", True),  # all of 127/8
        ("tcp://localhost:5600", True),
        ("tcp://[::1]:5600", True),
        ("tcp://[::ffff:127.0.0.1]:5600", True),
        ("tcp://0.0.0.0:5600", False),
        ("tcp://*:5600", False),
        ("tcp://eth0:5600", False),  # an interface: not provably loopback
        ("tcp://10.0.0.1:5600", False),
        ("tcp://[::]:5600", False),
        ("tcp://example.org:5600", False),
        ("tcp://127.0.0.1;10.0.0.1:5600", False),  # ZeroMQ's source;destination: the destination counts
        ("tcp://evil@127.0.0.1:5600", False),
        ("udp://127.0.0.1:5600", False),
        ("pgm://127.0.0.1;239.1.1.1:5600", False),
    ],
)
def test_is_local(endpoint, local):
    assert is_local(endpoint) is local


def test_keys_flag_wins_over_the_environment_which_wins_over_xdg(tmp_path):
    flag, env_dir, xdg, home = (tmp_path / n for n in ("flag", "env", "xdg", "home"))
    base = {"HOME": str(home), "XDG_CONFIG_HOME": str(xdg)}
    assert f"keys in {flag}\n" in ballonet(flag, "list", env={**base, KEYS_ENV: str(env_dir)}).stdout
    assert f"keys in {env_dir}\n" in ballonet(None, "list", env={**base, KEYS_ENV: str(env_dir)}).stdout
    assert f"keys in {xdg / 'ballonet'}\n" in ballonet(None, "list", env={**base, KEYS_ENV: ""}).stdout
    env = {k: v for k, v in os.environ.items() if k not in (KEYS_ENV, "XDG_CONFIG_HOME")}
    bare = subprocess.run([sys.executable, "-m", "wire.keys_cli", "keys", "list"], capture_output=True, text=True, timeout=20,
                          cwd=REPO, env={**env, "HOME": str(home), "PYTHONPATH": str(REPO)})
    assert f"keys in {home / '.config' / 'ballonet'}\n" in bare.stdout


def test_default_dir_order(monkeypatch, tmp_path):
    monkeypatch.setenv(KEYS_ENV, str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert default_dir(str(tmp_path / "flag")) == tmp_path / "flag"
    assert default_dir() == tmp_path / "env"
    monkeypatch.delenv(KEYS_ENV)
    assert default_dir() == tmp_path / "xdg" / "ballonet"


# -- a client waits a moment for its server's key -------------------------------------------------


@pytest.fixture
def own_setting(monkeypatch):
    """setup() configures the process: put the tests' setting back afterwards."""
    monkeypatch.setattr(security, "_current", security.current())


def test_a_server_key_that_never_comes_is_exit_2_with_what_to_do(own_setting, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(security, "SERVER_KEY_WAIT_S", 0.4)
    monkeypatch.setattr(security, "SERVER_KEY_TOLD_S", 0.1)
    failed = security.setup(namespace(key_dir=str(tmp_path)), Role.TOOLSTACK, ["ipc:///x"], "hypervisor list", (Server.HYPERVISOR,))
    err = capsys.readouterr().err
    assert failed == 2
    assert f"hypervisor list: waiting up to 0.4 s for {tmp_path / 'hypervisor.key'}" in err
    assert f"hypervisor list: no public key of hypervisor in {tmp_path} after waiting 0.4 s" in err
    assert "start `hypervisor serve` with the same key directory" in err and "ballonet keys import hypervisor" in err


def test_a_server_key_written_while_the_client_waits_is_taken(own_setting, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(security, "SERVER_KEY_WAIT_S", 10.0)
    server = threading.Timer(0.3, lambda: KeyDir(tmp_path).pair("irqbus"))
    server.start()
    try:
        assert security.setup(namespace(key_dir=str(tmp_path)), Role.TOOLSTACK, ["ipc:///x"], "irqbus show", (Server.IRQBUS,)) is None
    finally:
        server.join()
    assert security.current().server_key(Server.IRQBUS) == KeyDir(tmp_path).public("irqbus")
    assert capsys.readouterr().err == ""


# -- the file formats --------------------------------------------------------------------------------


def test_authorized_lines_are_checked_as_a_grant_is(tmp_path):
    key = KeyDir(tmp_path).pair("d").public.decode()
    assert parse_authorized(f"device {key} d guests=1,2\n").device_scope(key) == {1, 2}
    for bad, words in [(f"device {key} d guests=-4", "no domid"), (f"guest {key} d guests=1", "device key only"),
                       (f"root {key} d", "unknown role"), (f"device {key[:-1]} d", "not a Z85")]:
        with pytest.raises(KeyFileError, match=words):
            parse_authorized(bad + "\n")
    with pytest.raises(KeyFileError, match="device key only"):
        KeyDir(tmp_path).authorize(Grant(Role.GUEST, key, "d", frozenset({1})))


def test_security_curve_makes_the_key_and_describes_it_without_its_secret(tmp_path):
    chosen = Security.curve(KeyDir(tmp_path), "toolstack", Role.TOOLSTACK)
    described = chosen.describe()
    assert described["public_key"] == chosen.own.public.decode()
    assert chosen.own.secret.decode() not in repr(described)


def test_a_key_directory_others_may_write_to_is_refused(procs, tmp_path):
    keys = KeyDir(tmp_path / "keys")
    keys.pair("toolstack", role=Role.TOOLSTACK)
    os.chmod(keys.path, 0o777)  # anyone could put their own hypervisor.key or authorized here
    result = cli(procs, "hypervisor", "list", "--keys", str(keys.path), "--admin-endpoint", procs.ipc("adm"))
    assert result.returncode == 2
    assert "is writable by others (mode 777)" in result.stderr and "chmod 700" in result.stderr


def test_a_revoked_key_is_not_granted_again_when_its_process_restarts(tmp_path):
    """Created on first use *and* authorized then, never after: a revocation sticks."""
    keys = KeyDir(tmp_path)
    public = keys.pair("guest-web", role=Role.GUEST).public.decode()
    assert keys.revoke(public) == 1
    assert keys.pair("guest-web", role=Role.GUEST).public.decode() == public
    assert keys.authorized().roles(public) == frozenset()


def test_the_zap_thread_leaves_the_stop_signals_to_the_main_thread(tmp_path):
    """A server's ZAP handler thread blocks SIGTERM and SIGINT, as wire/signals expects of
    every thread but the main one (it blocks them there to hold off a second one)."""
    import zmq

    context = zmq.Context()
    sock = context.socket(zmq.ROUTER)
    try:
        before = {t.native_id for t in threading.enumerate()}
        Security.curve(KeyDir(tmp_path), "hypervisor").secure_server(sock)
        started = [t for t in threading.enumerate() if t.native_id not in before]
        assert started, "no ZAP thread started"
        for thread in started:
            status = Path(f"/proc/self/task/{thread.native_id}/status").read_text()
            blocked = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigBlk:")), 16)
            assert blocked & (1 << (signal.SIGTERM - 1)) and blocked & (1 << (signal.SIGINT - 1)), f"{thread.name}: SigBlk {blocked:x}"
    finally:
        sock.close(0)


def test_a_key_directory_that_cannot_be_made_is_exit_2_with_what_to_do(tmp_path):
    """Not a traceback: the directory's error, and how to choose another."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = subprocess.run(
        [sys.executable, "-m", "hypervisor", "list", "--admin-endpoint", f"ipc://{tmp_path}/none"],
        env={**os.environ, "BALLONET_KEYS": str(blocker / "keys")}, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"key directory {blocker / 'keys'}" in result.stderr and "--keys DIR" in result.stderr


def test_an_authorized_file_vetted_and_unchanged_is_not_parsed_again_but_its_mode_is_always_checked(tmp_path, monkeypatch):
    """A fleet's guests each vet `authorized` at start (wire.security.setup); the fleet parsed it
    before forking them, and a file of a thousand guests' grants parsed a thousand times was
    most of their start."""
    from wire import keys as keys_module

    keys = KeyDir(tmp_path)
    keys.ensure_pairs([f"guest-g{i}" for i in range(5)], Role.GUEST)
    parsed = []
    real = keys_module.parse_authorized
    monkeypatch.setattr(keys_module, "parse_authorized", lambda text, where="": parsed.append(where) or real(text, where))
    keys.vet_authorized()
    keys.vet_authorized()
    KeyDir(tmp_path).vet_authorized()  # another KeyDir of the same directory: the same file
    assert len(parsed) == 1
    keys.pair("toolstack", role=Role.TOOLSTACK)  # authorized rewritten: vetted again
    keys.vet_authorized()
    assert len(parsed) == 3  # pair's own read, then the vet's
    os.chmod(keys.authorized_file, 0o666)
    with pytest.raises(KeyFileError, match="writable by others"):
        keys.vet_authorized()
    os.chmod(keys.authorized_file, 0o644)
    keys.authorized_file.write_text(keys.authorized_file.read_text() + "nonsense\n")
    with pytest.raises(KeyFileError, match="authorized:8"):
        keys.vet_authorized()
