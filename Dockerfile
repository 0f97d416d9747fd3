# ballonet: one image for every process (hypervisor, guest, irqbus, the toolstack).
#
# The base image is a build argument, so the image builds where public registries are
# unreachable: `scripts/compose-smoke.sh --images-only` builds a Debian bookworm base with
# debootstrap (ballonet-base:bookworm) and passes it here as BASE. Any image with Python 3.11+
# and its venv module will do.
#
#   docker build -t ballonet:local .                                        # python:3.11-slim
#   docker build --build-arg BASE=ballonet-base:bookworm -t ballonet:local .
#
# pip runs in the build. Behind a TLS-intercepting proxy it needs that proxy's CA: the local base
# carries the host's CA bundle and sets PIP_CERT to it; with another base, put the CA in the base
# and pass --build-arg PIP_CERT=/path/inside/the/image. Plain Dockerfile syntax only (no
# RUN --mount), so the legacy builder, BuildKit and docker-compose v1 all build it.
ARG BASE=python:3.11-slim
FROM ${BASE}

# Optional: a CA bundle path inside the base image for pip (empty: the base's own setting, if any).
ARG PIP_CERT=

ENV VIRTUAL_ENV=/opt/ballonet \
    PATH=/opt/ballonet/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Dependencies and build requirements first, read from pyproject.toml (one source of truth), so
# editing the code does not reinstall them; wheel lets older setuptools build without isolation.
COPY pyproject.toml /src/pyproject.toml
RUN set -eu; \
    if [ -n "${PIP_CERT:-}" ]; then export PIP_CERT; else unset PIP_CERT 2>/dev/null || true; fi; \
    python3 -m venv "$VIRTUAL_ENV"; \
    python3 -c 'import tomllib; p = tomllib.load(open("/src/pyproject.toml", "rb")); print("\n".join(["wheel"] + p["build-system"]["requires"] + p["project"]["dependencies"]))' > /tmp/requirements.txt; \
    pip install -q -r /tmp/requirements.txt; \
    rm /tmp/requirements.txt

# The project itself (see .dockerignore for what stays out).
COPY . /src
RUN set -eu; \
    if [ -n "${PIP_CERT:-}" ]; then export PIP_CERT; else unset PIP_CERT 2>/dev/null || true; fi; \
    pip install -q --no-deps --no-build-isolation /src; \
    rm -rf /src; \
    hypervisor --help > /dev/null; guest --help > /dev/null

# An unprivileged user; it writes only to /tmp and /var/lib/ballonet (the hypervisor's journal,
# a named volume in compose.yaml: a new volume takes this directory's owner).
RUN useradd --uid 10001 --user-group --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin ballonet \
    && mkdir -p /var/lib/ballonet && chown 10001:10001 /var/lib/ballonet
USER 10001:10001
WORKDIR /tmp

# Ports: 5600 guests -> hypervisor, 5601 toolstack -> hypervisor, 5602 irqbus.
EXPOSE 5600 5601 5602
CMD ["hypervisor", "--help"]
