"""swarm.yaml, the stack `docker stack deploy` runs, keeps the invariants its deployment relies on
(README, "Past one machine: Docker Swarm"): read as deployed with every setting at its default,
no Docker needed. scripts/swarm-smoke.sh deploys it for real."""

from __future__ import annotations

import ipaddress
import re
import stat
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from tests.processes import REPO

pytestmark = pytest.mark.timeout(10)

SWARM = REPO / "swarm.yaml"
COMPOSE = REPO / "compose.yaml"
SERVER_SERVICES = {"hypervisor", "irqbus"}
HOST_LABEL = "ballonet.host"
_VARIABLE = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def interpolated(path: Path) -> str:
    """The file as `docker stack deploy` reads it with no BALLONET_* set: each ${NAME:-default}
    its default. A ${NAME} without one would deploy empty, so it fails here."""

    def default(match: re.Match[str]) -> str:
        assert match.group(2) is not None, f"{path.name}: ${{{match.group(1)}}} has no default"
        return match.group(2)

    return _VARIABLE.sub(default, path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def stack() -> dict:
    return yaml.safe_load(interpolated(SWARM))


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(interpolated(COMPOSE))


def endpoints(service: dict) -> dict[str, tuple[str, int]]:
    """The service's tcp:// endpoints from its environment: variable -> (host, port)."""
    found = {}
    for name, value in (service.get("environment") or {}).items():
        if isinstance(value, str) and value.startswith("tcp://"):
            url = urlsplit(value)
            found[name] = (url.hostname, url.port)
    return found


def secret_targets(service: dict) -> set[str]:
    return {s["target"] for s in service.get("secrets", [])}


def image_user(dockerfile: Path = REPO / "Dockerfile") -> str:
    users = re.findall(r"^USER\s+(\S+)", dockerfile.read_text(encoding="utf-8"), re.MULTILINE)
    return users[-1].split(":")[0]


def test_a_version_debians_docker_20_10_deploys(stack: dict) -> None:
    # docker/cli 20.10's loader refuses a file without `version`; 3.8 has every key used here
    assert stack["version"] == "3.8"


def test_every_endpoint_names_a_service_of_the_stack(stack: dict) -> None:
    services = stack["services"]
    for name, service in services.items():
        for variable, (host, _port) in endpoints(service).items():
            assert host in services, f"{name}: {variable} points at {host}, not a service of this stack"


def test_services_others_connect_to_resolve_to_their_tasks_not_a_virtual_ip(stack: dict) -> None:
    # A VIP needs IPVS; without it a guest gets "No route to host" (README): dnsrr everywhere,
    # and on every server an endpoint names.
    services = stack["services"]
    targets = {host for s in services.values() for host, _ in endpoints(s).values()}
    assert targets == SERVER_SERVICES
    for name, service in services.items():
        assert service["deploy"]["endpoint_mode"] == "dnsrr", name


def test_published_ports_are_host_mode_and_the_endpoints_ports(stack: dict) -> None:
    services = stack["services"]
    published = {}
    for name, service in services.items():
        for port in service.get("ports", []):
            assert isinstance(port, dict), f"{name}: the long syntax, to say mode: host"
            assert port["mode"] == "host", f"{name}: port {port['target']} through the routing mesh (IPVS)"
            assert port["published"] == port["target"]
            published[port["target"]] = name
    wanted = {port: host for s in services.values() for host, port in endpoints(s).values()}
    assert published == wanted


def test_servers_are_pinned_to_the_labelled_node_and_guests_spread(stack: dict) -> None:
    services = stack["services"]
    for name in SERVER_SERVICES:
        deploy = services[name]["deploy"]
        assert f"node.labels.{HOST_LABEL} == true" in deploy["placement"]["constraints"], name
        assert deploy["replicas"] == 1
    guest = services["guest"]["deploy"]
    assert guest["replicas"] == 10
    assert "constraints" not in guest.get("placement", {})
    assert all(set(p) == {"spread"} and p["spread"].startswith("node.labels.") for p in guest["placement"]["preferences"])
    # the label the smoke test sets is the one the constraint asks for
    assert f"--label-add {HOST_LABEL}=true" in (REPO / "scripts" / "swarm-smoke.sh").read_text(encoding="utf-8")


def test_one_overlay_network_with_its_own_private_subnet(stack: dict) -> None:
    (name, network), = stack["networks"].items()
    assert network["driver"] == "overlay"
    (config,) = network["ipam"]["config"]
    subnet = ipaddress.ip_network(config["subnet"])
    assert subnet.is_private and subnet.prefixlen <= 24
    # not the ranges Docker hands out by itself (bridges 172.17-31/16, swarm's 10.0.0.0/24 ...)
    assert not subnet.overlaps(ipaddress.ip_network("172.16.0.0/12"))
    assert not subnet.overlaps(ipaddress.ip_network("10.0.0.0/16"))
    for service_name, service in stack["services"].items():
        assert service["networks"] == [name], service_name


def test_images_come_from_the_registry_variable() -> None:
    text = SWARM.read_text(encoding="utf-8")
    images = re.findall(r"^\s*image:\s*(\S+)", text, re.MULTILINE)
    assert images and all(i.startswith("${BALLONET_REGISTRY:-127.0.0.1:5000}/") for i in images)
    stack = yaml.safe_load(interpolated(SWARM))
    assert all("build" not in s for s in stack["services"].values())


def test_each_service_gets_the_secrets_compose_gives_it(stack: dict, compose: dict) -> None:
    wanted = {
        "hypervisor": {"hypervisor.key", "hypervisor.key_secret", "irqbus.key", "authorized"},
        "irqbus": {"irqbus.key", "irqbus.key_secret", "authorized"},
        "guest": {"hypervisor.key", "irqbus.key"},
        "device": {"device.key", "device.key_secret", "irqbus.key"},
        "toolstack": {"toolstack.key", "toolstack.key_secret", "hypervisor.key", "irqbus.key"},
    }
    assert {name: secret_targets(s) for name, s in stack["services"].items()} == wanted
    assert {name: secret_targets(s) for name, s in compose["services"].items()} == wanted
    for name, service in stack["services"].items():  # the same files behind the same targets
        assert {(s["source"], s["target"]) for s in service["secrets"]} == {
            (s["source"], s["target"]) for s in compose["services"][name]["secrets"]
        }, name
    assert set(stack["secrets"]) == set(compose["secrets"])
    for name, secret in stack["secrets"].items():
        assert secret["file"].startswith("./swarm-keys/"), name


def test_secrets_are_the_image_users_and_a_secret_key_is_its_alone(stack: dict) -> None:
    uid = image_user()
    for name, service in stack["services"].items():
        for secret in service["secrets"]:
            assert (secret["uid"], secret["gid"]) == (uid, uid), (name, secret["target"])
            mode = secret["mode"]
            if secret["target"].endswith(".key_secret"):
                assert mode == 0o400, (name, secret["target"])
            else:  # public keys and `authorized`: readable, writable by nobody
                assert not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH), (name, secret["target"])


