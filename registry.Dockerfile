# A local image registry for the swarm stack (swarm.yaml), from Debian's `docker-registry`
# package (the Distribution registry, v2 API) on the local base image: no image pulled from a
# public registry. scripts/swarm-smoke.sh builds and runs it; by hand:
#
#   docker build -t ballonet-registry:bookworm --build-arg BASE=ballonet-base:bookworm - < registry.Dockerfile
#   docker run -d --name registry -p 127.0.0.1:5000:5000 ballonet-registry:bookworm
#
# dockerd trusts a registry on 127.0.0.1 over plain HTTP; for one that other nodes reach by
# name, give it TLS or list it in each node's "insecure-registries" (README, "Past one machine").
ARG BASE=ballonet-base:bookworm
FROM ${BASE}

# policy-rc.d: the package's maintainer scripts must not start a daemon inside the build.
RUN set -eu; \
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; \
    apt-get update -q; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends docker-registry; \
    rm -rf /usr/sbin/policy-rc.d /var/lib/apt/lists/* /var/cache/apt/archives/*.deb; \
    docker-registry --version

# Our config, not the package's (which asks for htpasswd logins): HTTP on :5000, no logins (it
# is published on 127.0.0.1 only, or behind your own TLS and firewall), blobs under
# /var/lib/docker-registry (the package's user's; gone with the container unless a volume).
RUN printf '%s\n' \
      'version: 0.1' \
      'log: {level: warn, fields: {service: registry}}' \
      'storage: {filesystem: {rootdirectory: /var/lib/docker-registry}, delete: {enabled: true}}' \
      'http: {addr: ":5000", headers: {X-Content-Type-Options: [nosniff]}}' \
      > /etc/docker/registry/ballonet.yml
USER docker-registry
EXPOSE 5000
CMD ["docker-registry", "serve", "/etc/docker/registry/ballonet.yml"]
