#!/usr/bin/env bash
# Replace the running web replicas with a new build, one at a time, under load without a failed
# request: start a new replica, wait until it is healthy, then stop an old one, which finishes
# what it holds (service/server.py) while nginx sends new requests to the others.
# Compose has no rolling update: `up -d` with a changed image and `restart` replace them all at once.
#
# Usage: scripts/rollout.sh [docker compose options]   e.g. FLIP_VERSION=2 scripts/rollout.sh --env-file .env.offline
set -euo pipefail
cd "$(dirname "$0")/.."

compose=(docker compose "$@")
log() { printf 'rollout: %s\n' "$*" >&2; }

"${compose[@]}" build web
running=$("${compose[@]}" ps -q web)
read -r -d '' -a old <<<"$running" || true
[ "${#old[@]}" -gt 0 ] || { log "no web replica is running; start the stack with docker compose up"; exit 1; }
log "replacing ${#old[@]} replica(s), one at a time"

for container in "${old[@]}"; do
  # One more replica from the new build; --no-recreate leaves the running ones alone.
  "${compose[@]}" up -d --no-deps --no-recreate --wait --wait-timeout 120 --scale "web=$((${#old[@]} + 1))" web
  # nginx looks the replicas up every 2 s: let it see the new one before the old one goes.
  sleep 3
  # docker stop waits the container's stop_grace_period (compose.yaml) while it drains.
  docker stop "$container" >/dev/null
  docker rm "$container" >/dev/null
  log "replaced ${container:0:12}"
done
"${compose[@]}" ps web
