#!/bin/bash
# nginx for flipfleet: fill nginx.conf.template in with this deployment's numbers (envsubst), check
# it, run nginx, and fill it in again and reload whenever DNS lists another number of replicas (or
# of nginx). Settings come from the environment, else from the replicas' own defaults file, so
# nginx and the replicas agree. Needs FLIP_UPSTREAM (the replicas' host:port); WEB_REPLICAS is how
# many to admit for at start (else as many as DNS lists then); NGINX_PEERS, a name that DNS
# answers with every nginx, makes each admit its share (else NGINX_INSTANCES, 1). FLIP_TLS_CERT and
# FLIP_TLS_KEY (a PEM certificate chain and its key) make port 8080 serve HTTPS instead of HTTP.
# FLIP_API_KEYS_FILE, a file of `name key` lines, makes every POST /flip need a listed key; the
# file is read again whenever it changes. FLIP_CORS_ORIGINS, origins separated by spaces, lets web
# pages of those origins call /flip. docs/operations.md describes every variable.
#   NGINX_CONF=out.conf nginx/entrypoint.sh --render-only   # write the config, run nothing
#   nginx/entrypoint.sh --plan                              # print what it admits, as KEY=VALUE
#   nginx/entrypoint.sh --reload                            # fill in again, reload a running nginx
#                                                           # (and read the certificate and key again)
set -euo pipefail

here=$(dirname "$0")
defaults=${FLIPFLEET_DEFAULTS:-/etc/flipfleet/defaults.env}
template=${NGINX_TEMPLATE:-$here/nginx.conf.template}
out=${NGINX_CONF:-/tmp/nginx.conf}
# Answers stream through proxy_buffers of this many KiB each.
answer_buffers=(16 64)
# Bodies under 1 MB are "small" (the template's maps): this many at once, apart from the rest.
small_bodies=128 small_body_bytes=1000000
# nginx's own memory beside the bodies and answers it holds: workers, zones, connections.
base_bytes=$((64 << 20))
follow_seconds=5
keys_file=${FLIP_API_KEYS_FILE:-}
keys_conf=${NGINX_KEYS_CONF:-$(dirname "$out")/api-keys.conf}

log() { echo "flipfleet-nginx: $*" >&2; }
die() { log "error: $*"; exit 1; }

