#!/usr/bin/env bash
# Deploy deploy/swarm/stack.yaml as stack STACK (flipfleet) to the swarm that DOCKER_HOST points
# at, and wait until its services have converged, or rolled back. Swarm configs cannot change in
# place, so each is named after a hash of its file: a changed nginx template is a new config.
# Usage: FLIP_REGISTRY=registry.example:5000 FLIP_VERSION=1 scripts/swarm-deploy.sh [STACK]
set -euo pipefail
cd "$(dirname "$0")/.."

: "${FLIP_REGISTRY:?set FLIP_REGISTRY to the registry the nodes pull flipfleet-web from}"
for config in NGINX_TEMPLATE:nginx/nginx.conf.template NGINX_ENTRYPOINT:nginx/entrypoint.sh \
              DEFAULTS:service/defaults.env; do
  export "${config%%:*}_HASH=$(sha256sum "${config#*:}" | cut -c1-12)"
done
export FLIPFLEET_STACK=${1:-flipfleet}
docker stack deploy --detach=false --quiet -c deploy/swarm/stack.yaml "$FLIPFLEET_STACK" >&2
