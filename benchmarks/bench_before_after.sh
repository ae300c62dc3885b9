#!/usr/bin/env bash
# clipwise bench of one model at one client, this checkout against an earlier commit, interleaved rounds.
#
#   benchmarks/bench_before_after.sh COMMIT MODEL OUT_DIR CLIP...   (ROUNDS=2, REQUESTS=100 by default)
#
# The earlier commit is checked out into a git worktree under OUT_DIR and runs its own code and its own bundled
# copy of MODEL with this checkout's virtual environment; each run serves MODEL alone (a copy of its
# repository directory) in-process. Prints p50 / p90 latency and the mean decode and total server stages per
# run; each run's JSON report stays in OUT_DIR. Issue 18's figures: COMMIT 5c8a9c2, MODEL tsn_r18_tiny.
set -euo pipefail
commit=$1 model=$2 out=$3
shift 3
here=$(cd "$(dirname "$0")/.." && pwd)
python=$here/.venv/bin/python
mkdir -p "$out"
out=$(cd "$out" && pwd)
[ -d "$out/before" ] || git -C "$here" worktree add --detach "$out/before" "$commit" >/dev/null
for side in before after; do
    src=$([ $side = before ] && echo "$out/before" || echo "$here")
    rm -rf "$out/repo-$side" && mkdir -p "$out/repo-$side" && cp -r "$src/model_repository/$model" "$out/repo-$side/"
done
for round in $(seq "${ROUNDS:-2}"); do
    for clip in "$@"; do
        for side in before after; do
            src=$([ $side = before ] && echo "$out/before" || echo "$here")
            report=$out/$side-$(basename "$clip" .mp4)-$round.json
            (cd "$src" && "$python" -m clipwise.cli bench --model-repository "$out/repo-$side" --models "$model" \
                --video "$clip" --requests "${REQUESTS:-100}" --json "$report" >/dev/null 2>&1)
            "$python" - "$report" "$side" "$round" <<'PY'
import json, sys
result = json.load(open(sys.argv[1]))["results"][0]
latency, stages = result["latency_ms"], result["stages_ms"]
print(f"round {sys.argv[3]} {sys.argv[2]:6} {sys.argv[1].rsplit('/', 1)[1]:40} p50 {latency['p50']:6.1f} ms  "
      f"p90 {latency['p90']:6.1f}  decode {stages['decode']:6.1f}  total {stages['total']:6.1f}")
PY
        done
    done
done
