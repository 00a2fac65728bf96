#!/usr/bin/env bash
# One command from a bare machine to a running stack: a Docker engine if none answers, local
# base images if the official ones cannot be pulled, then `docker compose up -d --build`.
# Arguments go to `docker compose up` (e.g. scripts/up.sh --scale web=4).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

bash scripts/docker-engine.sh
choose_images
docker compose "${ENV_ARGS[@]}" up -d --build --wait --wait-timeout 300 "$@"
docker compose "${ENV_ARGS[@]}" ps
echo "up: flipfleet answers on http://${FLIP_BIND:-127.0.0.1}:${FLIP_PORT:-8080}/ (try: curl -X POST localhost:${FLIP_PORT:-8080}/flip -o flipped.jpg)" >&2
