#!/usr/bin/env bash
# Builds, without any registry, the third-party images docker-compose.yml names, from Debian:
#   ldm-base:bookworm         debootstrap --variant=minbase bookworm, imported (the root of the rest)
#   python:3.11-slim          python.Dockerfile      (Debian's Python 3.11, pip into the system works)
#   redis:7.4-alpine          redis.Dockerfile       (Debian's redis-server 7.0 + redis-cli)
#   prom/prometheus:v2.55.1   prometheus.Dockerfile  (Debian's Prometheus 2.42, official layout)
# Grafana has no Debian package: grafana/grafana is not built (docker/smoke.sh starts no grafana).
#
# Usage: docker/base-images/build.sh [--force]
# An image is rebuilt only when missing or when its recipe changed (a label holds the recipe's
# hash), so a second run takes seconds. Needs a running dockerd; ldm-base needs root, debootstrap
# and HTTP access to the Debian mirror (LDM_DEBIAN_MIRROR, default http://deb.debian.org/debian).
# Builds use host networking. Extra CA certificates of the host (SSL_CERT_FILE, else
# /etc/ssl/certs/ca-certificates.crt) go into the Python image, so pip behind a TLS-intercepting
# proxy works inside `docker build`. Heavy steps run under `nice` (LDM_NICE, default 15).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MIRROR="${LDM_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SUITE=bookworm
BASE_TAG="ldm-base:${SUITE}"
NICE=(nice -n "${LDM_NICE:-15}")
LABEL=org.ldm-serve.base-recipe
FORCE=0
[ "${1:-}" = "--force" ] && FORCE=1

log() { printf '[base-images %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

docker info >/dev/null 2>&1 || die "no Docker daemon answers (docker info failed)"

WORK="$(mktemp -d /var/tmp/ldm-base-images.XXXXXX)"
unmount_under() {  # debootstrap mounts /proc and /sys inside the root: never delete through one
    local mnt
    findmnt -rn -o TARGET | { grep -F "$1/" || true; } | sort -r | while read -r mnt; do
        umount -l "$mnt" || true
    done
}
cleanup() {
    unmount_under "$WORK"
    rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT

# The CA bundle the host trusts (the Python image appends it to Debian's).
HOST_CA="${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}"
if [ -f "$HOST_CA" ]; then cp "$HOST_CA" "$WORK/host-ca.crt"; else : >"$WORK/host-ca.crt"; fi

current() {  # the recipe label of image $1, empty when the image is missing
    docker image inspect -f "{{ index .Config.Labels \"$LABEL\" }}" "$1" 2>/dev/null || true
}

drop_replaced() {  # id tag: remove the image `tag` named before a rebuild, unless still in use
    if [ -n "$1" ] && [ "$1" != "$(docker image inspect -f '{{.Id}}' "$2")" ]; then
        docker rmi "$1" >/dev/null 2>&1 || true
    fi
}

build_rootfs() {
    local hash="$1" rootfs="$WORK/rootfs"
    [ "$(id -u)" = 0 ] || die "building $BASE_TAG needs root (debootstrap)"
    command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"
    log "debootstrap $SUITE from $MIRROR (minutes)"
    if ! "${NICE[@]}" debootstrap --variant=minbase "$SUITE" "$rootfs" "$MIRROR" \
        >"$WORK/debootstrap.log" 2>&1; then
        tail -n 30 "$WORK/debootstrap.log" >&2
        [ -f "$rootfs/debootstrap/debootstrap.log" ] && tail -n 30 "$rootfs/debootstrap/debootstrap.log" >&2
        die "debootstrap failed (log above)"
    fi
    # What Debian's official image adds: no service starts during builds, no apt caches kept.
    printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
    chmod 755 "$rootfs/usr/sbin/policy-rc.d"
    cat >"$rootfs/etc/apt/sources.list" <<EOF
deb ${MIRROR} ${SUITE} main
deb ${MIRROR} ${SUITE}-updates main
deb ${MIRROR%/debian}/debian-security ${SUITE}-security main
EOF
    cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
    rm -rf "${rootfs:?}"/var/cache/apt/archives/*.deb "${rootfs:?}"/var/lib/apt/lists/* \
        "${rootfs:?}"/var/log/*.log "${rootfs:?}/debootstrap"
    log "importing the root as $BASE_TAG"
    old_id="$(docker image inspect -f '{{.Id}}' "$BASE_TAG" 2>/dev/null || true)"
    tar --numeric-owner -C "$rootfs" -c . | docker import \
        --change "LABEL $LABEL=$hash" --change 'CMD ["bash"]' - "$BASE_TAG" >/dev/null
    drop_replaced "$old_id" "$BASE_TAG"
    unmount_under "$rootfs"
    rm -rf --one-file-system "$rootfs"
}

build_image() {  # tag dockerfile hash
    local tag="$1" dockerfile="$2" hash="$3" context="$WORK/ctx-${2%.Dockerfile}"
    mkdir -p "$context"
    cp "$HERE/$dockerfile" "$context/Dockerfile"
    cp "$WORK/host-ca.crt" "$context/"
    log "building $tag from $dockerfile"
    old_id="$(docker image inspect -f '{{.Id}}' "$tag" 2>/dev/null || true)"
    if ! DOCKER_BUILDKIT=0 "${NICE[@]}" docker build --network host --label "$LABEL=$hash" \
        -t "$tag" "$context" >"$WORK/build.log" 2>&1; then
        tail -n 40 "$WORK/build.log" >&2
        die "building $tag failed (log above)"
    fi
    drop_replaced "$old_id" "$tag"
}

# The base's recipe: the mirror, the suite and the function above that makes it.
base_hash="$({ printf '%s %s\n' "$MIRROR" "$SUITE"; declare -f build_rootfs; } | sha256sum | cut -c1-16)"
rebuilt_base=0
if [ "$FORCE" = 1 ] || [ "$(current "$BASE_TAG")" != "$base_hash" ]; then
    build_rootfs "$base_hash"
    rebuilt_base=1
else
    log "$BASE_TAG is up to date"
fi

while read -r tag dockerfile extra; do
    files=("$HERE/$dockerfile")
    [ "$extra" = ca ] && files+=("$WORK/host-ca.crt")
    hash="$(printf '%s\n' "$base_hash" | cat - "${files[@]}" | sha256sum | cut -c1-16)"
    label="$(current "$tag")"
    if docker image inspect "$tag" >/dev/null 2>&1 && [ -z "$label" ]; then
        log "$tag exists and was not built here (pulled?): kept"
    elif [ "$FORCE" = 1 ] || [ "$rebuilt_base" = 1 ] || [ "$label" != "$hash" ]; then
        build_image "$tag" "$dockerfile" "$hash"
    else
        log "$tag is up to date"
    fi
done <<'EOF'
python:3.11-slim python.Dockerfile ca
redis:7.4-alpine redis.Dockerfile -
prom/prometheus:v2.55.1 prometheus.Dockerfile -
EOF
log "base images ready"
