#!/usr/bin/env bash
# Remove what scripts/swarm-up.sh made: the loopback nginx, the stack, the registry and its
# volume, and the swarm itself if swarm-up.sh created it and no other stack runs on it.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

[ -f .env.offline ] && ENV_ARGS=(--env-file .env.offline) || ENV_ARGS=()
edge down --timeout 5 >&2 || true
if docker stack ls --format '{{.Name}}' 2>/dev/null | grep -qx "$STACK"; then
  docker stack rm "$STACK" >&2
  # Its replicas drain first (up to 30 s), and its network goes after them.
  wait_until "the stack's containers to go" 60 \
    sh -c "[ -z \"\$(docker ps -aq --filter label=com.docker.stack.namespace=$STACK)\" ]"
  wait_until "the stack's network to go" 30 sh -c "! docker network inspect ${STACK}_default"
fi
docker rm -f "$REGISTRY_CONTAINER" >/dev/null 2>&1 || true
docker volume rm "$REGISTRY_CONTAINER" >/dev/null 2>&1 || true
if [ "$(docker info --format '{{.Swarm.LocalNodeState}}')" = active ] &&
   [ "$(docker node inspect self --format '{{index .Spec.Labels "flipfleet.made-by"}}' 2>/dev/null)" = swarm-up ] &&
   [ -z "$(docker stack ls --format '{{.Name}}')" ]; then
  docker swarm leave --force >&2
  # Swarm leaves its gateway bridge behind.
  docker network rm docker_gwbridge >/dev/null 2>&1 || true
fi
log "removed stack $STACK"
