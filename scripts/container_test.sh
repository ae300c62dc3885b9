#!/usr/bin/env bash
# `make container-test`: build the CPU image and the compose stack without any image registry, run them, check them.
#
# The parts come from this machine: a Debian bookworm base image made with debootstrap (scripts/base_image.sh),
# the torch CPU wheel from a local wheel directory, the host's CA bundle for pip (networks that re-sign TLS),
# the PyPI packages through pip, Debian's nginx through apt. Checked: the image's health check follows
# CLIPWISE_PORT, /readyz, a prediction on examples/moving_right.mp4, two replicas behind nginx both answering,
# and a clean stop (every container exits 0 on SIGTERM / SIGQUIT). Uses the Docker engine that answers, or
# starts dockerd and stops it (by its PID) at the end. Any failure ends the script with a non-zero status.
#
# Settings (environment): TORCH_WHEEL_DIR (default /opt/wheels: where torch-<version>+cpu-*.whl lies),
# HOST_CA_BUNDLE (default /etc/ssl/certs/ca-certificates.crt; empty: pip keeps its own), DEBIAN_MIRROR.
# Cached under .cache/container/ (ignored by git): the base image tarball and the build inputs.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=.cache/container
INPUTS=$CACHE/inputs              # the build context lets this directory in (.dockerignore)
PROJECT=clipwise-container-test
SINGLE=$PROJECT-single
MODEL=tsm_r18_tiny
CLIP=examples/moving_right.mp4
EXPECTED_LABEL=moving_right
TORCH_VERSION=$(sed -n 's/^ *"torch==\([^"]*\)",$/\1/p' pyproject.toml)
export DOCKER_BUILDKIT=0 COMPOSE_DOCKER_CLI_BUILD=0   # the classic builder: docker-compose 1.x builds through it
export CLIPWISE_PYTHON_IMAGE=clipwise-base:bookworm
export CLIPWISE_TORCH_WHEELS=$INPUTS/torch-wheels
export CLIPWISE_CA_BUNDLE=
COMPOSE=(docker-compose --project-name "$PROJECT" --file docker-compose.yml)
DOCKERD_PID=

step() { printf '\n== container test: %s\n' "$*"; }
fail() {
    printf '\n!! CONTAINER TEST FAILED: %s\n' "$*" >&2
    exit 1
}
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

cleanup() {
    local status=$?
    docker rm --force "$SINGLE" >/dev/null 2>&1 || true
    "${COMPOSE[@]}" down --volumes --remove-orphans >/dev/null 2>&1 || true
    if [ -n "$DOCKERD_PID" ]; then
        kill "$DOCKERD_PID" 2>/dev/null || true
        wait "$DOCKERD_PID" 2>/dev/null || true
        echo "stopped dockerd (PID $DOCKERD_PID)"
    fi
    exit "$status"
}
trap cleanup EXIT

start_engine() {
    if docker info >/dev/null 2>&1; then
        echo "using the Docker engine already running"
        return
    fi
    command -v dockerd >/dev/null || fail "no Docker engine answers and dockerd is not installed (Debian: docker.io)"
    mkdir -p "$CACHE"
    nice -n 10 dockerd >"$CACHE/dockerd.log" 2>&1 &   # builds and containers inherit the lower priority
    DOCKERD_PID=$!
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && { echo "started dockerd (PID $DOCKERD_PID)"; return; }
        kill -0 "$DOCKERD_PID" 2>/dev/null || break
        sleep 1
    done
    tail -n 20 "$CACHE/dockerd.log" >&2
    fail "dockerd did not start (log: $CACHE/dockerd.log)"
}

prepare_inputs() {
    rm -rf "$INPUTS" && mkdir -p "$CLIPWISE_TORCH_WHEELS"
    local wheel
    wheel=$(find "${TORCH_WHEEL_DIR:-/opt/wheels}" -maxdepth 1 -name "torch-$TORCH_VERSION+cpu-cp311-*.whl" | head -n 1)
    [ -n "$wheel" ] || fail "no torch $TORCH_VERSION CPU wheel in ${TORCH_WHEEL_DIR:-/opt/wheels} (set TORCH_WHEEL_DIR)"
    ln "$wheel" "$CLIPWISE_TORCH_WHEELS/" 2>/dev/null || cp "$wheel" "$CLIPWISE_TORCH_WHEELS/"
    local bundle=${HOST_CA_BUNDLE-/etc/ssl/certs/ca-certificates.crt}
    if [ -n "$bundle" ]; then
        cp "$bundle" "$INPUTS/ca-bundle.crt"
        CLIPWISE_CA_BUNDLE=$INPUTS/ca-bundle.crt
    fi
    echo "torch: $(basename "$wheel"); CA bundle for pip: ${bundle:-none given}"
}

