#!/usr/bin/env bash
# The swarm stack (swarm.yaml), for real, on this machine as a single-node swarm: install Docker
# if missing, start dockerd if it is not running, `docker swarm init` unless this node is in a
# swarm already (and leave it afterwards only then), label the node as the host node, build the
# base image (debootstrap; cached) and ballonet's image, build a registry image from Debian's
# docker-registry package and run it on 127.0.0.1:5000 (unless BALLONET_REGISTRY names one),
# push the image there, make the keys (scripts/compose-keys.sh --swarm, in this run's folder),
# `docker stack deploy` with 10 guest replicas, check CURVE and that no secret key is in any
# service's or container's configuration, wait until the 10 guests registered, mem-set one down
# and one up and wait until both converge, audit, check the device's interrupts reach its guest,
# `docker service scale` the guests to 20, wait until all registered, check again (audit,
# irqbus, a mem-set converging), SIGKILL the hypervisor and check that swarm's new task (at a
# new address) has the same books and the guests reconnect, and ALWAYS remove what it made: the
# stack, its secrets, network and volume, the registry, the node label, the swarm (printing
# every service's log on failure).
#
#   scripts/swarm-smoke.sh          # (.ci/run runs it after scripts/compose-smoke.sh)
#
# Runs as root (apt-get, dockerd). Its stack is named ballonet-swarm, so it never touches a stack
# of yours. Environment: BALLONET_BASE, BALLONET_IMAGE, BALLONET_DEBIAN_MIRROR,
# BALLONET_KEEP_DOCKERD (scripts/lib-docker.sh), and
#   BALLONET_REGISTRY  a registry to push to and deploy from (default: this script runs one on
#                      127.0.0.1:5000 for the run: dockerd trusts a registry on 127.0.0.1 over HTTP)
set -euo pipefail
cd "$(dirname "$0")/.."

SMOKE=swarm-smoke
# shellcheck source=scripts/lib-docker.sh
. scripts/lib-docker.sh
docker_lib_init

STACK=ballonet-swarm
GUESTS=10
MORE_GUESTS=20
REGISTRY_IMAGE=ballonet-registry:bookworm
REGISTRY_CONTAINER=ballonet-swarm-registry
OWN_REGISTRY=0
if [ -z "${BALLONET_REGISTRY:-}" ]; then OWN_REGISTRY=1; fi
export BALLONET_REGISTRY=${BALLONET_REGISTRY:-127.0.0.1:5000}
export BALLONET_TAG=swarm-smoke
export BALLONET_SWARM_KEYS=$WORK/keys # this run's keys (never in an image)
export BALLONET_GUESTS=$GUESTS BALLONET_TOOLSTACKS=1
export BALLONET_IMAGE=$IMAGE BALLONET_BASE=$BASE_IMAGE
PUSHED=$BALLONET_REGISTRY/ballonet:$BALLONET_TAG
CREATED_SWARM=0
CREATED_GWBRIDGE=0 # docker_gwbridge: made by `swarm init` and kept by `swarm leave`
LABELLED=""
REGISTRY_STARTED=0
STACK_UP=0
NODE=""

# the stack's containers (on this node), of one service or all
containers() {
  if [ -n "${1:-}" ]; then
    docker ps -q --filter "label=com.docker.swarm.service.name=${STACK}_$1"
  else
    docker ps -aq --filter "label=com.docker.stack.namespace=$STACK"
  fi
}

running() { [ -n "$(containers "$1")" ]; }

remove_stack() {
  docker stack rm "$STACK" > "$WORK/stack-rm.log" 2>&1 || true
  # stack rm returns at once: the tasks' containers, then the network, go afterwards
  for _ in $(seq 1 60); do
    [ -z "$(containers)" ] && [ -z "$(docker network ls -q --filter "name=${STACK}_")" ] && break
    sleep 0.5
  done
  [ -z "$(containers)" ] || say "   containers of $STACK still there after 30 s: $(containers | tr '\n' ' ')"
  docker volume rm "${STACK}_hypervisor-state" > /dev/null 2>&1 || true
  # shellcheck disable=SC2046 # one name per word
  docker secret rm $(docker secret ls -q --filter "name=${STACK}_") > /dev/null 2>&1 || true
}

