#!/usr/bin/env bash
# One command from a bare machine to a running stack: a Docker engine if none answers, local
# base images if the official ones cannot be pulled, then `docker compose up -d --build`.
# Arguments go to `docker compose up` (e.g. scripts/up.sh --scale web=4).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/docker-engine.sh

env_args=()
python_image=${PYTHON_IMAGE:-python:3.13-slim}
nginx_image=${NGINX_IMAGE:-nginx:1.29}
if docker image inspect "$python_image" "$nginx_image" >/dev/null 2>&1 \
   || { docker pull -q "$python_image" && docker pull -q "$nginx_image"; } >/dev/null 2>&1; then
  echo "up: using $python_image and $nginx_image" >&2
else
  echo "up: the official base images cannot be pulled; building local stand-ins" >&2
  bash scripts/offline-images.sh .env.offline
  env_args=(--env-file .env.offline)
fi
docker compose "${env_args[@]}" up -d --build --wait --wait-timeout 300 "$@"
docker compose "${env_args[@]}" ps
echo "up: flipfleet answers on http://${FLIP_BIND:-127.0.0.1}:${FLIP_PORT:-8080}/ (try: curl -X POST localhost:${FLIP_PORT:-8080}/flip -o flipped.jpg)" >&2
