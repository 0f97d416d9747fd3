# Shared by scripts/compose-smoke.sh and scripts/swarm-smoke.sh (sourced, not run): logging with
# step timings, Docker installed and its daemon running, the local base image (debootstrap; no
# registry) and the project image built on it, and a poll-until helper.
#
# The caller sets SMOKE (its name, for the log prefix) and `set -euo pipefail`, sources this file
# from the repository's root, calls docker_lib_init, and ends its EXIT trap, once its own
# teardown is done, with `finish_run "$rc"`.
#
# Environment:
#   BALLONET_BASE   base image to build on (default ballonet-base:bookworm, built here when
#                   missing or made by an older recipe; set e.g. python:3.11-slim to skip that)
#   BALLONET_IMAGE  the project image's tag (default ballonet:local)
#   BALLONET_DEBIAN_MIRROR  for debootstrap (default http://deb.debian.org/debian)
#   BALLONET_KEEP_DOCKERD=1 leave a dockerd that the script started running afterwards
# shellcheck shell=bash

BASE_IMAGE=${BALLONET_BASE:-ballonet-base:bookworm}
DEFAULT_BASE=ballonet-base:bookworm
BASE_RECIPE=1 # bump when build_base's recipe changes: a cached base with another label is rebuilt
IMAGE=${BALLONET_IMAGE:-ballonet:local}
MIRROR=${BALLONET_DEBIAN_MIRROR:-http://deb.debian.org/debian}

docker_lib_init() {
  export PATH="$PATH:/usr/sbin:/sbin"
  export DEBIAN_FRONTEND=noninteractive
  WORK=$(mktemp -d "/var/tmp/ballonet-$SMOKE.XXXXXX")
  START=$EPOCHREALTIME
  STEP_START=$START
  TIMINGS=()
  DOCKERD_PID=""
}

elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
say() { echo "[$SMOKE $(elapsed "$START")s] $*"; }
step() { STEP_START=$EPOCHREALTIME; say "== $*"; }
done_step() { local t; t=$(elapsed "$STEP_START"); TIMINGS+=("$(printf '%6ss  %s' "$t" "$1")"); say "   $1: ${t}s"; }
fail() { say "FAIL: $*"; exit 1; }

# Run a command quietly into a log file; on failure show its tail.
quiet() {
  local name=$1; shift
  if ! "$@" > "$WORK/$name.log" 2>&1; then
    tail -n 60 "$WORK/$name.log"
    fail "$name failed: $*"
  fi
}

have_compose() { docker compose version > /dev/null 2>&1 || command -v docker-compose > /dev/null; }

# Docker's client and daemon (and compose, with --compose), debootstrap for the default base:
# installed from Debian's packages when missing; then dockerd started unless one answers.
ensure_docker() {
  local missing=()
  command -v docker > /dev/null || missing+=(docker.io)
  command -v dockerd > /dev/null || missing+=(docker.io)
  if [ "${1:-}" = --compose ]; then have_compose || missing+=(docker-compose); fi
  if [ "$BASE_IMAGE" = "$DEFAULT_BASE" ] && ! command -v debootstrap > /dev/null; then missing+=(debootstrap); fi
  if [ "${#missing[@]}" -gt 0 ]; then
    [ "$(id -u)" = 0 ] || fail "need root to install ${missing[*]}"
    say "installing ${missing[*]} from Debian's packages"
    quiet apt-update timeout 600 apt-get update -q
    # shellcheck disable=SC2046 # one package per word
    quiet apt-install timeout 900 apt-get install -y -q --no-install-recommends $(printf '%s\n' "${missing[@]}" | sort -u)
    done_step "install Docker packages (${missing[*]})"
  fi

  if ! docker info > /dev/null 2>&1; then
    STEP_START=$EPOCHREALTIME
    if [ -d /run/systemd/system ] && systemctl start docker 2> /dev/null; then
      say "started docker with systemd"
    else
      say "starting dockerd (log in $WORK/dockerd.log while this runs)"
      dockerd > "$WORK/dockerd.log" 2>&1 < /dev/null &
      DOCKERD_PID=$!
    fi
    for _ in $(seq 1 120); do
      docker info > /dev/null 2>&1 && break
      [ -z "$DOCKERD_PID" ] || kill -0 "$DOCKERD_PID" 2> /dev/null || fail "dockerd exited"
      sleep 0.5
    done
    docker info > /dev/null 2>&1 || fail "dockerd did not come up within 60 s"
    done_step "start dockerd"
  fi
  say "docker: client $(docker version --format '{{.Client.Version}}' 2>/dev/null), server $(docker version --format '{{.Server.Version}}' 2>/dev/null)"
}

# For the EXIT trap: stop the dockerd that ensure_docker started (unless BALLONET_KEEP_DOCKERD=1).
stop_own_dockerd() {
  if [ -n "$DOCKERD_PID" ] && [ "${BALLONET_KEEP_DOCKERD:-0}" != 1 ]; then
    say "stopping the dockerd this script started (pid $DOCKERD_PID)"
    kill "$DOCKERD_PID" 2>/dev/null
    for _ in $(seq 1 30); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.5; done
  fi
}

show_dockerd_log() {
  if [ -s "$WORK/dockerd.log" ]; then
    say "dockerd's log (last 30 lines but gRPC chatter):"; grep -v 'module=grpc' "$WORK/dockerd.log" | tail -n 30
  fi
}

print_timings() {
  if [ "${#TIMINGS[@]}" -gt 0 ]; then
    say "timings:"; printf '  %s\n' "${TIMINGS[@]}"
  fi
}

# The end of every EXIT trap: the dockerd this script started, its log on failure, the step
# timings, this run's folder; exits with `rc`.
finish_run() {
  local rc=$1
  stop_own_dockerd
  if [ "$rc" != 0 ]; then show_dockerd_log; fi
  print_timings
  rm -rf "$WORK"
  say "total $(elapsed "$START")s, exit $rc"
  exit "$rc"
}

build_base() {
  # Debian bookworm (minbase) with Python 3.11 and its venv module, from Debian's packages. It
  # carries the host's CA bundle and points pip at it, so pip works in the build wherever the
  # host's does (also behind a TLS-intercepting proxy).
  local rootfs=$WORK/rootfs host_ca
  quiet debootstrap timeout 900 debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$rootfs" "$MIRROR"
  host_ca=${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}
  if [ -f "$host_ca" ]; then cp "$host_ca" "$rootfs/etc/ssl/certs/ca-certificates.crt"; fi
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/*
  tar --numeric-owner -C "$rootfs" -c . | docker import \
    -c 'ENV LANG=C.UTF-8' \
    -c 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    -c "LABEL org.ballonet.base-recipe=$BASE_RECIPE" \
    -c 'CMD ["python3"]' \
    - "$BASE_IMAGE" > /dev/null
  rm -rf "$rootfs"
}

# The base image: the default one built here unless cached with this recipe; another must exist.
ensure_base_image() {
  local recipe
  step "base image $BASE_IMAGE"
  if [ "$BASE_IMAGE" = "$DEFAULT_BASE" ]; then
    recipe=$(docker image inspect --format '{{ index .Config.Labels "org.ballonet.base-recipe" }}' "$BASE_IMAGE" 2> /dev/null || true)
    if [ "$recipe" = "$BASE_RECIPE" ]; then
      say "   cached (recipe $recipe)"
    else
      say "   building with debootstrap from $MIRROR"
      build_base
      done_step "base image (debootstrap + import)"
    fi
  else
    docker image inspect "$BASE_IMAGE" > /dev/null 2>&1 || fail "base image $BASE_IMAGE is not here; build or load it first"
    say "   using $BASE_IMAGE as it is"
  fi
}

# The project's image ($IMAGE) on the base, checked to have what the stacks run.
build_project_image() {
  step "project image $IMAGE"
  quiet docker-build timeout 900 docker build --build-arg BASE="$BASE_IMAGE" -t "$IMAGE" .
  done_step "project image (docker build)"
  # The stacks need the irqbus CLI and guest drivers; say so plainly if this tree lacks them.
  docker run --rm "$IMAGE" sh -c 'irqbus serve --help && guest run --help | grep -q -- --device' > /dev/null 2>&1 \
    || fail "$IMAGE has no 'irqbus serve' or 'guest run --device': the stacks need both"
}

# wait_for DESCRIPTION TIMEOUT_S PYTHON_CHECK -- COMMAND...: run COMMAND every half second
# until PYTHON_CHECK (an expression over `d`, its JSON output) is true.
wait_for() {
  local what=$1 timeout=$2 check=$3; shift 4
  local deadline out
  deadline=$(awk -v n="$EPOCHREALTIME" -v t="$timeout" 'BEGIN { printf "%d", n + t }')
  while :; do
    if out=$("$@" 2> "$WORK/wait.err") &&
      printf '%s' "$out" | python3 -c "import json, sys; d = json.load(sys.stdin); sys.exit(0 if ($check) else 1)" 2> /dev/null; then
      say "   ok: $what"
      return 0
    fi
    if [ "${EPOCHREALTIME%.*}" -ge "$deadline" ]; then
      say "   last output: $out $(cat "$WORK/wait.err")"
      fail "not within ${timeout}s: $what"
    fi
    sleep 0.5
  done
}

# Fail plainly if something on the host holds one of these TCP ports on 127.0.0.1.
ports_free() {
  python3 - "$@" << 'PY' || fail "a port this script publishes is taken on the host (a local hypervisor, irqbus or registry? another stack?)"
import socket, sys
busy = []
for port in map(int, sys.argv[1:]):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        busy.append(port)
    finally:
        s.close()
if busy:
    print("ports in use on 127.0.0.1:", *busy)
sys.exit(1 if busy else 0)
PY
}
