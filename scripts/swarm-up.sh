#!/usr/bin/env bash
# flipfleet on Docker Swarm on this engine, in one command: a swarm when there is none, a
# registry, the web image built and pushed to it, the stack deployed from deploy/swarm/stack.yaml,
# and nginx on loopback as with compose (Swarm binds every address: docs/swarm.md).
# Settings as for compose (WEB_REPLICAS, FLIP_VERSION, FLIP_PORT, ...); FLIPFLEET_STACK names
# the stack (flipfleet), FLIP_REGISTRY_PORT the registry's port on 127.0.0.1 (5000).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

bash scripts/docker-engine.sh
choose_images "${REGISTRY_IMAGE:-registry:2}"
swarm_ensure
registry_ensure
web_push
# The stack's own nginx publishes on every address of the node it runs on; here it runs none.
FLIP_REGISTRY=$REGISTRY NGINX_REPLICAS=0 bash scripts/swarm-deploy.sh "$STACK"
edge up -d --wait --wait-timeout 120
log "flipfleet on Swarm answers on http://$(edge port nginx 8080)/ (stack $STACK, registry $REGISTRY)"
