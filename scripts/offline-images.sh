#!/usr/bin/env bash
# Build local stand-ins for the official images the project uses (python:3.13-slim, nginx,
# registry:2, docker:dind, haproxy, prom/prometheus, nginx/nginx-prometheus-exporter) from Debian
# packages, for machines with no container registry: debootstrap a minbase rootfs, then
# `docker import` it. Writes the image names to ENV_FILE for `docker compose --env-file`.
#
# Usage: scripts/offline-images.sh [--force] [ENV_FILE]   (ENV_FILE defaults to ./.env.offline)
#   --force         rebuild images that already exist
#   DEBIAN_MIRROR   override the mirror taken from the machine's apt configuration
set -euo pipefail

PYTHON_IMAGE=flipfleet-local/python:3.13-slim-trixie
NGINX_IMAGE=flipfleet-local/nginx:sid
REGISTRY_IMAGE=flipfleet-local/registry:2
DIND_IMAGE=flipfleet-local/docker:dind
HAPROXY_IMAGE=flipfleet-local/haproxy:3.0
PROMETHEUS_IMAGE=flipfleet-local/prometheus:v2
NGINX_EXPORTER_IMAGE=flipfleet-local/nginx-prometheus-exporter:1
HERE=$(cd "$(dirname "$0")" && pwd)
PATH_ENV=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
CA_IN_IMAGE=/usr/local/share/ca-certificates/host-ca-bundle.crt
HOST_CA=/etc/ssl/certs/ca-certificates.crt

log() { printf 'offline-images: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

FORCE=0
ENV_FILE=.env.offline
while [ $# -gt 0 ]; do
  case "$1" in
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,8p' "$0" >&2; exit 0 ;;
    -*) die "unknown option: $1" ;;
    *) ENV_FILE=$1 ;;
  esac
  shift
done

[ "$(id -u)" -eq 0 ] || die "must run as root (debootstrap needs it)"
docker info >/dev/null 2>&1 || die "no Docker engine answers (see scripts/docker-engine.sh)"
[ -r "$HOST_CA" ] || die "missing $HOST_CA (containers need it to reach PyPI)"

# Mirror from the machine's own apt config, so no host name is baked into the project.
find_mirror() {
  local uri=
  if [ -r /etc/apt/sources.list.d/debian.sources ]; then
    # deb822: first URIs: line that is not the security archive; first URI on it.
    uri=$(awk 'tolower($1) == "uris:" && !/security/ { print $2; exit }' \
      /etc/apt/sources.list.d/debian.sources)
  fi
  if [ -z "$uri" ]; then
    # One-line format: drop "[options]", take the URI of the first non-security deb line.
    uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
      | sed -E 's/\[[^]]*\]//' \
      | awk '$1 == "deb" && $2 ~ /^https?:/ && !/security/ { print $2; exit }')
  fi
  printf '%s' "${uri%/}"
}
MIRROR=${DEBIAN_MIRROR:-$(find_mirror)}
[ -n "$MIRROR" ] || die "no Debian mirror found in apt config; set DEBIAN_MIRROR"

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

need_build() {
  if [ "$FORCE" -eq 0 ] && image_exists "$1"; then
    log "$1 exists, skipping (use --force to rebuild)"
    return 1
  fi
}

# Stand-in builder function -> the image it makes.
declare -A IMAGES=(
  [build_python]=$PYTHON_IMAGE [build_nginx]=$NGINX_IMAGE [build_registry]=$REGISTRY_IMAGE
  [build_dind]=$DIND_IMAGE [build_haproxy]=$HAPROXY_IMAGE [build_prometheus]=$PROMETHEUS_IMAGE [build_nginx_exporter]=$NGINX_EXPORTER_IMAGE
)
TO_BUILD=()
for builder in "${!IMAGES[@]}"; do
  need_build "${IMAGES[$builder]}" && TO_BUILD+=("$builder")
done

if [ "${#TO_BUILD[@]}" -gt 0 ]; then
  if ! command -v debootstrap >/dev/null 2>&1; then
    log "installing debootstrap"
    # Quiet and non-interactive: this may run in CI with no terminal.
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  fi
  log "mirror: $MIRROR"
fi

WORK=$(mktemp -d /var/tmp/offline-images.XXXXXX)
PIDS=()

