#!/usr/bin/env bash
# One command from a bare machine to a running stack: a Docker engine if none answers, local
# base images if the official ones cannot be pulled, one replica per CPU the engine can use
# (unless WEB_REPLICAS says otherwise), nginx's memory for that many, then
# `docker compose up -d --build`. Arguments go to `docker compose up`.
# What it chose (the replica count, nginx's memory, the local images) is written to .env, which
# plain `docker compose` reads: the README's next commands keep it. With FLIP_TLS_CERT and
# FLIP_TLS_KEY (a PEM certificate chain and its key), nginx serves HTTPS; with FLIP_API_KEYS_FILE,
# every flip needs one of its keys. They are kept there too.
set -euo pipefail
# Absolute, from where they were given (compose would read a relative path from the checkout).
for name in FLIP_TLS_CERT FLIP_TLS_KEY FLIP_API_KEYS_FILE; do
  [[ -z ${!name:-} ]] || export "$name=$(realpath -e "${!name}")"
done
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
edge=() scheme=http
if [[ -n ${FLIP_TLS_CERT:-}${FLIP_TLS_KEY:-} ]]; then
  edge=(FLIP_TLS_CERT="${FLIP_TLS_CERT:-}" FLIP_TLS_KEY="${FLIP_TLS_KEY:-}") scheme=https
fi
[[ -z ${FLIP_API_KEYS_FILE:-} ]] || edge+=(FLIP_API_KEYS_FILE="$FLIP_API_KEYS_FILE")
remember WEB_REPLICAS="$WEB_REPLICAS" NGINX_MEMORY_LIMIT="$NGINX_MEMORY_LIMIT" "${edge[@]}" "${OFFLINE_IMAGES[@]}"
docker compose up -d --build --wait --wait-timeout 300 "$@"
docker compose ps
log "flipfleet answers on $scheme://${FLIP_BIND:-127.0.0.1}:${FLIP_PORT:-8080}/ (try: curl -X POST $scheme://localhost:${FLIP_PORT:-8080}/flip -o flipped.jpg)"
