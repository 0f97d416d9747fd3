#!/usr/bin/env bash
# The compose stack, for real: install Docker if missing, start dockerd if it is not running,
# build the base image locally (debootstrap; no registry), build ballonet's image on it, make
# the stack's keys (scripts/compose-keys.sh, in this run's folder), bring up hypervisor +
# irqbus + 3 guests + the emulated device, all under CURVE, check that no secret key is in a
# container's environment, that the guests registered, converge after `mem-set` (down and up)
# and that the books balance, check interrupts flow, crash the hypervisor (SIGKILL) and check
# that its restart policy brings it back with its journal and the guests carry on (same
# domids, audit, a mem-set), check that keys without the right are refused (a guest's
# container minting its own "toolstack" key, an unknown key from the host) and changed
# nothing, and ALWAYS tear the stack down (printing every service's log on failure).
#
#   scripts/compose-smoke.sh                 # the whole smoke test (.ci/run runs this)
#   scripts/compose-smoke.sh --images-only   # only Docker, the base image and ballonet:local
#
# Runs as root (apt-get, dockerd). Environment: BALLONET_BASE, BALLONET_IMAGE,
# BALLONET_DEBIAN_MIRROR, BALLONET_KEEP_DOCKERD (scripts/lib-docker.sh says what each does).
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGES_ONLY=0
case "${1:-}" in
  --images-only) IMAGES_ONLY=1 ;;
  "") ;;
  *) echo "usage: $0 [--images-only]" >&2; exit 2 ;;
esac

SMOKE=compose-smoke
# shellcheck source=scripts/lib-docker.sh
. scripts/lib-docker.sh
docker_lib_init
PROJECT=ballonet-smoke # its own compose project: never touches a stack you started yourself
GUESTS=3
export BALLONET_IMAGE=$IMAGE BALLONET_BASE=$BASE_IMAGE
export COMPOSE_PROJECT_NAME=$PROJECT
export BALLONET_COMPOSE_KEYS=$WORK/keys # this run's keys, made after the images (never in them)
STACK_UP=0
COMPOSE=()