if [[ -r $defaults ]]; then
  while IFS='=' read -r key value; do
    [[ -z $key || $key == \#* ]] && continue
    [[ $key =~ ^[A-Z][A-Z0-9_]*$ ]] || die "bad line in $defaults: $key"
    [[ -n ${!key:-} ]] || export "$key=$value"
  done <"$defaults"
fi
: "${NGINX_RESOLVER:=$(awk '$1 == "nameserver" { print $2; exit }' /etc/resolv.conf 2>/dev/null)}"
: "${NGINX_INSTANCES:=1}" "${NGINX_TRUSTED_PROXIES:=}" "${NGINX_PEERS:=}"
export NGINX_RESOLVER
for name in FLIP_UPSTREAM NGINX_RESOLVER FLIP_QUEUE FLIP_MAX_BYTES FLIP_CLIENT_SHARE FLIP_ANSWER_SECONDS; do
  [[ -n ${!name:-} ]] || die "$name is not set"
done
listed() { getent ahostsv4 "$1" 2>/dev/null | awk '{ print $1 }' | sort -u | wc -l; }
: "${WEB_REPLICAS:=$(n=$(listed "${FLIP_UPSTREAM%:*}"); echo $((n > 0 ? n : 1)))}"
for name in WEB_REPLICAS FLIP_QUEUE FLIP_MAX_BYTES FLIP_CLIENT_SHARE FLIP_ANSWER_SECONDS NGINX_INSTANCES; do
  [[ ${!name} =~ ^[0-9]+$ ]] || die "$name must be a whole number, not '${!name}'"
  ((${!name} >= 1)) || die "$name must be at least 1"
done
for network in $NGINX_TRUSTED_PROXIES; do
  [[ $network =~ ^[0-9a-fA-F.:]+(/[0-9]{1,3})?$ ]] || die "NGINX_TRUSTED_PROXIES: '$network' is not an address or network"
done
: "${FLIP_TLS_CERT:=}" "${FLIP_TLS_KEY:=}"
if [[ -n $FLIP_TLS_CERT || -n $FLIP_TLS_KEY ]]; then
  for name in FLIP_TLS_CERT FLIP_TLS_KEY; do
    [[ -n ${!name} ]] || die "$name is not set: HTTPS needs both FLIP_TLS_CERT and FLIP_TLS_KEY (or neither, for plain HTTP)"
    [[ -f ${!name} && -r ${!name} ]] || die "$name: cannot read ${!name} as uid $(id -u) (a PEM file; the key must be readable by nginx's user)"
    grep -q -- '-----BEGIN ' "${!name}" || die "$name: ${!name} is not PEM (no -----BEGIN line)"
  done
fi

# FLIP_CORS_ORIGINS: each origin as a browser sends it in Origin (lower case, no default port), for
# the map of listed origins; a malformed one stops nginx, named. Never "*": only listed pages.
cors_origins='' cors_listed=''
origin_host='\[[0-9a-fA-F:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?'
read -r -a origins <<<"${FLIP_CORS_ORIGINS:-}"
for origin in "${origins[@]}"; do
  [[ $origin != "*" ]] || die "FLIP_CORS_ORIGINS: '*' is not allowed: list each origin (scheme://host[:port])"
  [[ ${origin,,} =~ ^(https?)://($origin_host)(:([1-9][0-9]{0,4}))?$ ]] ||
    die "FLIP_CORS_ORIGINS: '$origin' is not an origin: scheme://host[:port], http or https, no path"
  scheme=${BASH_REMATCH[1]} port=${BASH_REMATCH[5]}
  [[ -z $port ]] || ((port <= 65535)) || die "FLIP_CORS_ORIGINS: '$origin': no such port"
  [[ "$scheme:$port" != http:80 && "$scheme:$port" != https:443 ]] ||
    die "FLIP_CORS_ORIGINS: '$origin': a browser sends it without its default port"
  origin=${BASH_REMATCH[0]}
  [[ " $cors_listed " != *" $origin "* ]] || continue
  cors_listed+="${cors_listed:+ }$origin"
  cors_origins+="${cors_origins:+$'\n        '}\"$origin\" \"$origin\";"
done

# render_keys: write the map from each key of $keys_file to its name (none without the file),
# atomically. A line it cannot take fails it, naming the line but never the key it holds.
render_keys() {
  local line number=0 name key rest keys=0
  local -A seen=()
  {
    # shellcheck disable=SC2016  # nginx's variables, written as they are
    echo 'map $flip_presented_key $flip_key_name {'
    echo '    default "";'
    if [[ -n $keys_file ]]; then
      [[ -r $keys_file && -f $keys_file ]] || { log "error: cannot read the API keys file $keys_file"; return 1; }
      while IFS= read -r line || [[ -n $line ]]; do
        number=$((number + 1))
        line=${line%%#*}
        read -r name key rest <<<"$line" || true
        [[ -n $name ]] || continue
        local where="$keys_file line $number"
        [[ -n $key && -z $rest ]] || { log "error: $where: want a name and a key, separated by spaces"; return 1; }
        [[ $name =~ ^[A-Za-z0-9._-]{1,64}$ ]] ||
          { log "error: $where: a name is 1 to 64 letters, digits, '.', '_' or '-'"; return 1; }
        [[ $key =~ ^[A-Za-z0-9._+/=-]{16,128}$ ]] ||
          { log "error: $where ($name): a key is 16 to 128 letters, digits, '.', '_', '+', '/', '=' or '-'"; return 1; }
        [[ -z ${seen[$key]:-} ]] || { log "error: $where ($name): the same key as line ${seen[$key]}"; return 1; }
        seen[$key]=$number keys=$((keys + 1))
        echo "    \"$key\" \"$name\";"
      done <"$keys_file"
    fi
    echo '}'
  } >"$keys_conf.new" || { rm -f "$keys_conf.new"; return 1; }
  mv "$keys_conf.new" "$keys_conf"
  [[ -z $keys_file ]] || log "API keys: $keys listed in $keys_file; a POST /flip without one of them gets the JSON 401"
}
# What the keys file holds now (its checksum), to see it change; empty without keys.
keys_state() { [[ -z $keys_file ]] || { cksum <"$keys_file"; } 2>/dev/null || echo unreadable; }

# This container's memory limit (cgroup v2, then v1), or NGINX_MEMORY_BYTES; empty when unlimited.
memory_limit() {
  local limit=${NGINX_MEMORY_BYTES:-$(cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null | head -n 1)}
  # "max", or v1's "unlimited" (a number near 2^63): no limit.
  [[ $limit =~ ^[0-9]{1,18}$ ]] && echo "$limit"
}

# plan REPLICAS INSTANCES EXTRA: what to admit. Each admitted request may hold its whole body and
# its answer buffers at once; when the memory limit cannot hold that for every place in the
# replicas' queues (this nginx's share, plus EXTRA), admit fewer of both sizes, in proportion.
plan() {
  local replicas=$1 instances=$2 extra=$3 limit per_large per_small wanted room
  max_conns=$((FLIP_QUEUE / instances > 0 ? FLIP_QUEUE / instances : 1))
  large=$((replicas * max_conns + extra)) small=$small_bodies
  per_large=$((FLIP_MAX_BYTES + answer_buffers[0] * answer_buffers[1] * 1024))
  per_small=$((small_body_bytes + answer_buffers[0] * answer_buffers[1] * 1024))
  need=$((large * per_large + small * per_small + base_bytes)) capped=
  limit=$(memory_limit || true)
  if [[ -n $limit ]] && ((need > limit)); then
    ((limit > base_bytes)) || die "a memory limit of $limit bytes leaves nothing for bodies"
    wanted=$((need - base_bytes)) room=$((limit - base_bytes))
    capped="the memory limit ($((limit >> 20)) MiB) holds $((large * room / wanted)) large and"
    capped+=" $((small * room / wanted)) small bodies, not $large and $small: admitting those"
    large=$((large * room / wanted)) small=$((small * room / wanted))
    ((large >= 1 && small >= 1)) || die "a memory limit of $limit bytes cannot hold one body of $FLIP_MAX_BYTES bytes"
    need=$((large * per_large + small * per_small + base_bytes))
  fi
  memory=${limit:+$((limit >> 20))}
}

with_commas() {
  local n=$1
  while [[ $n =~ ^([0-9]+)([0-9]{3})(,.*)?$ ]]; do n="${BASH_REMATCH[1]},${BASH_REMATCH[2]}${BASH_REMATCH[3]}"; done
  echo "$n"
}

# The certificate and key as they are now, as a checksum.
tls_now() { { cat "$FLIP_TLS_CERT" "$FLIP_TLS_KEY" 2>/dev/null || true; } | cksum; }

# The server block's TLS: Mozilla's "intermediate" profile (TLS 1.2 and 1.3, forward-secret AEAD
# ciphers; its DHE ones are left out, as they need a dhparam file), HTTP/2 beside HTTP/1.1, and a
# plain-HTTP request to this port (nginx's 497) answered with the JSON 400 rather than an HTML page.
tls_directives() {
  local ciphers=ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384
  ciphers+=:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305
  printf '%s\n        ' "http2 on;" "ssl_certificate $FLIP_TLS_CERT;" "ssl_certificate_key $FLIP_TLS_KEY;" \
    "ssl_protocols TLSv1.2 TLSv1.3;" "ssl_ciphers $ciphers;" "ssl_prefer_server_ciphers off;" \
    "ssl_session_cache shared:tls:10m;" "ssl_session_timeout 1d;" "ssl_session_tickets off;"
  printf '%s' "error_page 497 =400 /_flipfleet_https;"
}

# render REPLICAS INSTANCES EXTRA: write the config to $out (atomically) and say what it admits.
render() {
  plan "$@"
  [[ -z $capped ]] || log "$capped"
  local real_ip='' network placeholders
  for network in $NGINX_TRUSTED_PROXIES; do real_ip+="set_real_ip_from $network;"$'\n    '; done
  [[ -z $real_ip ]] || real_ip+="real_ip_header X-Forwarded-For;"$'\n    '"real_ip_recursive on;"
  # Port 8080 speaks HTTPS with a certificate, else plain HTTP (the healthcheck's port is plain either way).
  local listen='listen 8080;' tls='' tls_main=''
  if [[ -n $FLIP_TLS_CERT ]]; then
    listen='listen 8080 ssl;'
    tls=$(tls_directives)
    # Every reload reads the files again: nginx would keep one whose inode and mtime (in seconds)
    # are unchanged, so a certificate copied over the last within the same second would be ignored.
    tls_main='ssl_object_cache_inheritable off;'
  fi
  # Only the template's own ${NAME}s: nginx's $variables stay as they are.
  # shellcheck disable=SC2016
  placeholders=$(grep -o '\${[A-Z_]*}' "$template" | sort -u | tr -d '\n')
  local key_check=''
  # shellcheck disable=SC2016  # nginx's variable, written as it is
  [[ -z $keys_file ]] || key_check='if ($flip_key_name = "") { return 401; }'
  REPLICAS=$1 MAX_CONNS=$max_conns ADMITTED_LARGE=$large ADMITTED_SMALL=$small REAL_IP=$real_ip \
    KEYS_CONF=$keys_conf KEY_CHECK=$key_check CORS_ORIGINS=$cors_origins CORS_VARY=${cors_listed:+Origin} \
    LISTEN=$listen TLS=$tls TLS_MAIN=$tls_main CLIENT_SLOTS=$((FLIP_CLIENT_SHARE + $3)) \
    ANSWER_BUFFERS="${answer_buffers[0]} ${answer_buffers[1]}k" FLIP_MAX_BYTES_TEXT=$(with_commas "$FLIP_MAX_BYTES") \
    envsubst "$placeholders" <"$template" >"$out.new"
  mv "$out.new" "$out"
  # What nginx reads at this start or reload: follow compares the files with it.
  [[ -z $FLIP_TLS_CERT ]] || tls_now >"$out.tls"
  log "upstream $FLIP_UPSTREAM ($1 replicas), max_conns $max_conns per replica from this nginx (of $2); admitting $large" \
    "bodies of up to $FLIP_MAX_BYTES bytes and $small under 1 MB, at most $FLIP_CLIENT_SHARE from one client" \
    "(needs $((need >> 20)) MiB${memory:+ of $memory MiB})"
}

# What DNS lists now, or the last count when it lists none (a lookup between two tasks).
replicas_now() { local n; n=$(listed "${FLIP_UPSTREAM%:*}"); echo $((n > 0 ? n : ${1:-$WEB_REPLICAS})); }
instances_now() {
  [[ -n $NGINX_PEERS ]] || { echo "$NGINX_INSTANCES"; return; }
  local peers own n
  peers=$(getent ahostsv4 "$NGINX_PEERS" 2>/dev/null | awk '{ print $1 }' | sort -u)
  n=$(grep -c . <<<"$peers" || true)
  # DNS lists an nginx only once its healthcheck passes: until then this one counts itself.
  # (Its own addresses: Docker and Kubernetes write them in /etc/hosts under its hostname.)
  own=$(awk -v host="$HOSTNAME" '$2 == host { print $1 }' /etc/hosts 2>/dev/null || true)
  if ((n > 0)) && [[ -n $own ]] && ! grep -qxF -f <(echo "$own") <<<"$peers"; then n=$((n + 1)); fi
  echo $((n > 0 ? n : ${1:-$NGINX_INSTANCES}))
}

# A reloaded config admits one large body more, and one more from each client: an old worker
# frees a finished request's slot a moment after its client has the answer, and the client's next
# request reaches the new worker first. A first start has no old worker.
reload() {
  render "$1" "$2" 1
  nginx -t -q -c "$out" -e stderr && nginx -s reload -c "$out" -e stderr
}

# Reload when the replicas or nginx change in number, when the keys file changes, or when the
# certificate or key differ from what the last render (this loop's or a --reload's) gave nginx: a
# renewed Kubernetes Secret, or files copied over the mounted ones. A pair that fails nginx's check
# (a key not copied yet) is tried again once it changes; a keys file that no longer reads keeps the
# keys in use (and says why) until it is fixed. `follow REPLICAS INSTANCES KEYS`, KEYS the keys
# file's state (keys_state) from before nginx first read it.
follow() {
  local replicas=$1 instances=$2 keys=$3 seen_replicas seen_instances seen_keys
  while sleep "$follow_seconds"; do
    seen_replicas=$(replicas_now "$replicas") seen_instances=$(instances_now "$instances") seen_keys=$(keys_state)
    if [[ $seen_keys != "$keys" ]]; then
      keys=$seen_keys
      render_keys || { log "keeping the API keys in use"; continue; }
    elif [[ -n $FLIP_TLS_CERT && $(tls_now) != "$(cat "$out.tls" 2>/dev/null)" ]]; then
      log "the certificate or key changed: reloading"
    elif [[ $seen_replicas == "$replicas" && $seen_instances == "$instances" ]]; then
      continue
    fi
    reload "$seen_replicas" "$seen_instances" && replicas=$seen_replicas instances=$seen_instances
  done
}

case ${1-} in
  --plan)
    plan "$WEB_REPLICAS" "$NGINX_INSTANCES" 1
    after_reload=$need
    plan "$WEB_REPLICAS" "$NGINX_INSTANCES" 0
    printf '%s\n' "MAX_CONNS=$max_conns" "ADMITTED_LARGE=$large" "ADMITTED_SMALL=$small" "NEEDED_BYTES=$need" \
      "NEEDED_AFTER_RELOAD_BYTES=$after_reload" "MEMORY_LIMIT_BYTES=$(memory_limit || true)" \
      "CLIENT_SHARE=$FLIP_CLIENT_SHARE" ;;
  --render-only) render_keys || exit 1; render "$WEB_REPLICAS" "$NGINX_INSTANCES" 0 ;;
  --reload) render_keys || exit 1; reload "$(replicas_now)" "$(instances_now)" ;;
  *)
    # Before the first read: an edit made while nginx starts is seen as a change.
    keys_at_start=$(keys_state)
    render_keys || die "nginx not started"
    [[ -z $cors_listed ]] || log "CORS: web pages of $cors_listed may call /flip"
    render "$WEB_REPLICAS" "$(instances_now)" 0
    nginx -t -q -c "$out" -e stderr
    follow "$WEB_REPLICAS" "$(instances_now)" "$keys_at_start" &
    exec nginx -c "$out" -e stderr -g 'daemon off;' ;;
esac
