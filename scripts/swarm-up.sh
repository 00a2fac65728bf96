#!/usr/bin/env bash
# flipfleet on Docker Swarm on this engine, in one command: a swarm when there is none (a swarm of
# one node: this engine, its only manager), a registry, the web image built and pushed to it, the
# stack deployed from deploy/swarm/stack.yaml, and nginx on loopback as with compose (Swarm binds
# every address: docs/swarm.md). One replica per CPU the engine can use unless WEB_REPLICAS says
# otherwise, nginx's memory for what they hold unless NGINX_MEMORY_LIMIT does; it says what it chose.
# Settings as for compose (WEB_REPLICAS, FLIP_VERSION, FLIP_PORT, ...); FLIPFLEET_STACK names
# the stack (flipfleet), FLIP_REGISTRY_PORT the registry's port on 127.0.0.1 (5000).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

bash scripts/docker-engine.sh
choose_images "${REGISTRY_IMAGE:-registry:2}"
swarm_ensure
if [ -z "${WEB_REPLICAS:-}" ]; then
  WEB_REPLICAS=$(engine_cpus)
  log "one replica per CPU the engine can use: WEB_REPLICAS=$WEB_REPLICAS (set WEB_REPLICAS to choose)"
fi
if [ -z "${NGINX_MEMORY_LIMIT:-}" ]; then
  NGINX_MEMORY_LIMIT=$(nginx_memory_for "$WEB_REPLICAS")
  log "nginx's memory for what $WEB_REPLICAS replicas hold: NGINX_MEMORY_LIMIT=$NGINX_MEMORY_LIMIT (set it to choose)"
fi
export WEB_REPLICAS NGINX_MEMORY_LIMIT
registry_ensure
web_push
# The stack's own nginx runs only on nodes labelled flipfleet.nginx=true, publishing on every
# address; this one is not labelled, and nginx runs on loopback beside the stack instead.
FLIP_REGISTRY=$REGISTRY NGINX_ON_LOOPBACK=1 bash scripts/swarm-deploy.sh "$STACK"
edge up -d --wait --wait-timeout 120
log "flipfleet on Swarm answers on http://$(edge port nginx 8080)/ (stack $STACK, registry $REGISTRY)"
