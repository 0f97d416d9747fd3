"""Where each process listens by default, and the environment variables that override it."""

from __future__ import annotations

import os

HYPERVISOR_ENV = "BALLONET_HYPERVISOR"
ADMIN_ENV = "BALLONET_ADMIN"
IRQBUS_ENV = "BALLONET_IRQBUS"

DEFAULT_HYPERVISOR = "tcp://127.0.0.1:5600"
DEFAULT_ADMIN = "tcp://127.0.0.1:5601"
DEFAULT_IRQBUS = "tcp://127.0.0.1:5602"

_DEFAULTS = {HYPERVISOR_ENV: DEFAULT_HYPERVISOR, ADMIN_ENV: DEFAULT_ADMIN, IRQBUS_ENV: DEFAULT_IRQBUS}


def endpoint(flag_value: str | None, env_name: str) -> str:
    """A flag wins over the environment, which wins over the single-machine default."""
    if flag_value:
        return flag_value
    return os.environ.get(env_name) or _DEFAULTS[env_name]