cleanup() {
  local rc=$?
  set +e
  if [ "$STACK_UP" = 1 ]; then
    if [ "$rc" != 0 ]; then
      say "failed (exit $rc): the stack's tasks and every service's log follow"
      docker stack ps --no-trunc "$STACK"
      for service in hypervisor irqbus device toolstack guest; do
        say "--- ${STACK}_$service"
        docker service logs --no-trunc --tail "$([ "$service" = guest ] && echo 20 || echo 200)" "${STACK}_$service" 2>&1
      done
    fi
    say "removing the stack (services, secrets, network, the journal's volume)"
    remove_stack
  fi
  if [ "$REGISTRY_STARTED" = 1 ]; then
    [ "$rc" = 0 ] || { say "--- registry"; docker logs --tail 30 "$REGISTRY_CONTAINER" 2>&1; }
    say "removing the registry"
    docker rm -f -v "$REGISTRY_CONTAINER" > /dev/null 2>&1
  fi
  docker image rm "$PUSHED" > /dev/null 2>&1 # only the tag: the image stays as $IMAGE
  if [ "$CREATED_SWARM" = 1 ]; then
    say "leaving the swarm this script created"
    docker swarm leave --force > /dev/null 2>&1
    [ "$CREATED_GWBRIDGE" = 0 ] || docker network rm docker_gwbridge > /dev/null 2>&1
  elif [ -n "$LABELLED" ]; then
    docker node update --label-rm ballonet.host "$LABELLED" > /dev/null 2>&1
  fi
  finish_run "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_until DESCRIPTION TIMEOUT_S -- COMMAND...: until COMMAND succeeds, every half second
wait_until() {
  local what=$1 timeout=$2 deadline; shift 3
  deadline=$(awk -v n="$EPOCHREALTIME" -v t="$timeout" 'BEGIN { printf "%d", n + t }')
  until "$@" > "$WORK/wait.out" 2>&1; do
    if [ "${EPOCHREALTIME%.*}" -ge "$deadline" ]; then
      say "   last output: $(cat "$WORK/wait.out")"
      fail "not within ${timeout}s: $what"
    fi
    sleep 0.5
  done
  say "   ok: $what"
}

# --- Docker, the swarm -------------------------------------------------------------------------

step "Docker"
ensure_docker

step "swarm"
state=$(docker info --format '{{.Swarm.LocalNodeState}}')
case "$state" in
  inactive)
    docker network inspect docker_gwbridge > /dev/null 2>&1 || CREATED_GWBRIDGE=1
    # (its own address pool: ingress and other swarm-scope networks stay off 10.0.0.0/8's
    # usual ranges; the stack's own subnet is swarm.yaml's)
    quiet swarm-init docker swarm init --advertise-addr 127.0.0.1 \
      --default-addr-pool 10.231.64.0/18 --default-addr-pool-mask-length 24
    CREATED_SWARM=1
    say "   created a single-node swarm (left at the end)"
    ;;
  active) say "   this node is in a swarm already: deploying into it (stack $STACK), leaving it as it is" ;;
  *) fail "this node's swarm state is '$state'" ;;
esac
[ "$(docker info --format '{{.Swarm.ControlAvailable}}')" = true ] || fail "this node is not a swarm manager: run on a manager"
NODE=$(docker info --format '{{.Swarm.NodeID}}')
if [ "$(docker node inspect --format '{{ index .Spec.Labels "ballonet.host" }}' "$NODE")" != true ]; then
  quiet node-label docker node update --label-add ballonet.host=true "$NODE"
  [ "$CREATED_SWARM" = 1 ] || LABELLED=$NODE # removed at the end (with the swarm, when it goes)
fi
done_step "swarm ready (node $NODE labelled ballonet.host=true)"

# --- images and the registry -------------------------------------------------------------------

ensure_base_image
build_project_image

if [ "$OWN_REGISTRY" = 1 ]; then
  step "registry on $BALLONET_REGISTRY (Debian's docker-registry)"
  quiet registry-build timeout 600 docker build --build-arg BASE="$BASE_IMAGE" -t "$REGISTRY_IMAGE" - < registry.Dockerfile
  done_step "registry image (docker build)"
  docker rm -f -v "$REGISTRY_CONTAINER" > /dev/null 2>&1 || true # a previous run's leftover
  ports_free 5000
  REGISTRY_STARTED=1
  quiet registry-run docker run -d --name "$REGISTRY_CONTAINER" -p 127.0.0.1:5000:5000 "$REGISTRY_IMAGE"
  wait_until "the registry answers on http://$BALLONET_REGISTRY/v2/" 30 -- \
    python3 -c "import urllib.request; urllib.request.urlopen('http://$BALLONET_REGISTRY/v2/', timeout=2)"
  done_step "registry running"
fi

step "push $PUSHED"
quiet tag docker tag "$IMAGE" "$PUSHED"
quiet push timeout 300 docker push "$PUSHED"
done_step "push the image to the registry"

# --- the stack ---------------------------------------------------------------------------------

step "keys (scripts/compose-keys.sh --swarm)"
quiet keys scripts/compose-keys.sh --swarm "$BALLONET_SWARM_KEYS"
done_step "keys: 5 key pairs and authorized"

step "stack config"
if docker stack config --help > /dev/null 2>&1; then
  quiet stack-config docker stack config -c swarm.yaml
  say "   ok: docker stack config"