# Stop our own workers (each in its own process group thanks to set -m), unmount anything a
# killed debootstrap left mounted (/proc, /dev binds), then remove the rootfs trees.
cleanup() {
  local rc=$? pid mnt
  for pid in "${PIDS[@]}"; do
    kill -TERM -- "-$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  # Deepest mounts first; -l so a busy mount cannot block the removal.
  awk -v w="$WORK/" 'index($2, w) == 1 { print $2 }' /proc/self/mounts | sort -r \
    | while read -r mnt; do umount -l "$mnt" 2>/dev/null || true; done
  # --one-file-system: never descend into a mount that survived the umount above.
  rm -rf --one-file-system "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Shared rootfs trimming: what debian:*-slim images do, so images and later layers stay small.
slim_rootfs() {
  local root=$1
  # Refuse to touch a tree that still has something mounted inside it.
  if awk -v w="$root/" 'index($2, w) == 1 { found = 1 } END { exit !found }' /proc/self/mounts; then
    die "$root still has mounts after debootstrap"
  fi
  cat >"$root/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
# Like the official slim images: no docs, man pages or translations from later installs.
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
  cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'EOF'
# Like the official images: no .deb or pkgcache left behind in Dockerfile layers.
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  echo 'Acquire::Languages "none";' >"$root/etc/apt/apt.conf.d/docker-no-languages"
  # Same trimming for what debootstrap already installed.
  find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/*
  if [ -d "$root/usr/share/locale" ]; then
    find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
  fi
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin \
    "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/archives/partial/*.deb \
    "$root"/var/cache/debconf/*-old "$root"/var/lib/dpkg/*-old "$root"/var/log/*.log \
    "$root"/var/log/apt/* "$root"/tmp/* "$root"/var/tmp/*
  # Docker provides /dev, hostname and resolver config at run time; drop the host's copies.
  find "$root/dev" -mindepth 1 -delete
  : >"$root/etc/resolv.conf"
  : >"$root/etc/hostname"
}

# build NAME SUITE INCLUDE TAG STOPSIGNAL [import args]: debootstrap SUITE into $WORK/NAME,
# customise with NAME_customise, import as TAG.
build() {
  local name=$1 suite=$2 include=$3 tag=$4 stopsignal=$5
  shift 5
  local root=$WORK/$name dlog=$WORK/$name.debootstrap.log start=$SECONDS old out
  log "$tag: debootstrap $suite ($include), log in $dlog"
  # stdin from /dev/null: a background job must never wait on the terminal.
  if ! debootstrap --variant=minbase --include="$include" "$suite" "$root" "$MIRROR" \
      </dev/null >"$dlog" 2>&1; then
    tail -n 30 "$dlog" >&2
    die "$tag: debootstrap failed"
  fi
  log "$tag: debootstrap took $((SECONDS - start)) s"
  slim_rootfs "$root"
  "${name}_customise" "$root"
  old=$(docker image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)
  log "$tag: docker import"
  # --numeric-owner: the rootfs's own uids, not the host's name mapping.
  if [ -z "$stopsignal" ]; then
    tar -C "$root" --numeric-owner -c . | docker import "$@" - "$tag" >/dev/null
  else
    # Engine 20.10's import rejects STOPSIGNAL: import under a scratch tag, add it with a
    # one-line build (local FROM, no registry), then drop the scratch tag.
    tar -C "$root" --numeric-owner -c . | docker import "$@" - "$tag-import" >/dev/null
    if ! out=$(printf 'FROM %s\nSTOPSIGNAL %s\n' "$tag-import" "$stopsignal" \
        | docker build -q -t "$tag" - 2>&1); then
      printf '%s\n' "$out" >&2
      docker image rm "$tag-import" >/dev/null 2>&1 || true
      die "$tag: docker build (STOPSIGNAL) failed"
    fi
    docker image rm "$tag-import" >/dev/null
  fi
  # With --force the previous build is now untagged; drop it unless something still uses it.
  if [ -n "$old" ] && [ "$old" != "$(docker image inspect --format '{{.Id}}' "$tag")" ]; then
    docker image rm "$old" >/dev/null 2>&1 || true
  fi
  log "$tag: built in $((SECONDS - start)) s"
}

python_customise() {
  local root=$1
  # The official image has python/python3 in /usr/local/bin; Dockerfiles rely on that.
  ln -sf /usr/bin/python3 "$root/usr/local/bin/python"
  ln -sf /usr/bin/python3 "$root/usr/local/bin/python3"
  # Trust the machine's CA bundle (the only way containers here reach PyPI). Kept under
  # /usr/local/share/ca-certificates so a later update-ca-certificates keeps it too.
  install -D -m 0644 "$HOST_CA" "$root$CA_IN_IMAGE"
  install -m 0644 "$HOST_CA" "$root/etc/ssl/certs/ca-certificates.crt"
}

nginx_customise() {
  local root=$1
  # A plain nginx, like the official image: no Debian welcome site, logs to the container log.
  rm -f "$root/etc/nginx/sites-enabled/default"
  ln -sf /dev/stdout "$root/var/log/nginx/access.log"
  ln -sf /dev/stderr "$root/var/log/nginx/error.log"
}

build_python() {
  build python trixie python3,python3-venv,ca-certificates "$PYTHON_IMAGE" '' \
    --change "ENV PATH=$PATH_ENV" --change 'ENV LANG=C.UTF-8' \
    --change "ENV PIP_CERT=$CA_IN_IMAGE" --change "ENV SSL_CERT_FILE=$CA_IN_IMAGE" \
    --change "ENV REQUESTS_CA_BUNDLE=$CA_IN_IMAGE" \
    --change 'CMD ["python3"]'
  # Smoke test: what a Dockerfile does first with python:3.13-slim.
  docker run --rm "$PYTHON_IMAGE" sh -ec \
    'python -V; python -c "import ssl, venv, ensurepip"; command -v useradd >/dev/null' >&2
}

build_nginx() {
  build nginx sid nginx,gettext-base "$NGINX_IMAGE" SIGQUIT \
    --change "ENV PATH=$PATH_ENV" --change 'EXPOSE 80' \
    --change 'CMD ["nginx", "-g", "daemon off;"]'
  docker run --rm "$NGINX_IMAGE" nginx -t >&2
}

registry_customise() {
  local root=$1
  # registry:2's layout: its config in /etc/docker/registry, blobs in /var/lib/registry.
  install -D -m 0644 "$HERE/offline/registry.yml" "$root/etc/docker/registry/config.yml"
  rm -f "$root/etc/docker/registry/htpasswd"
  install -d -o "$(chroot "$root" id -u docker-registry)" -g "$(chroot "$root" id -g docker-registry)" \
    "$root/var/lib/registry"
}

build_registry() {
  build registry trixie docker-registry,ca-certificates "$REGISTRY_IMAGE" '' \
    --change "ENV PATH=$PATH_ENV" --change 'USER docker-registry' --change 'EXPOSE 5000' \
    --change 'VOLUME /var/lib/registry' \
    --change 'ENTRYPOINT ["docker-registry", "serve", "/etc/docker/registry/config.yml"]'
}

dind_customise() {
  install -D -m 0755 "$HERE/offline/dind-entrypoint.sh" "$1/usr/local/bin/dind-entrypoint"
}

build_dind() {
  build dind trixie docker.io,docker-cli,iptables,ca-certificates "$DIND_IMAGE" '' \
    --change "ENV PATH=$PATH_ENV" --change 'VOLUME /var/lib/docker' \
    --change 'ENTRYPOINT ["/usr/local/bin/dind-entrypoint"]'
}

haproxy_customise() {
  # haproxy:3.0's layout: its config in /usr/local/etc/haproxy, run as the haproxy user.
  install -d "$1/usr/local/etc/haproxy"
  ln -sf /usr/sbin/haproxy "$1/usr/local/sbin/haproxy"
}

build_haproxy() {
  # SIGUSR1: haproxy's graceful stop (it finishes the connections it holds), as in the official image.
  build haproxy trixie haproxy "$HAPROXY_IMAGE" SIGUSR1 \
    --change "ENV PATH=$PATH_ENV" --change 'USER haproxy' --change 'WORKDIR /var/lib/haproxy' \
    --change 'CMD ["haproxy", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]'
  docker run --rm "$HAPROXY_IMAGE" haproxy -v >&2
}

prometheus_customise() {
  local root=$1
  # prom/prometheus's layout: /bin/prometheus, its config in /etc/prometheus, data in /prometheus.
  install -d -o 65534 -g 65534 "$root/prometheus"
  # Merged /usr (trixie) already has it as /bin/prometheus.
  [ -e "$root/bin/prometheus" ] || ln -s /usr/bin/prometheus "$root/bin/prometheus"
}

build_prometheus() {
  build prometheus trixie prometheus,ca-certificates "$PROMETHEUS_IMAGE" '' \
    --change "ENV PATH=$PATH_ENV" --change 'USER 65534' --change 'EXPOSE 9090' \
    --change 'VOLUME /prometheus' --change 'WORKDIR /prometheus' \
    --change 'ENTRYPOINT ["/bin/prometheus"]' \
    --change 'CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]'
}

nginx_exporter_customise() {
  # The official image's name for the binary that Debian calls prometheus-nginx-exporter.
  ln -sf /usr/bin/prometheus-nginx-exporter "$1/usr/bin/nginx-prometheus-exporter"
}

build_nginx_exporter() {
  build nginx_exporter trixie prometheus-nginx-exporter,ca-certificates "$NGINX_EXPORTER_IMAGE" '' \
    --change "ENV PATH=$PATH_ENV" --change 'USER 65534' --change 'EXPOSE 9113' \
    --change 'ENTRYPOINT ["/usr/bin/nginx-prometheus-exporter"]'
}

# Each debootstrap takes ~45 s and they share nothing but the mirror: run them side by side.
# Job control puts each worker in its own process group, so cleanup can stop it whole.
set -m
for builder in "${TO_BUILD[@]}"; do
  "$builder" & PIDS+=($!)
done
failed=0
for pid in "${PIDS[@]}"; do wait "$pid" || failed=1; done
PIDS=()
set +m
[ "$failed" -eq 0 ] || die "image build failed"

# Overwrite, so the file holds exactly the current names.
{
  echo "# Local stand-ins for the official images, written by scripts/offline-images.sh"
  for name in PYTHON_IMAGE NGINX_IMAGE REGISTRY_IMAGE DIND_IMAGE HAPROXY_IMAGE PROMETHEUS_IMAGE NGINX_EXPORTER_IMAGE; do
    echo "$name=${!name}"
  done
} >"$ENV_FILE"
log "wrote $ENV_FILE"
