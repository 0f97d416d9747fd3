"""Issue 13's attacks on `hypervisor serve`, end to end: real processes, the CLIs, CURVE with
the run's key directory (tests/conftest.py). Each attack is refused with a clear error and
leaves the books, the targets and the victim's own view as they were."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.processes import Host, wait_for
from wire.client import RpcClient
from wire.errors import RemoteError
from wire.keys import KeyDir, Role
from wire.security import Security, Server

pytestmark = pytest.mark.timeout(60)


def keys() -> KeyDir:
    return KeyDir(os.environ["BALLONET_KEYS"])


def client(endpoint: str, name: str, role: Role | None = None, client_id: str | None = None) -> RpcClient:
    """A client with key NAME of the run's key dir (created on first use; with `role`, authorized)."""
    kd = keys()
    return RpcClient(endpoint, server=Server.HYPERVISOR, security=Security(kd, kd.pair(name, role=role)), client_id=client_id, timeout=2.0)


def refused(call) -> RemoteError:
    with pytest.raises(RemoteError) as err:
        call()
    return err.value


@pytest.fixture
def host(procs):
    return Host(procs, memory="64m")


@pytest.fixture
def victim(host):
    """A guest's domain of 1024 pages, target 1024, registered with the guest's own key."""
    c = client(host.guest_endpoint, "victim-guest", Role.GUEST, client_id="victim-client-0123456789")
    c.call("register", {"name": "victim", "memory_pages": 1024, "max_pages": 4096})
    yield c
    c.close()


def held_pages(c: RpcClient) -> int:
    """What the guest itself holds, from its own memory map."""
    return sum(count for _, count in c.call("memory_map")["extents"])


def test_the_admin_endpoint_refuses_a_guest_key_and_an_unknown_key_and_changes_nothing(procs, host, victim):
    keys().pair("stranger")  # a key in no line of `authorized`
    before = host.domains()["victim"]
    result = host.tool("mem-set", "victim", "1m", "--key", "stranger")
    assert result.returncode == 1
    assert "EACCES" in result.stderr and "is not a toolstack key" in result.stderr and "--role toolstack" in result.stderr, result.stderr
    assert host.tool("list", "--key", "stranger").returncode == 1  # read-only operations too
    with client(host.admin_endpoint, "victim-guest") as as_guest:  # the victim's own key, on the admin endpoint
        err = refused(lambda: as_guest.call("mem_set", {"domain": "victim", "target_pages": 1}))
        assert err.code == "EACCES" and "not a toolstack key" in err.message
        assert refused(lambda: as_guest.call("destroy", {"domain": "victim"})).code == "EACCES"
    after = host.domains()["victim"]
    assert (after["target_pages"], after["current_pages"], after["max_pages"]) == (before["target_pages"], 1024, 4096)
    assert victim.call("get_target")["target_pages"] == 1024
    assert host.tool("audit").returncode == 0
    refusals = [e for e in procs.log_events("hypervisor") if e.get("event") == "request refused" and e.get("error") == "EACCES"]
    assert len(refusals) == 4 and all(e["level"] == "warning" and len(e["key"]) == 8 for e in refusals), refusals


def test_a_stolen_client_string_grants_no_pages_into_the_victims_domain(procs, host, victim):
    """The victim's client string, as an attacker would read it from a log or the wire, with
    the attacker's own key: it names nothing of the victim's."""
    start = victim.call("memory_map")["extents"][0][0]
    with client(host.guest_endpoint, "thief", client_id=victim.client_id) as thief:
        assert refused(lambda: thief.call("increase_reservation", {"nr_pages": 512})).code == "ESRCH"
        assert refused(lambda: thief.call("decrease_reservation", {"extents": [[start, 512]]})).code == "ESRCH"
        assert refused(lambda: thief.call("shutdown")).code == "ESRCH"
    assert held_pages(victim) == 1024 == host.domains()["victim"]["current_pages"]
    assert host.tool("audit").returncode == 0
    log = procs.log("hypervisor")
    assert victim.client_id not in log  # the credential of an insecure client is never written down
    assert victim.client_id[:4] in log  # but enough of it to follow one client through the log


def test_a_toolstack_key_revoked_mid_session_is_refused_on_the_same_connection(procs, host, victim):
    with client(host.admin_endpoint, "operator", Role.TOOLSTACK) as operator:
        operator.call("mem_set", {"domain": "victim", "target_pages": 900})
        revoke = procs.run("wire.keys_cli", "keys", "revoke", "operator")
        assert revoke.returncode == 0, revoke.stderr

        def refused_now() -> RemoteError | None:
            try:
                operator.call("info")
            except RemoteError as err:
                return err
            return None

        err = wait_for(refused_now, 10, "the revocation to apply")  # the gate looks every 0.25 s
        assert err.code == "EACCES"
        assert refused(lambda: operator.call("mem_set", {"domain": "victim", "target_pages": 1})).code == "EACCES"
    assert host.domains()["victim"]["target_pages"] == 900


def test_guests_authorized_refuses_an_unknown_key_and_registers_an_authorized_guest(procs):
    host = Host(procs, memory="64m", extra=("--guests", "authorized"))
    keys().pair("stranger")
    stranger = host.guest("intruder", "--memory", "4m", "--key", "stranger")
    assert stranger.wait(30) != 0
    assert "EACCES" in procs.log("intruder") and "is not a guest key" in procs.log("intruder")
    host.guest("web", "--memory", "4m")  # `guest run`'s own key, guest-web: role guest on first use
    host.wait_registered("web")
    assert set(host.domains()) == {"web"}


def test_a_wrong_server_key_says_the_handshake_failed(host, tmp_path):
    """A client whose key dir has another `hypervisor.key` than the server's."""
    other = KeyDir(tmp_path / "keys")
    other.pair("hypervisor")  # not the running hypervisor's
    shutil.copy(keys().secret_file("toolstack"), other.secret_file("toolstack"))
    shutil.copy(keys().public_file("toolstack"), other.public_file("toolstack"))
    os.chmod(other.secret_file("toolstack"), 0o600)
    result = host.procs.run("hypervisor", "info", "--admin-endpoint", host.admin_endpoint, "--keys", str(other.path), "--timeout", "0.3")
    assert result.returncode == 1
    assert "handshake failed" in result.stderr, result.stderr
