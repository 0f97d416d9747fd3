#!/usr/bin/env bash
# The compose stack's key directory (compose.yaml's secrets), made before the first `up`:
#
#   scripts/compose-keys.sh [DIR]           # DIR: $BALLONET_COMPOSE_KEYS, else ./keys (beside compose.yaml)
#   scripts/compose-keys.sh --swarm [DIR]   # for swarm.yaml: DIR $BALLONET_SWARM_KEYS, else ./swarm-keys
#
# Key pairs (ZeroMQ certificate files, docs/protocol.md "Authentication"), and their grants in
# DIR/authorized:
#   hypervisor  role hypervisor (it raises virqs on irqbus and tells it who owns each domain)
#   irqbus      the irqbus server's key (no role)
#   toolstack   role toolstack, for `docker compose run --rm toolstack ...`
#   device      role device on guest 1 only (compose's emulated NIC)
#   host        role toolstack, for your CLIs on the host: `hypervisor list --keys DIR --key host`
# Guests need none of these: each makes its own in its container.
#
# Compose (without swarm) bind-mounts a secret's file as it is on the host: the owner and mode
# inside are the host's, and ballonet refuses a secret key readable by others. So the services'
# secrets are made 0600 and owned by the image's user (10001), `host.key_secret` 0600 and
# yours, the rest (public keys, `authorized`) yours, readable. The keys are made by the image's
# own `ballonet keys`, run as root in a throwaway container (no network): no Python needed on
# the host, and no sudo for a member of the docker group. Keys that exist are kept (run it
# again to repair owners and modes); to replace one, delete its two files first.
#
# Swarm (--swarm) copies each secret into the swarm's store when the stack is deployed, and mounts
# it with the uid, gid and mode swarm.yaml gives: so every file stays yours (the secrets 0600),
# readable by the `docker stack deploy` you run.
#
# The services' uid is the same number on the host: an account there with that uid owns their
# secrets too. DIR stays 0700 and yours, so it cannot reach them by path; but it can once DIR
# is opened up, moved or copied with its owners. The script warns when the host has such an
# account (getent passwd UID).
#
# Environment: BALLONET_IMAGE (ballonet:local; build it first: `docker compose build` or
# `scripts/compose-smoke.sh --images-only`).
set -euo pipefail
cd "$(dirname "$0")/.."

SWARM=0
if [ "${1:-}" = --swarm ]; then SWARM=1; shift; fi
if [ "$SWARM" = 1 ]; then
  DIR=${1:-${BALLONET_SWARM_KEYS:-./swarm-keys}}
else
  DIR=${1:-${BALLONET_COMPOSE_KEYS:-./keys}}
fi
IMAGE=${BALLONET_IMAGE:-ballonet:local}

if ! docker image inspect "$IMAGE" > /dev/null 2>&1; then
  echo "compose-keys: no image $IMAGE here: build it first (docker compose build, or scripts/compose-smoke.sh --images-only)" >&2
  exit 1
fi
# the user the services run as (the Dockerfile's USER), who must own their secrets
SERVICE_USER=$(docker image inspect --format '{{.Config.User}}' "$IMAGE")
case "$SERVICE_USER" in
  "" | 0 | 0:* | root | root:*) echo "compose-keys: $IMAGE runs as root; expected the Dockerfile's unprivileged user" >&2; exit 1 ;;
  *:*) ;;
  *) SERVICE_USER=$SERVICE_USER:$SERVICE_USER ;;
esac
SERVICE_UID=${SERVICE_USER%%:*}
if [ "$SWARM" = 1 ]; then SERVICE_USER=""; SERVICE_UID=swarm; fi # swarm sets the owner inside
case "$SERVICE_UID" in
  *[!0-9]*) ;; # a user name: its uid is the image's business, not comparable with the host's
  *)
    if account=$(getent passwd "$SERVICE_UID"); then
      echo "compose-keys: warning: uid $SERVICE_UID, which the services run as and which owns their secret keys," \
        "is also host account '${account%%:*}': it owns those secrets on this host too. $DIR stays 0700 and yours," \
        "which keeps it out: never open that directory up, nor copy it as root keeping its owners." >&2
    fi
    ;;
esac

mkdir -p "$DIR"
chmod 700 "$DIR"
DIR=$(cd "$DIR" && pwd)
for f in hypervisor irqbus toolstack device host; do
  for suffix in .key .key_secret; do
    # what `docker compose up` leaves when it ran before this script: Docker makes a missing
    # bind-mount source a directory
    if [ -d "$DIR/$f$suffix" ]; then
      rmdir "$DIR/$f$suffix" 2> /dev/null || { echo "compose-keys: $DIR/$f$suffix is a directory; remove it" >&2; exit 1; }
    fi
  done
done
[ ! -d "$DIR/authorized" ] || rmdir "$DIR/authorized"

# shellcheck disable=SC2016 # expanded by the container's shell
docker run --rm --network none --user 0:0 -v "$DIR:/keys" \
  -e SERVICE_USER="$SERVICE_USER" -e HOST_USER="$(id -u):$(id -g)" \
  "$IMAGE" sh -euc '
    make() { # NAME [ballonet keys create options]: unless it exists
      name=$1; shift
      if [ -e "/keys/$name.key_secret" ]; then echo "$name: kept"; else ballonet keys --keys /keys create "$name" "$@"; fi
    }
    make hypervisor --role hypervisor
    make irqbus
    make toolstack --role toolstack
    make device --role device --guest 1
    make host --role toolstack
    chown -R "$HOST_USER" /keys
    chmod 600 /keys/*.key_secret
    chmod 644 /keys/*.key /keys/authorized
    if [ -n "$SERVICE_USER" ]; then
      for name in hypervisor irqbus toolstack device; do chown "$SERVICE_USER" "/keys/$name.key_secret"; done
    fi
  '
if [ "$SWARM" = 1 ]; then reads='swarm.yaml reads ${BALLONET_SWARM_KEYS:-./swarm-keys}'; else reads='compose.yaml reads ${BALLONET_COMPOSE_KEYS:-./keys}'; fi
echo "keys in $DIR ($reads); from the host: hypervisor list --keys $DIR --key host"
