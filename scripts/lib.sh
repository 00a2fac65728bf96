# shellcheck shell=bash
# Shared by scripts/up.sh and scripts/swarm-*.sh (sourced, from the repo root).

# The CPUs the engine's containers can use: the engine's own count, or less when the engine runs
# under a CPU quota (its cgroup's cpu.max, or cpu.cfs_quota_us on cgroup v1), rounded up.
# (PROC_ROOT and CGROUP_ROOT: other roots, for tests/test_scripts.py.)
engine_cpus() {
  local cpus quota period pid cgroup proc=${PROC_ROOT:-/proc} root=${CGROUP_ROOT:-/sys/fs/cgroup}
  cpus=$(docker info --format '{{.NCPU}}')
  pid=$(pgrep -xo dockerd 2>/dev/null) || { echo "$cpus"; return; }
  cgroup=$(awk -F: '$2 == "" || $2 ~ /(^|,)cpu(,|$)/ { print $3; exit }' "$proc/$pid/cgroup" 2>/dev/null)
  if read -r quota period 2>/dev/null <"$root$cgroup/cpu.max"; then :
  elif read -r quota 2>/dev/null <"$root/cpu$cgroup/cpu.cfs_quota_us"; then
    read -r period <"$root/cpu$cgroup/cpu.cfs_period_us"
  fi
  if [[ ${quota:-max} =~ ^[0-9]+$ && ${period:-0} -gt 0 ]]; then
    cpus=$(( (quota + period - 1) / period < cpus ? (quota + period - 1) / period : cpus ))
  fi
  echo "$cpus"
}

# ENV_ARGS: nothing when the official images named here (and the base images) are present or can
# be pulled; else the local stand-ins are built and ENV_ARGS is (--env-file .env.offline), whose
# names are also exported for the commands that read no env file (docker stack deploy).
# OFFLINE_IMAGES: their NAME=image lines, for .env (scripts/up.sh).
choose_images() {
  local images=("${PYTHON_IMAGE:-python:3.13-slim}" "${NGINX_IMAGE:-nginx:1.29}" "$@")
  ENV_ARGS=() OFFLINE_IMAGES=()
  if docker image inspect "${images[@]}" >/dev/null 2>&1 || pull_all "${images[@]}"; then
    echo "${0##*/}: using ${images[*]}" >&2
    return
  fi
  echo "${0##*/}: the official images cannot be pulled; building local stand-ins" >&2
  bash scripts/offline-images.sh .env.offline
  ENV_ARGS=(--env-file .env.offline)
  # shellcheck disable=SC2034  # read by scripts/up.sh
  mapfile -t OFFLINE_IMAGES < <(grep -E '^[A-Z_]+=' .env.offline)
  set -a
  # shellcheck disable=SC1091
  . ./.env.offline
  set +a
}

# `nginx_memory_for REPLICAS`: a memory limit for nginx that holds what REPLICAS replicas hold
# (nginx/entrypoint.sh --plan, after a reload), rounded up to 64 MiB.
nginx_memory_for() {
  local need blocks
  # Without the edge's files, which the plan needs not and which are paths on this machine.
  need=$(env -u FLIP_TLS_CERT -u FLIP_TLS_KEY -u FLIP_API_KEYS_FILE FLIPFLEET_DEFAULTS=service/defaults.env \
    FLIP_UPSTREAM=web:8000 NGINX_RESOLVER=127.0.0.11 WEB_REPLICAS="$1" NGINX_MEMORY_BYTES=$((1 << 40)) \
    bash nginx/entrypoint.sh --plan | awk -F= '$1 == "NEEDED_AFTER_RELOAD_BYTES" { print $2 }')
  [[ -n $need ]] || { log "error: nginx/entrypoint.sh --plan gave no memory figure for $1 replicas"; return 1; }
  blocks=$(((need + (64 << 20) - 1) / (64 << 20)))
  echo "$((blocks * 64))m"
}

# `remember NAME=VALUE...`: keep these in .env, which plain `docker compose` reads, in a block of
# their own (the rest of the file is left as it is). `remembered NAME`: a value .env gives outside it.
UP_BLOCK_BEGIN="# >>> written by scripts/up.sh: what it chose"
UP_BLOCK_END="# <<< written by scripts/up.sh"
remember() {
  [[ -f .env ]] || : >.env
  awk -v begin="$UP_BLOCK_BEGIN" -v end="$UP_BLOCK_END" \
    '$0 == begin { skip = 1 } !skip { print } $0 == end { skip = 0 }' .env >.env.new
  printf '%s\n' "$UP_BLOCK_BEGIN" "$@" "$UP_BLOCK_END" >>.env.new
  mv .env.new .env
}
remembered() {
  [[ -f .env ]] || return 0
  awk -v begin="$UP_BLOCK_BEGIN" -v end="$UP_BLOCK_END" -v name="$1" -F= \
    '$0 == begin { skip = 1 } !skip && $1 == name { value = substr($0, length(name) + 2) } $0 == end { skip = 0 }
     END { printf "%s", value }' .env
}

pull_all() {
  local image
  for image in "$@"; do
    docker image inspect "$image" >/dev/null 2>&1 || docker pull -q "$image" >/dev/null 2>&1 || return 1
  done
}

# -- Docker Swarm on this engine (scripts/swarm-*.sh) --------------------------------------

STACK=${FLIPFLEET_STACK:-flipfleet}
REGISTRY_CONTAINER=$STACK-registry

log() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }

# `wait_until WHAT SECONDS COMMAND...`: poll COMMAND every second, fail after SECONDS.
wait_until() {
  local what=$1 seconds=$2
  shift 2
  for _ in $(seq "$seconds"); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 1
  done
  log "gave up waiting for $what after $seconds s"
  return 1
}