def test_no_key_in_any_environment(stack: dict) -> None:
    for name, service in stack["services"].items():
        environment = service.get("environment") or {}
        for variable, value in environment.items():
            assert "SECRET" not in variable.upper(), (name, variable)
            assert not re.fullmatch(r"[0-9A-Za-z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}", str(value)), (name, variable)
        # BALLONET_KEYS is a directory: the secrets' own, or the guest's tmpfs
        keys = environment["BALLONET_KEYS"]
        tmpfs = [v["target"] for v in service.get("volumes", []) if isinstance(v, dict) and v.get("type") == "tmpfs"]
        assert keys == "/run/secrets" or any(keys.startswith(t + "/") for t in tmpfs), name


def test_the_guest_makes_its_key_pair_in_memory(stack: dict) -> None:
    guest = stack["services"]["guest"]
    keys = guest["environment"]["BALLONET_KEYS"]
    assert keys.startswith("/run/ballonet/")
    assert {"type": "tmpfs", "target": "/run/ballonet"}.items() <= guest["volumes"][0].items()
    assert f"mkdir -p -m 700 {keys}" in " ".join(guest["command"])


def test_settings_match_compose(stack: dict, compose: dict) -> None:
    # the same commands but for sizes: a swarm host is sized for its 10 to 20 guests
    for name in ("irqbus", "guest", "device", "toolstack"):
        assert stack["services"][name]["command"] == compose["services"][name]["command"], name
    assert stack["services"]["hypervisor"]["command"].replace("--memory 8g", "--memory 2g") == compose["services"]["hypervisor"]["command"]
