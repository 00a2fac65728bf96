#!/usr/bin/env bash
# Roll a new build out to the Swarm stack that scripts/swarm-up.sh made: build, push, and let
# Swarm replace the replicas one at a time (deploy/swarm/stack.yaml's update_config), rolling
# back by itself if a new replica does not become healthy. Exits 1 when it rolled back.
# Usage: FLIP_VERSION=2 scripts/swarm-rollout.sh [--no-build]   (with the settings swarm-up.sh had)
#   --no-build   roll out $REGISTRY/flipfleet-web:$FLIP_VERSION as already pushed (built elsewhere)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

: "${FLIP_VERSION:?set FLIP_VERSION to the version to roll out}"
choose_images "${REGISTRY_IMAGE:-registry:2}"
registry_ensure
[ "${1-}" = --no-build ] || web_push
FLIP_REGISTRY=$REGISTRY NGINX_REPLICAS=0 bash scripts/swarm-deploy.sh "$STACK"
state=$(web_update_state)
log "update of ${STACK}_web to $FLIP_VERSION: ${state:-nothing to do}"
[ "$state" != rollback_completed ] && [ "$state" != paused ]