cleanup() {
  local rc=$?
  set +e
  if [ "$STACK_UP" = 1 ]; then
    if [ "$rc" != 0 ]; then
      say "failed (exit $rc): the stack and every service's log follow"
      "${COMPOSE[@]}" ps
      "${COMPOSE[@]}" logs --no-color --tail=200
    fi
    say "tearing down"
    "${COMPOSE[@]}" --profile tools down -v --remove-orphans --timeout 5 > "$WORK/down.log" 2>&1 || cat "$WORK/down.log"
  fi
  finish_run "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- Docker: client, daemon, compose -----------------------------------------------------------

step "Docker"
ensure_docker --compose

if docker compose version > /dev/null 2>&1; then
  COMPOSE=(docker compose)
else
  COMPOSE=(docker-compose)
fi
say "compose: ${COMPOSE[*]} ($("${COMPOSE[@]}" version --short 2>/dev/null || "${COMPOSE[@]}" version | head -1))"

# --- images ------------------------------------------------------------------------------------

ensure_base_image
build_project_image

if [ "$IMAGES_ONLY" = 1 ]; then
  say "images ready: $BASE_IMAGE, $IMAGE"
  exit 0
fi

# --- the stack ---------------------------------------------------------------------------------

step "keys (scripts/compose-keys.sh)"
quiet compose-keys scripts/compose-keys.sh "$BALLONET_COMPOSE_KEYS"
done_step "keys: 5 key pairs and authorized, in the image's own ballonet keys"

step "compose config"
quiet compose-config "${COMPOSE[@]}" config -q
if [ "${COMPOSE[0]}" != docker-compose ] && command -v docker-compose > /dev/null; then
  quiet compose-v1-config docker-compose config -q # Debian's docker-compose v1 reads it too
fi

step "compose up with $GUESTS guests"
"${COMPOSE[@]}" --profile tools down -v --remove-orphans --timeout 5 > /dev/null 2>&1 || true # a previous run's leftovers
# The stack publishes 127.0.0.1:5600-5602: say plainly if something on the host holds them.
ports_free 5600 5601 5602
STACK_UP=1
UP_START=$EPOCHREALTIME
# --profile tools: also the toolstack, idle, to exec into: the servers' containers hold no
# toolstack key (each service only what it needs), so the checks call through it
quiet compose-up timeout 300 "${COMPOSE[@]}" --profile tools up -d --no-build --scale guest=$GUESTS
done_step "compose up -d (hypervisor healthy, guests, device and toolstack started)"

# (docker's own filters: a compose v1 command costs seconds on a loaded machine)
containers() { docker ps -q --filter "label=com.docker.compose.project=$PROJECT" ${1:+--filter "label=com.docker.compose.service=$1"}; }
TOOLS=$(containers toolstack)
[ -n "$TOOLS" ] || fail "no toolstack container"
toolstack() { "${COMPOSE[@]}" run --rm -T toolstack "$@"; } # the toolstack service, on demand
tools() { docker exec -i "$TOOLS" "$@"; }                  # the toolstack container, kept running

list_json() { tools hypervisor list --json; }

step "keys: CURVE on both servers, no secret key in any container's environment"
for service in hypervisor irqbus; do
  # shellcheck disable=SC2046 # one id
  # the log into a variable first: `grep -q` stops reading at its match, and under pipefail the
  # writer's SIGPIPE would fail the pipeline (a false "did not start")
  logs=$(docker logs $(containers "$service") 2>&1)
  grep -q '"security": "curve"' <<< "$logs" || fail "$service did not start under CURVE"
done
# every container of the stack, the toolstack's too: its Config (Env, Cmd, Labels) and mounts
cat "$BALLONET_COMPOSE_KEYS"/*.key_secret | sed -n 's/.*secret-key = "\(.*\)"/\1/p' > "$WORK/secrets"
[ "$(wc -l < "$WORK/secrets")" = 5 ] || fail "expected 5 secret keys in $BALLONET_COMPOSE_KEYS"
# shellcheck disable=SC2046 # one id per word
docker inspect $(containers) > "$WORK/inspect.json"  # not piped: grep -q's early exit would fail the pipeline and pass the check
if grep -F -q -f "$WORK/secrets" "$WORK/inspect.json"; then
  fail "a secret key is in a container's configuration (environment, command or labels)"
fi
say "   ok: no secret key in any container's configuration"
# shellcheck disable=SC2046 # one id
owner=$(docker exec $(containers hypervisor) stat -c '%u %a' /run/secrets/hypervisor.key_secret)
[ "$owner" = "10001 600" ] || fail "the hypervisor's secret inside its container is '$owner', expected '10001 600'"
say "   ok: secrets 0600, the service user's, inside the containers (hypervisor.key_secret: $owner)"

step "guests register"
wait_for "$GUESTS guests registered, running, with their own names and domids" 60 \
  "len(d) == $GUESTS and all(x['state'] == 'running' and x['name'].startswith('guest-') for x in d) \
   and len({x['name'] for x in d}) == len({x['domid'] for x in d}) == $GUESTS" -- list_json
list_json | python3 -c 'import json, sys; [print("   ", x["domid"], x["name"], x["current_pages"], "pages") for x in json.load(sys.stdin)]'
done_step "guests registered"

step "mem-set and convergence"
read -r down_dom up_dom < <(list_json | python3 -c 'import json, sys; d = sorted(json.load(sys.stdin), key=lambda x: x["domid"]); print(d[0]["name"], d[-1]["domid"])')
converged() { # the domain's pages equal its target, which is $2 pages, and its driver is done
  echo "any(str(x['domid']) == '$1' or x['name'] == '$1' for x in d) and all(x['current_pages'] == x['target_pages'] == $2 \
    and (x.get('balloon') or {}).get('state') == 'done' for x in d if str(x['domid']) == '$1' or x['name'] == '$1')"
}
# 192m: above the kernel floor the guest keeps by default (minimum_target() of its 512m: 168m)
quiet mem-set-down toolstack hypervisor mem-set "$down_dom" 192m
wait_for "$down_dom ballooned down to 192m (49152 pages), balloon done" 60 "$(converged "$down_dom" 49152)" -- list_json
quiet mem-set-up tools hypervisor mem-set "$up_dom" 384m
wait_for "domain $up_dom ballooned up to 384m (98304 pages), balloon done" 60 "$(converged "$up_dom" 98304)" -- list_json
done_step "mem-set down and up, converged"
TIMINGS+=("$(printf '%6ss  %s' "$(elapsed "$UP_START")" "compose up -> registered -> both mem-sets converged")")

step "toolstack from the host and through compose, audit"
if [ -x .venv/bin/hypervisor ]; then
  wait_for "host toolstack (127.0.0.1:5601, key 'host') sees $GUESTS domains" 20 "d['domains'] == $GUESTS" \
    -- env -u BALLONET_ADMIN .venv/bin/hypervisor info --json --admin-endpoint tcp://127.0.0.1:5601 --keys "$BALLONET_COMPOSE_KEYS" --key host
else
  say "   (no .venv/bin/hypervisor here: host-side check skipped)"
fi
toolstack hypervisor list
tools hypervisor audit || fail "hypervisor audit: the books do not balance"
say "   ok: audit"

step "irqbus and the emulated device" # (timed with the two checks above)
wait_for "irqbus has the $GUESTS guests attached" 30 "len(d['guests']) == $GUESTS" -- tools irqbus show --json
wait_for "the device's interrupts reach domain 1's nic driver" 30 \
  "any(a['name'] == 'nic' and a['handled'] > 0 for row in d for a in row['actions'])" -- tools guest interrupts 1 --json
tools guest interrupts 1
done_step "checks after convergence (host toolstack, audit, irqbus)"

step "crash the hypervisor: restart policy, journal, the guests carry on"
# A crash, not a stop: SIGKILL from the host to the container's main process (its host pid).
# `docker kill` counts as a user's stop (exit 137, and Docker skips the restart policy until
# the next start), and a SIGKILL sent from inside the container to its pid 1 is dropped by the
# kernel (init of a pid namespace only gets signals it has a handler for from within it): the
# container runs on, not restarted. Both seen with Docker 20.10.
books() { list_json | python3 -c 'import json, sys; print(sorted((x["name"], x["domid"], x["current_pages"], x["target_pages"]) for x in json.load(sys.stdin)))'; }
before=$(books)
hv=$("${COMPOSE[@]}" ps -q hypervisor)
restarts=$(docker inspect --format '{{.RestartCount}}' "$hv")
kill -KILL "$(docker inspect --format '{{.State.Pid}}' "$hv")"
wait_for "the hypervisor restarted by its restart policy" 60 "d['restarts'] > $restarts and d['running']" \
  -- docker inspect --format '{"restarts": {{.RestartCount}}, "running": {{json .State.Running}}}' "$hv"
wait_for "the same guests with the same domids and pages, running, after the restart" 60 \
  "sorted((x['name'], x['domid'], x['current_pages'], x['target_pages']) for x in d) == $before \
   and all(x['state'] == 'running' for x in d)" -- list_json
tools hypervisor audit || fail "hypervisor audit after the restart: the books do not balance"
say "   ok: audit after the restart"
# shellcheck disable=SC2046 # one id per word
states=$(docker inspect --format '{{.Name}} {{.State.Status}} {{.RestartCount}}' $("${COMPOSE[@]}" ps -q guest))
if printf '%s\n' "$states" | grep -qv ' running 0$'; then fail "a guest container exited when the hypervisor crashed: $states"; fi
say "   ok: every guest container still running, none restarted"
quiet mem-set-after-crash tools hypervisor mem-set "$down_dom" 224m
wait_for "$down_dom ballooned up to 224m (57344 pages) through the restarted hypervisor" 60 "$(converged "$down_dom" 57344)" -- list_json
done_step "hypervisor crash: restarted, books recovered, guests carried on"

step "keys without the right are refused, and change nothing"
# refused WHAT -- COMMAND...: the command fails and says EACCES (docs/protocol.md, "Authentication")
refused() {
  local what=$1 out; shift 2
  if out=$("$@" 2>&1); then fail "$what: accepted: $out"; fi
  case "$out" in
    *EACCES*) say "   ok: refused: $what" ;;
    *) fail "$what: expected EACCES, got: $out" ;;
  esac
}
before=$(books)
guest=$(containers guest | head -n 1)
# A guest's container holds the servers' public keys and its own key. Its own key, and a
# 'toolstack' key it makes itself (created on first use, "authorized" in its own directory
# only), on the admin endpoint and on irqbus, where the device of domain 1 is not theirs:
refused "a guest's own key: mem-set on the admin endpoint" -- docker exec "$guest" sh -c \
  'k=$(ls /run/ballonet/keys | sed -n "s/^\(guest-.*\)\.key_secret$/\1/p"); exec hypervisor mem-set 1 64m --key "$k"'
refused "a 'toolstack' key a guest made itself: destroy on the admin endpoint" -- docker exec "$guest" hypervisor destroy 1
refused "that key on irqbus: raise domain 1's nic" -- docker exec "$guest" irqbus raise 1 nic
refused "that key on irqbus: show every guest" -- docker exec "$guest" irqbus show
if [ -x .venv/bin/hypervisor ]; then # from the host: a key the stack never heard of
  mkdir -p "$WORK/stranger" && cp "$BALLONET_COMPOSE_KEYS/hypervisor.key" "$WORK/stranger/"
  refused "an unknown key from the host: info on the admin endpoint" -- env -u BALLONET_ADMIN \
    .venv/bin/hypervisor info --admin-endpoint tcp://127.0.0.1:5601 --keys "$WORK/stranger" --key stranger
fi
[ "$(books)" = "$before" ] || fail "the books changed: $(books), before: $before"
wait_for "domain 1's nic still plugged into it" 10 "any(x['name'] == 'nic' for g in d['guests'] for x in g['devices'])" \
  -- tools irqbus show 1 --json
done_step "keys without the right refused, nothing changed"

say "PASS: compose stack with $GUESTS guests registered under CURVE, converged after mem-set, audit clean, interrupts delivered, a hypervisor crash survived, keys without the right refused"
