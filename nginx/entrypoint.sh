#!/bin/sh
# Render nginx.conf.template with this deployment's numbers, check the result, then run nginx.
# The limits come from the environment, else from service/defaults.env (the replicas' own
# defaults), so nginx and the replicas always agree. Needs FLIP_UPSTREAM (host:port of the
# replicas) and WEB_REPLICAS (how many to admit for at start); NGINX_RESOLVER (the platform's
# DNS) defaults to resolv.conf's; NGINX_INSTANCES (1) is how many nginx share the replicas.
# While nginx runs, the admission follows the replicas that DNS lists (a reload when it changes).
#   NGINX_CONF=out.conf nginx/entrypoint.sh --render-only   # render without running nginx
#   docker compose exec nginx sh /etc/flipfleet/nginx/entrypoint.sh --reload   # render again, reload
set -eu

HERE=$(dirname "$0")
DEFAULTS=${FLIPFLEET_DEFAULTS:-/etc/flipfleet/defaults.env}
TEMPLATE=${NGINX_TEMPLATE:-$HERE/nginx.conf.template}
OUT=${NGINX_CONF:-/tmp/nginx.conf}
# How often the replica count is looked up while nginx runs.
FOLLOW_SECONDS=5
# Answers stream through these buffers (proxy_buffers): how many, and KiB each.
ANSWER_BUFFER_COUNT=16
ANSWER_BUFFER_KIB=64
ANSWER_BUFFER_BYTES=$((ANSWER_BUFFER_COUNT * ANSWER_BUFFER_KIB * 1024))
# Bodies under 1 MB (the template's maps) are "small"; this many are admitted at once.
SMALL_BODIES=128
SMALL_BODY_BYTES=1000000
# nginx's own memory beside the bodies and answers it holds: workers, zones, connections.
BASE_BYTES=$((64 * 1024 * 1024))

log() { echo "flipfleet-nginx: $*" >&2; }
die() { log "error: $*"; exit 1; }

# A variable the environment sets wins over the defaults file. (Kubernetes sets them all from
# its ConfigMap and mounts no file.)
if [ -r "$DEFAULTS" ]; then
  while IFS='=' read -r key value; do
    case $key in ''|\#*) continue ;; esac
    case $key in *[!A-Z0-9_]*) die "bad line in $DEFAULTS: $key" ;; esac
    eval "current=\${$key-}"
    [ -n "$current" ] || eval "$key=\$value"
  done <"$DEFAULTS"
fi
: "${NGINX_RESOLVER:=$(awk '$1 == "nameserver" { print $2; exit }' /etc/resolv.conf 2>/dev/null)}"

for name in FLIP_UPSTREAM NGINX_RESOLVER WEB_REPLICAS FLIP_QUEUE FLIP_MAX_BYTES; do
  eval "value=\${$name-}"
  [ -n "$value" ] || die "$name is not set"
done
: "${NGINX_INSTANCES:=1}"
for name in WEB_REPLICAS FLIP_QUEUE FLIP_MAX_BYTES NGINX_INSTANCES; do
  eval "value=\$$name"
  case $value in ''|*[!0-9]*) die "$name must be a whole number, not '$value'" ;; esac
  [ "$value" -ge 1 ] || die "$name must be at least 1"
done

