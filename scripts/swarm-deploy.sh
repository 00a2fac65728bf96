#!/usr/bin/env bash
# Deploy deploy/swarm/stack.yaml as stack STACK (flipfleet) to the swarm that DOCKER_HOST points
# at, and wait until its services have converged; exits 1 if an update it started was rolled back
# or paused. Swarm configs cannot change in place, so each is named after a hash of its file: a
# changed nginx template is a new config.
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

declare -A before
for service in $(docker stack services --format '{{.Name}}' "$FLIPFLEET_STACK" 2>/dev/null); do
  read -r _ started < <(update_status "$service") || true
  before[$service]=${started-}
done
docker stack deploy --detach=false --quiet -c deploy/swarm/stack.yaml "$FLIPFLEET_STACK" >&2
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