wait_healthy() {  # container, seconds
    local state
    for _ in $(seq "$2"); do
        state=$(docker inspect --format '{{.State.Health.Status}}' "$1")
        [ "$state" = healthy ] && return
        [ "$(docker inspect --format '{{.State.Running}}' "$1")" = true ] || break
        sleep 1
    done
    docker logs --tail 30 "$1" >&2 || true
    fail "$1 is not healthy after $2 s (health: ${state:-none})"
}

check_ready_and_prediction() {  # base URL
    curl --fail --silent --show-error "$1/readyz" | python3 -c '
import json, sys
ready = json.load(sys.stdin)
assert ready["status"] == "ready" and sys.argv[1] in ready["models"], ready
' "$MODEL" || fail "$1/readyz does not list $MODEL as ready"
    curl --fail --silent --show-error -F "file=@$CLIP" "$1/v1/models/$MODEL/predict?top_k=3" | python3 -c '
import json, sys
answer = json.load(sys.stdin)
top = answer["predictions"][0]
assert answer["model"] == sys.argv[1] and top["label"] == sys.argv[2], answer
print("  %s v%d: %s %.3f" % (answer["model"], answer["version"], top["label"], top["score"]))
' "$MODEL" "$EXPECTED_LABEL" || fail "$1 did not classify $CLIP as $EXPECTED_LABEL"
}

check_clean_stop() {  # containers...
    local container code
    for container in "$@"; do
        code=$(docker inspect --format '{{.State.ExitCode}}' "$container")
        [ "$code" = 0 ] || { docker logs --tail 20 "$container" >&2; fail "$container exited with status $code on stop"; }
    done
}

single_container() {
    step "one container, CLIPWISE_PORT=8123 (the health check must follow it)"
    local port
    port=$(free_port)
    docker run --detach --name "$SINGLE" --env CLIPWISE_PORT=8123 --env CLIPWISE_MODELS="$MODEL" \
        --publish "127.0.0.1:$port:8123" clipwise:cpu >/dev/null
    wait_healthy "$SINGLE" 180
    check_ready_and_prediction "http://127.0.0.1:$port"
    docker stop --time 30 "$SINGLE" >/dev/null
    check_clean_stop "$SINGLE"
    docker rm "$SINGLE" >/dev/null
    echo "  healthy on port 8123, answered, stopped cleanly"
}

compose_stack() {
    step "compose: 2 replicas behind nginx"
    CLIPWISE_LB_PORT=$(free_port)
    export CLIPWISE_LB_PORT CLIPWISE_TORCH_THREADS=1
    "${COMPOSE[@]}" up --detach --no-build
    local replicas balancer
    mapfile -t replicas < <("${COMPOSE[@]}" ps --quiet clipwise)
    balancer=$("${COMPOSE[@]}" ps --quiet loadbalancer)
    [ "${#replicas[@]}" = 2 ] || fail "compose started ${#replicas[@]} replicas, not 2"
    for container in "${replicas[@]}" "$balancer"; do wait_healthy "$container" 180; done
    local url=http://127.0.0.1:$CLIPWISE_LB_PORT
    check_ready_and_prediction "$url"
    for i in $(seq 20); do
        curl --fail --silent --show-error --header "X-Request-ID: replica-probe-$i" "$url/v1/models" >/dev/null \
            || fail "request $i through nginx failed"
    done
    for container in "${replicas[@]}"; do
        answered=$(docker logs "$container" 2>&1 | grep --count '\[replica-probe-[0-9]*\] GET /v1/models 200') || true
        [ "$answered" -gt 0 ] || fail "replica $container answered none of the 20 requests sent through nginx"
        echo "  replica ${container:0:12} answered $answered of 20"
    done
    "${COMPOSE[@]}" stop
    check_clean_stop "${replicas[@]}" "$balancer"
    "${COMPOSE[@]}" down --volumes --remove-orphans
    echo "  every container exited 0 on stop"
}

start_engine
step "base image $CLIPWISE_PYTHON_IMAGE"
scripts/base_image.sh "$CLIPWISE_PYTHON_IMAGE" "$CACHE"
base_s=$SECONDS
step "build inputs"
prepare_inputs
step "building the images (docker-compose build)"
"${COMPOSE[@]}" build
build_s=$((SECONDS - base_s))
size_mb=$(($(docker image inspect --format '{{.Size}}' clipwise:cpu) / 1000000))
echo "  built in ${build_s} s; clipwise:cpu is ${size_mb} MB"
single_container
compose_stack
step "PASSED in $SECONDS s: engine and base image ${base_s} s, build ${build_s} s, clipwise:cpu ${size_mb} MB"