# The memory limit of this container's cgroup (v2, then v1), if any; NGINX_MEMORY_BYTES instead
# when set (a check of the arithmetic outside a container).
memory_limit() {
  limit=${NGINX_MEMORY_BYTES-}
  if [ -n "$limit" ]; then
    :
  elif [ -r /sys/fs/cgroup/memory.max ]; then
    limit=$(cat /sys/fs/cgroup/memory.max)
  elif [ -r /sys/fs/cgroup/memory/memory.limit_in_bytes ]; then
    limit=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes)
  fi
  # "max", or v1's "unlimited" (a number near 2^63), mean no limit.
  case $limit in ''|max|*[!0-9]*) return ;; esac
  [ ${#limit} -lt 19 ] && echo "$limit"
}

# render REPLICAS [EXTRA]: write the config for that many replicas, admitting EXTRA (0) large
# bodies more, to $OUT (atomically), and log it.
render() {
  replicas=$1
  extra=${2:-0}
  # Each of the nginx sharing the replicas sends a replica its share of what it holds.
  max_conns=$((FLIP_QUEUE / NGINX_INSTANCES))
  [ "$max_conns" -ge 1 ] || max_conns=1
  # Every admitted request may hold its whole body and its answer buffers in memory at once:
  #   need = large x (FLIP_MAX_BYTES + answer buffers) + small x (1 MB + answer buffers) + base
  large=$((replicas * max_conns + extra))
  small=$SMALL_BODIES
  per_large=$((FLIP_MAX_BYTES + ANSWER_BUFFER_BYTES))
  per_small=$((SMALL_BODY_BYTES + ANSWER_BUFFER_BYTES))
  need=$((large * per_large + small * per_small + BASE_BYTES))
  if [ -n "$limit" ] && [ "$need" -gt "$limit" ]; then
    # Too little memory for what the replicas could take: admit fewer bodies of both kinds, in
    # the same proportion, rather than risk nginx being killed for memory.
    available=$((limit - BASE_BYTES))
    wanted=$((need - BASE_BYTES))
    [ "$available" -gt 0 ] || die "a memory limit of $limit bytes leaves nothing for bodies"
    large_fit=$((large * available / wanted))
    small_fit=$((small * available / wanted))
    [ "$large_fit" -ge 1 ] && [ "$small_fit" -ge 1 ] ||
      die "a memory limit of $limit bytes cannot hold one body of $FLIP_MAX_BYTES bytes"
    log "the memory limit ($((limit / 1048576)) MiB) holds $large_fit large and $small_fit small bodies," \
      "not $large and $small: admitting those"
    large=$large_fit
    small=$small_fit
    need=$((large * per_large + small * per_small + BASE_BYTES))
  fi
  sed -e "s|@FLIP_UPSTREAM@|$FLIP_UPSTREAM|g" \
      -e "s|@NGINX_RESOLVER@|$NGINX_RESOLVER|g" \
      -e "s|@WEB_REPLICAS@|$replicas|g" \
      -e "s|@FLIP_QUEUE@|$FLIP_QUEUE|g" \
      -e "s|@MAX_CONNS@|$max_conns|g" \
      -e "s|@FLIP_MAX_BYTES@|$FLIP_MAX_BYTES|g" \
      -e "s|@FLIP_MAX_BYTES_TEXT@|$max_bytes_text|g" \
      -e "s|@ADMITTED_LARGE@|$large|g" \
      -e "s|@ADMITTED_SMALL@|$small|g" \
      -e "s|@ANSWER_BUFFERS@|$ANSWER_BUFFER_COUNT ${ANSWER_BUFFER_KIB}k|g" \
      "$TEMPLATE" >"$OUT.new"
  if grep -q '@[A-Z_]*@' "$OUT.new"; then
    die "unfilled placeholders in $OUT: $(grep -o '@[A-Z_]*@' "$OUT.new" | sort -u | tr '\n' ' ')"
  fi
  mv "$OUT.new" "$OUT"
  log "upstream $FLIP_UPSTREAM ($replicas replicas), max_conns $max_conns per replica; admitting $large" \
    "bodies of up to $FLIP_MAX_BYTES bytes and $small under 1 MB" \
    "(needs $((need / 1048576)) MiB${limit:+ of $((limit / 1048576)) MiB})"
}

replicas_listed() {
  getent ahostsv4 "${FLIP_UPSTREAM%:*}" 2>/dev/null | awk '{ print $1 }' | sort -u | wc -l
}

# reload REPLICAS: render for that many and reload nginx gracefully (requests in progress finish
# on the old workers). A reloaded config admits one large body more: the old worker frees a
# finished request's slot a moment after its client has the answer, and the client's next
# request reaches the new worker first (clients exactly at the bound were refused at every scale
# without it: tests/test_reliability.py). A first start has no old worker, so it admits none more.
reload() {
  render "$1" 1
  nginx -t -q -c "$OUT" -e stderr && nginx -s reload -c "$OUT" -e stderr
}

# Replicas come and go (--scale, docker service scale, an autoscaler): when DNS lists another
# number of them, reload for that number. A lookup that finds none keeps the last bound.
follow_replicas() {
  current=$1
  while sleep "$FOLLOW_SECONDS"; do
    seen=$(replicas_listed)
    [ "$seen" -gt 0 ] && [ "$seen" -ne "$current" ] || continue
    if reload "$seen"; then
      current=$seen
    fi
  done
}

limit=$(memory_limit || true)
max_bytes_text=$(echo "$FLIP_MAX_BYTES" | awk '{ s = $0; while (s ~ /[0-9][0-9][0-9][0-9]/) { sub(/[0-9][0-9][0-9]($|,)/, ",&", s) } print s }')
if [ "${1-}" = "--reload" ]; then
  listed=$(replicas_listed)
  [ "$listed" -gt 0 ] || listed=$WEB_REPLICAS
  reload "$listed"
  exit
fi
render "$WEB_REPLICAS"

[ "${1-}" = "--render-only" ] && exit 0
nginx -t -q -c "$OUT" -e stderr
follow_replicas "$WEB_REPLICAS" &
exec nginx -c "$OUT" -e stderr -g 'daemon off;'
