#!/usr/bin/env bash
# One command from a bare machine to a running stack: a Docker engine if none answers, local
# base images if the official ones cannot be pulled, one replica per CPU the engine can use
# (unless WEB_REPLICAS says otherwise), nginx's memory for that many, then
# `docker compose up -d --build`. Arguments go to `docker compose up`.
# What it chose (the replica count, nginx's memory, the local images) is written to .env, which
# plain `docker compose` reads: the README's next commands keep it.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

bash scripts/docker-engine.sh
choose_images
# A value of the shell, or of the user's own lines in .env, wins over what is worked out here.
: "${WEB_REPLICAS:=$(remembered WEB_REPLICAS)}" "${NGINX_MEMORY_LIMIT:=$(remembered NGINX_MEMORY_LIMIT)}"
if [[ -z ${WEB_REPLICAS:-} ]]; then
  WEB_REPLICAS=$(engine_cpus)
  log "one replica per CPU the engine can use: $WEB_REPLICAS (set WEB_REPLICAS to choose)"
fi
if [[ -z ${NGINX_MEMORY_LIMIT:-} ]]; then
  NGINX_MEMORY_LIMIT=$(nginx_memory_for "$WEB_REPLICAS")
  log "nginx's memory for what $WEB_REPLICAS replicas hold: $NGINX_MEMORY_LIMIT (set NGINX_MEMORY_LIMIT to choose)"
fi
remember WEB_REPLICAS="$WEB_REPLICAS" NGINX_MEMORY_LIMIT="$NGINX_MEMORY_LIMIT" "${OFFLINE_IMAGES[@]}"
docker compose up -d --build --wait --wait-timeout 300 "$@"
docker compose ps
log "flipfleet answers on http://${FLIP_BIND:-127.0.0.1}:${FLIP_PORT:-8080}/ (try: curl -X POST localhost:${FLIP_PORT:-8080}/flip -o flipped.jpg)"