fi
if command -v docker-compose > /dev/null; then
  quiet compose-v1-config docker-compose -f swarm.yaml config -q
  say "   ok: docker-compose config"
fi

step "docker stack deploy with $GUESTS guests"
if docker stack ls --format '{{.Name}}' | grep -qx "$STACK"; then
  say "   a previous run's $STACK is still deployed: removing it first"
  remove_stack
fi
# mode: host ports bind on this node: say plainly if something holds them
ports_free 5600 5601 5602
deploy=(docker stack deploy -c swarm.yaml)
# (newer clients wait for the services to converge unless --detach; 20.10's has no such flag)
if docker stack deploy --help 2>&1 | grep -q -- '--detach'; then deploy+=(--detach=true); fi
STACK_UP=1
UP_START=$EPOCHREALTIME
quiet deploy timeout 120 "${deploy[@]}" "$STACK"
wait_until "the toolstack's task running" 90 -- running toolstack
TOOLS=$(containers toolstack)
tools() { docker exec -i "$TOOLS" "$@"; }
list_json() { tools hypervisor list --json; }
done_step "stack deploy (toolstack running)"

step "keys: CURVE on both servers, no secret key in any service or container, secrets 0400 inside"
for service in hypervisor irqbus; do
  wait_until "$service running" 60 -- running "$service"
  # the log into a variable first: `grep -q` stops reading at its match (SIGPIPE under pipefail)
  wait_until "$service started under CURVE" 30 -- \
    sh -c 'docker logs "$1" 2>&1 | grep -c "\"security\": \"curve\""' _ "$(containers "$service")"
