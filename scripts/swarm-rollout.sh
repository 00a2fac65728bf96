#!/usr/bin/env bash
# Roll a new build out to the Swarm stack that scripts/swarm-up.sh made: build, push, and let
# Swarm replace the replicas one at a time (deploy/swarm/stack.yaml's update_config), rolling
# back by itself if a new replica does not become healthy. Only the image changes: the replica
# count and every other setting stay as they are. Exits 1 unless the update completed.
# Usage: FLIP_VERSION=2 scripts/swarm-rollout.sh [--no-build]
#   --no-build   roll out $REGISTRY/flipfleet-web:$FLIP_VERSION as already pushed (built elsewhere)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

: "${FLIP_VERSION:?set FLIP_VERSION to the version to roll out}"
choose_images "${REGISTRY_IMAGE:-registry:2}"
registry_ensure
[ "${1-}" = --no-build ] || web_push
service=${STACK}_web
read -r _ before < <(update_status "$service") || true
image_before=$(service_image "$service")
docker service update --detach=true --quiet --image "$REGISTRY/flipfleet-web:$FLIP_VERSION" "$service" >/dev/null
if [ "$(service_image "$service")" = "$image_before" ]; then
  log "$service already runs $FLIP_VERSION (the same image digest): nothing to roll out"
  exit 0
fi
await_update "$service" "${before-}"
