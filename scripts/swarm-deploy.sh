#!/usr/bin/env bash
# Deploy deploy/swarm/stack.yaml as stack STACK (flipfleet) to the swarm that DOCKER_HOST points
# at, and wait until its services have converged; exits 1 if an update it started was rolled back
# or paused. Swarm configs cannot change in place, so each is named after a hash of its file: a
# changed nginx template is a new config, rolled out one node at a time. With FLIP_TLS_CERT and
# FLIP_TLS_KEY, nginx serves HTTPS: deploy/swarm/tls.yaml makes them secrets, named the same way;
# with FLIP_API_KEYS_FILE, every flip needs one of its keys: deploy/swarm/api-keys.yaml, the same.
# It says what it finds and chooses: the managers (three survive the loss of one), the nodes
# labelled flipfleet.nginx=true (nginx runs on each, its port published there), and unless set,
# WEB_REPLICAS (one per CPU of the nodes that may run replicas) and NGINX_MEMORY_LIMIT (what one
# nginx needs to admit for all of them). docs/swarm.md says why each.
# Usage: FLIP_REGISTRY=registry.example:5000 FLIP_VERSION=1 scripts/swarm-deploy.sh [STACK]
set -euo pipefail
cd "$(dirname "$0")/.."

: "${FLIP_REGISTRY:?set FLIP_REGISTRY to the registry the nodes pull flipfleet-web from}"
for config in NGINX_TEMPLATE:nginx/nginx.conf.template NGINX_ENTRYPOINT:nginx/entrypoint.sh \
              DEFAULTS:service/defaults.env; do
  export "${config%%:*}_HASH=$(sha256sum "${config#*:}" | cut -c1-12)"
done
export FLIPFLEET_STACK=${1:-flipfleet}
. scripts/lib.sh

nodes=$(swarm_nodes)
managers=$(awk '$2 == "manager"' <<<"$nodes" | wc -l)
# Raft needs a majority of the managers to change anything: an even number adds no safety.
if ((managers >= 3 && managers % 2 == 1)); then
  log "$managers managers: the swarm survives the loss of $(((managers - 1) / 2)) of them"
else
  log "$managers manager(s): losing $(((managers - 1) / 2 + 1)) of them stops every change" \
    "(a scale, an update, a lost node's replicas started elsewhere) until they are back; three managers survive the loss of one"
fi
nginx_nodes=$(awk '$6 == "true" { print $1 }' <<<"$nodes" | paste -sd ' ')
if [ -n "$nginx_nodes" ]; then
  log "nginx on each node labelled flipfleet.nginx=true, on port ${FLIP_PORT:-8080}: $nginx_nodes"
elif [ -z "${NGINX_ON_LOOPBACK:-}" ]; then
  log "no node is labelled flipfleet.nginx=true, so the stack's nginx runs nowhere: label the nodes that" \
    "your load balancer or DNS sends clients to (docker node update --label-add flipfleet.nginx=true NODE)"
fi
if [ -z "${WEB_REPLICAS:-}" ]; then
  WEB_REPLICAS=$(web_cpus "$nodes")
  ((WEB_REPLICAS >= 1)) || WEB_REPLICAS=1
  log "one replica per CPU of the nodes that may run one (ready, active): WEB_REPLICAS=$WEB_REPLICAS" \
    "($(awk '$3 == "ready" && $4 == "active" { printf "%s%s %s", sep, $1, $5; sep = ", " }' <<<"$nodes"));" \
    "set WEB_REPLICAS to choose"
fi
if [ -z "${NGINX_MEMORY_LIMIT:-}" ]; then
  NGINX_MEMORY_LIMIT=$(nginx_memory_for "$WEB_REPLICAS")
  log "nginx's memory for what $WEB_REPLICAS replicas hold, should it be the only one left:" \
    "NGINX_MEMORY_LIMIT=$NGINX_MEMORY_LIMIT; set it to choose"
fi
export WEB_REPLICAS NGINX_MEMORY_LIMIT
stack_files=(-c deploy/swarm/stack.yaml)
if [ -n "${FLIP_TLS_CERT:-}${FLIP_TLS_KEY:-}" ]; then
  for name in FLIP_TLS_CERT FLIP_TLS_KEY; do
    [ -r "${!name:-}" ] || { log "error: $name: cannot read '${!name:-}' (HTTPS needs both FLIP_TLS_CERT and FLIP_TLS_KEY)"; exit 1; }
    # Absolute (the stack file would resolve a relative one from deploy/swarm/), and a new secret
    # name for new contents.
    export "$name=$(realpath "${!name}")" "${name#FLIP_}_HASH=$(sha256sum "${!name}" | cut -c1-12)"
  done
  stack_files+=(-c deploy/swarm/tls.yaml)
  log "HTTPS with $FLIP_TLS_CERT and its key: Swarm secrets ${FLIPFLEET_STACK}_tls_cert_$TLS_CERT_HASH and" \
    "${FLIPFLEET_STACK}_tls_key_$TLS_KEY_HASH (deploy/swarm/tls.yaml)"
fi
if [ -n "${FLIP_API_KEYS_FILE:-}" ]; then
  [ -r "$FLIP_API_KEYS_FILE" ] ||
    { log "error: FLIP_API_KEYS_FILE: cannot read '$FLIP_API_KEYS_FILE' (a file of 'name key' lines)"; exit 1; }
  # Absolute and hashed, as the certificate's: new keys are a new secret, rolled out one nginx at a time.
  FLIP_API_KEYS_FILE=$(realpath "$FLIP_API_KEYS_FILE") API_KEYS_HASH=$(sha256sum "$FLIP_API_KEYS_FILE" | cut -c1-12)
  export FLIP_API_KEYS_FILE API_KEYS_HASH
  stack_files+=(-c deploy/swarm/api-keys.yaml)
  log "API keys from $FLIP_API_KEYS_FILE: Swarm secret ${FLIPFLEET_STACK}_api_keys_$API_KEYS_HASH" \
    "(deploy/swarm/api-keys.yaml)"
fi

declare -A before
for service in $(docker stack services --format '{{.Name}}' "$FLIPFLEET_STACK" 2>/dev/null); do
  read -r _ started < <(update_status "$service") || true
  before[$service]=${started-}
done
if [ -n "$nginx_nodes" ]; then
  docker stack deploy --detach=false --quiet "${stack_files[@]}" "$FLIPFLEET_STACK" >&2
else
  # The CLI's wait never ends for a global service whose constraint matches no node: wait here.
  docker stack deploy --detach=true --quiet "${stack_files[@]}" "$FLIPFLEET_STACK" >&2
  wait_until "the stack's services to converge" 300 stack_converged "$FLIPFLEET_STACK" ||
    { log "still waiting: $(stack_waiting "$FLIPFLEET_STACK" | paste -sd ',')"; exit 1; }
fi
# A service this deploy changed is updated (rolling), and judged as swarm-rollout.sh judges.
failed=0
for service in $(docker stack services --format '{{.Name}}' "$FLIPFLEET_STACK"); do
  started=
  read -r _ started < <(update_status "$service") || true
  if [ -n "$started" ] && [ "$started" != "${before[$service]-}" ]; then
    await_update "$service" "${before[$service]-}" || failed=1
  fi
done
exit "$failed"