done
cat "$BALLONET_SWARM_KEYS"/*.key_secret | sed -n 's/.*secret-key = "\(.*\)"/\1/p' > "$WORK/secrets"
[ "$(wc -l < "$WORK/secrets")" = 5 ] || fail "expected 5 secret keys in $BALLONET_SWARM_KEYS"
# every service's spec and every container (environment, command, labels, mounts); not piped:
# grep -q's early exit would fail the pipeline and pass the check
# shellcheck disable=SC2046 # one name or id per word
docker service inspect $(docker stack services -q "$STACK") > "$WORK/inspect.json"
# shellcheck disable=SC2046
docker inspect $(containers) >> "$WORK/inspect.json"
if grep -F -q -f "$WORK/secrets" "$WORK/inspect.json"; then
  fail "a secret key is in a service's or container's configuration (environment, command or labels)"
fi
say "   ok: no secret key in any service's or container's configuration"
owner=$(docker exec "$(containers hypervisor)" stat -c '%u %a' /run/secrets/hypervisor.key_secret)
[ "$owner" = "10001 400" ] || fail "the hypervisor's secret inside its container is '$owner', expected '10001 400'"
say "   ok: secrets 0400, the service user's, inside the containers (hypervisor.key_secret: $owner)"
for service in hypervisor irqbus; do
  node=$(docker service ps --filter desired-state=running --format '{{.Node}}' "${STACK}_$service")
  [ "$node" = "$(docker node inspect --format '{{.Description.Hostname}}' "$NODE")" ] \
    || fail "$service runs on '$node', not on the node labelled ballonet.host=true"
done
say "   ok: hypervisor and irqbus on the labelled node"

step "guests register"
wait_for "$GUESTS guests registered, running, with their own names and domids" 120 \
  "len(d) == $GUESTS and all(x['state'] == 'running' and x['name'].startswith('guest-') for x in d) \
   and len({x['name'] for x in d}) == len({x['domid'] for x in d}) == $GUESTS" -- list_json
done_step "$GUESTS guests registered"

converged() { # the domain's pages equal its target, which is $2 pages, and its driver is done
  echo "any(str(x['domid']) == '$1' for x in d) and all(x['current_pages'] == x['target_pages'] == $2 \
    and (x.get('balloon') or {}).get('state') == 'done' for x in d if str(x['domid']) == '$1')"
}

step "mem-set and convergence"
# 192m: above the kernel floor the guest keeps by default (minimum_target() of its 512m: 168m)
quiet mem-set-down tools hypervisor mem-set 1 192m
quiet mem-set-up tools hypervisor mem-set "$GUESTS" 384m
wait_for "domain 1 ballooned down to 192m (49152 pages), balloon done" 60 "$(converged 1 49152)" -- list_json
wait_for "domain $GUESTS ballooned up to 384m (98304 pages), balloon done" 60 "$(converged "$GUESTS" 98304)" -- list_json
done_step "mem-set down and up, converged"
TIMINGS+=("$(printf '%6ss  %s' "$(elapsed "$UP_START")" "stack deploy -> $GUESTS registered -> both mem-sets converged")")

step "audit, irqbus and the emulated device"
tools hypervisor audit || fail "hypervisor audit: the books do not balance"
say "   ok: audit"
wait_for "irqbus has the $GUESTS guests attached" 30 "len(d['guests']) == $GUESTS" -- tools irqbus show --json
wait_for "the device's interrupts reach domain 1's nic driver" 30 \
  "any(a['name'] == 'nic' and a['handled'] > 0 for row in d for a in row['actions'])" -- tools guest interrupts 1 --json
if [ -x .venv/bin/hypervisor ]; then # the published port (mode: host), with the host's own key
  wait_for "host toolstack (127.0.0.1:5601, key 'host') sees $GUESTS domains" 20 "d['domains'] == $GUESTS" \
    -- env -u BALLONET_ADMIN .venv/bin/hypervisor info --json --admin-endpoint tcp://127.0.0.1:5601 --keys "$BALLONET_SWARM_KEYS" --key host
fi
done_step "checks with $GUESTS guests (audit, irqbus, interrupts)"

step "docker service scale ${STACK}_guest=$MORE_GUESTS"
SCALE_START=$EPOCHREALTIME
quiet scale docker service scale --detach "${STACK}_guest=$MORE_GUESTS"
wait_for "$MORE_GUESTS guests registered, running, with their own names and domids" 120 \
  "len(d) == $MORE_GUESTS and all(x['state'] == 'running' for x in d) \
   and len({x['name'] for x in d}) == len({x['domid'] for x in d}) == $MORE_GUESTS" -- list_json
done_step "scaled to $MORE_GUESTS, all registered"

step "checks with $MORE_GUESTS guests"
quiet mem-set-new tools hypervisor mem-set "$MORE_GUESTS" 192m
wait_for "domain $MORE_GUESTS (a new replica) ballooned down to 192m, balloon done" 60 "$(converged "$MORE_GUESTS" 49152)" -- list_json
wait_for "domains 1 and $GUESTS still at their targets" 10 "$(converged 1 49152) and $(converged "$GUESTS" 98304)" -- list_json
tools hypervisor audit || fail "hypervisor audit with $MORE_GUESTS guests: the books do not balance"
say "   ok: audit"
wait_for "irqbus has the $MORE_GUESTS guests attached" 30 "len(d['guests']) == $MORE_GUESTS" -- tools irqbus show --json
wait_for "domain 1 still gets the device's interrupts" 30 \
  "any(a['name'] == 'nic' and a['handled'] > 0 for row in d for a in row['actions'])" -- tools guest interrupts 1 --json
done_step "checks with $MORE_GUESTS guests (a new replica's mem-set converged, audit, irqbus, interrupts)"
TIMINGS+=("$(printf '%6ss  %s' "$(elapsed "$SCALE_START")" "service scale -> $MORE_GUESTS registered -> checks")")

step "crash the hypervisor: swarm replaces its task, at a new address; the guests follow"
# SIGKILL to the task's process from the host (a crash: see compose-smoke.sh). Swarm's restart
# policy starts a new task, a new container on the overlay with its own address: dnsrr gives the
# guests that address when they reconnect (ZeroMQ resolves the name again on each attempt).
books() { list_json | python3 -c 'import json, sys; print(sorted((x["name"], x["domid"], x["current_pages"], x["target_pages"]) for x in json.load(sys.stdin)))'; }
address() { docker inspect --format "{{ (index .NetworkSettings.Networks \"${STACK}_ballonet\").IPAddress }}" "$1"; }
before=$(books)
old=$(containers hypervisor)
old_address=$(address "$old")
kill -KILL "$(docker inspect --format '{{.State.Pid}}' "$old")"
new_task() { local c; c=$(containers hypervisor); [ -n "$c" ] && [ "$c" != "$old" ]; }
wait_until "a new hypervisor task running" 60 -- new_task
new_address=$(address "$(containers hypervisor)")
say "   the hypervisor moved from $old_address to $new_address"
wait_for "the same $MORE_GUESTS guests, domids and pages, running, through the new task" 60 \
  "sorted((x['name'], x['domid'], x['current_pages'], x['target_pages']) for x in d) == $before \
   and all(x['state'] == 'running' for x in d)" -- list_json
quiet mem-set-after-crash tools hypervisor mem-set 2 224m
wait_for "domain 2 ballooned down to 224m (57344 pages) through the new task" 60 "$(converged 2 57344)" -- list_json
tools hypervisor audit || fail "hypervisor audit after the crash: the books do not balance"
say "   ok: audit"
done_step "hypervisor crash: a new task, books recovered from the journal, guests reconnected"

say "PASS: swarm stack $STACK: $GUESTS then $MORE_GUESTS guest replicas registered under CURVE, converged after mem-set, audit clean, interrupts delivered, a hypervisor crash survived"
