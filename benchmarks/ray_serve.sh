#!/usr/bin/env bash
# Ray Serve with 2 replicas vs 1, and plain uvicorn, under `clipwise bench --url` at concurrency 4.
#
#   benchmarks/ray_serve.sh [OUT_DIR]     (default: $TMPDIR/clipwise-bench-ray; from the repository root, after make install)
#
# Two rounds of: `clipwise serve` (uvicorn, 2 torch threads), Ray Serve with 1 replica of 2 threads, Ray Serve
# with 2 replicas of 1 thread (the same 2 CPUs), each on a fresh server (a fresh Ray instance on this machine,
# loopback only) serving the bundled tsn_r18_tiny; 300 measured requests of examples/moving_right.mp4 each.
# Every level's table line, its JSON report and the load average when it started land in OUT_DIR.
set -uo pipefail
OUT=${1:-${TMPDIR:-/tmp}/clipwise-bench-ray}
mkdir -p "$OUT"
BIN=.venv/bin

measure() {  # LABEL, then the flags of clipwise serve
    local label=$1 port server
    shift
    port=$($BIN/python -c "from clipwise.service.local import free_port; print(free_port())")
    $BIN/clipwise serve --port "$port" --models tsn_r18_tiny "$@" > "$OUT/$label.serve.log" 2>&1 &
    server=$!
    $BIN/python -c "from clipwise.service.local import wait_until_ready; wait_until_ready('http://127.0.0.1:$port', 300)"
    uptime > "$OUT/$label.uptime"
    $BIN/clipwise bench --url "http://127.0.0.1:$port" --models tsn_r18_tiny --video examples/moving_right.mp4 \
        --requests 300 --concurrency 4 --json "$OUT/$label.json" > "$OUT/$label.txt" 2>&1
    echo "$label $(grep -E '^tsn_r18_tiny +[a-z]+ +4 ' "$OUT/$label.txt") |$(cut -d, -f3- "$OUT/$label.uptime")"
    kill -INT "$server"
    wait "$server"
}

for round in 1 2; do
    measure "uvicorn-$round" --torch-threads 2
    measure "ray-1x2-$round" --engine ray --ray-replicas 1 --torch-threads 2
    measure "ray-2x1-$round" --engine ray --ray-replicas 2 --torch-threads 1
done