swarm_ensure() {
  [ "$(docker info --format '{{.Swarm.LocalNodeState}}')" = active ] && return
  log "no swarm here: initialising one (this engine as its only manager)"
  # Its control and gossip ports on loopback only: no other machine joins this swarm.
  docker swarm init --advertise-addr 127.0.0.1 --listen-addr 127.0.0.1:2377 >/dev/null
  # Remembered on the node, so that swarm-down.sh leaves only a swarm that swarm-up.sh made.
  docker node update --label-add flipfleet.made-by=swarm-up "$(docker info --format '{{.Swarm.NodeID}}')" >/dev/null
  log "a one-node swarm: this engine is its only manager (a swarm of machines wants three: docs/swarm.md)"
}

# `swarm_nodes`: a line per node of the swarm, as its managers see it:
# HOSTNAME ROLE STATE AVAILABILITY CPUS NGINX (NGINX: its flipfleet.nginx label, if any).
swarm_nodes() {
  docker node ls -q | xargs docker node inspect --format '{{.Description.Hostname}} {{.Spec.Role}} {{.Status.State}}
    {{- " "}}{{.Spec.Availability}} {{.Description.Resources.NanoCPUs}} {{index .Spec.Labels "flipfleet.nginx"}}' |
    awk '{ $5 = int($5 / 1000000000); print }'
}

# `web_cpus NODES`: the CPUs of the nodes (swarm_nodes' lines) that may run web tasks: ready and
# active (not drained). An engine reports the CPUs it may run on (its cpuset), not a CPU quota.
web_cpus() { awk '$3 == "ready" && $4 == "active" { n += $5 } END { print n + 0 }' <<<"$1"; }

# `stack_waiting STACK`: "NAME RUNNING/DESIRED" for each of the stack's services that does not run
# every task it wants; nothing once the stack has converged. REPLICAS reads "running/desired",
# with a suffix such as "(max 1 per node)" at times.
stack_waiting() {
  docker stack services --format '{{.Name}} {{.Replicas}}' "$1" |
    awk '{ split($2, n, "/"); if (n[1] != n[2]) print $1 " " $2 }'
}
stack_converged() { [ -z "$(stack_waiting "$1")" ]; }

# `update_status SERVICE`: "STATE STARTED-AT" of the service's last update; nothing if none.
update_status() {
  docker service inspect --format '{{if .UpdateStatus}}{{.UpdateStatus.State}} {{.UpdateStatus.StartedAt}}{{end}}' "$1"
}

service_image() { docker service inspect --format '{{.Spec.TaskTemplate.ContainerSpec.Image}}' "$1"; }

# `await_update SERVICE BEFORE`: wait for the update that started after BEFORE (update_status's
# started-at then) to settle; fail unless it completed. Swarm's own UpdateStatus is the verdict:
# the CLI's --detach=false wait judges from the tasks it sees and can return mid-update, or
# mid-rollback (a rollback restores the old spec first, so its tasks look converged).
await_update() {
  local service=$1 before=$2 state='' started='' message
  local limit=$((60 + 120 * $(docker service ps -q --filter desired-state=running "$service" | wc -l)))
  local deadline=$((SECONDS + limit))
  while [ "$SECONDS" -lt "$deadline" ]; do
    read -r state started < <(update_status "$service") || true
    # Until Swarm starts this update, the status is the previous one's.
    if [ -n "$started" ] && [ "$started" != "$before" ]; then
      case $state in
        completed) log "update of $service: completed"; return 0 ;;
        paused | rollback_completed | rollback_paused)
          message=$(docker service inspect --format '{{.UpdateStatus.Message}}' "$service")
          log "update of $service: $state ($message)"
          return 1 ;;
      esac
    fi
    sleep 1
  done
  log "update of $service: ${state:-not started} after $limit s (2 minutes a replica); gave up waiting"
  return 1
}

# REGISTRY: the address (127.0.0.1:PORT) of the registry the stack's images are pushed to.
registry_ensure() {
  if [ -z "$(docker ps -q --filter "name=^${REGISTRY_CONTAINER}\$")" ]; then
    docker rm -f "$REGISTRY_CONTAINER" >/dev/null 2>&1 || true
    docker run -d --name "$REGISTRY_CONTAINER" --restart always \
      -p "127.0.0.1:${FLIP_REGISTRY_PORT-5000}:5000" -v "$REGISTRY_CONTAINER:/var/lib/registry" \
      "${REGISTRY_IMAGE:-registry:2}" >/dev/null
  fi
  REGISTRY=$(docker port "$REGISTRY_CONTAINER" 5000/tcp | head -n 1)
  wait_until "the registry at $REGISTRY" 30 \
    python3 -c "import urllib.request; urllib.request.urlopen('http://$REGISTRY/v2/', timeout=2)"
}

# Build the web image (flipfleet-web:$FLIP_VERSION) and push it to $REGISTRY.
web_push() {
  local version=${FLIP_VERSION:-latest}
  docker compose "${ENV_ARGS[@]}" build web
  docker tag "flipfleet-web:$version" "$REGISTRY/flipfleet-web:$version"
  docker push -q "$REGISTRY/flipfleet-web:$version" >/dev/null
  log "pushed $REGISTRY/flipfleet-web:$version"
}

# nginx on loopback, joined to the stack's network (deploy/swarm/edge.yaml).
edge() {
  STACK_NETWORK=${STACK}_default docker compose "${ENV_ARGS[@]}" -f deploy/swarm/edge.yaml -p "$STACK-edge" "$@"
}
