#!/usr/bin/env bash
# The GPU check of issue 14, one script for a machine with an NVIDIA GPU (at most 8 minutes on one H200):
#   1. a virtual environment over the machine's own Python packages (its CUDA torch and Triton stay), with
#      what Clipwise needs and the machine lacks: from PyPI, or only from the wheels in $CLIPWISE_WHEELS;
#      torch (a CUDA build) only where the machine's has no CUDA, onnxruntime-gpu where its onnxruntime has
#      no CUDA provider (optional: ONNX Runtime's rows are then skipped, saying why);
#   2. the CUDA tests, natively: tests/test_triton_gating.py (the Triton kernels), tests/test_device.py
#      (serving on CUDA) and the TensorRT export test of tests/test_export.py (where tensorrt imports);
#   3. benchmarks/gpu.py: p50 latencies at 8×224² of TSN-R50, AdaFuse-TSN-R50 (random and fixed decisions at
#      40 %), I3D-R50 and Ada3D-I3D-R50 on torch (dense cuDNN against the gated path), ONNX Runtime CUDA and
#      TensorRT, time ratios against FLOPs ratios: gpu_check.json and gpu_check.md.
# Everything lands in OUT_DIR (default: $OUT, else ./gpu-check-out): those files, tests.log and gpu_check.log.
#
#   benchmarks/gpu_check.sh [OUT_DIR]
#   benchmarks/gpu_check.sh --download-wheels DIR [PYTHON_VERSION]
#
# The second form, on a machine that reaches PyPI, downloads into DIR the wheels (Python 3.12 by default) that
# a GPU machine without an index lacks, for CLIPWISE_WHEELS=DIR there: PyAV, FastAPI, uvicorn, pydantic,
# pydantic-settings and python-multipart with their dependencies (about 40 MB). onnxruntime-gpu (hundreds of
# MB) is not among them.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
SERVICE_PACKAGES=(av fastapi uvicorn pydantic pydantic-settings python-multipart)

pins_of() {  # the exact pins pyproject.toml gives the named distributions (dependencies and extras)
    "$PYTHON" - "$@" <<'EOF'
import re, sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
pins = project["dependencies"] + [pin for extra in project["optional-dependencies"].values() for pin in extra]
by_name = {re.split(r"[=<>\[; ]", pin)[0].lower(): pin.split(";")[0].strip() for pin in pins}
print(" ".join(by_name[name.lower()] for name in sys.argv[1:]))
EOF
}

if [ "${1:-}" = "--download-wheels" ]; then
    target=${2:?usage: $0 --download-wheels DIR [PYTHON_VERSION]}
    read -r -a pins <<<"$(pins_of "${SERVICE_PACKAGES[@]}")"
    "$PYTHON" -m pip download --only-binary=:all: --python-version "${3:-3.12}" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$target" "${pins[@]}"
    du -sh "$target"
    exit 0
fi

OUT_DIR=${1:-${OUT:-gpu-check-out}}
mkdir -p "$OUT_DIR"
exec > >(tee "$OUT_DIR/gpu_check.log") 2>&1
started=$SECONDS
step() { echo "== [$((SECONDS - started)) s] $*"; }

step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "nvidia-smi: none"
"$PYTHON" --version

step "environment: /tmp/clipwise-gpu over the machine's packages"
"$PYTHON" -m venv --system-site-packages /tmp/clipwise-gpu
VENV_PYTHON=/tmp/clipwise-gpu/bin/python
PIP=("$VENV_PYTHON" -m pip install --quiet --no-cache-dir)
if [ -n "${CLIPWISE_WHEELS:-}" ]; then
    PIP+=(--no-index --find-links "$CLIPWISE_WHEELS")
fi
missing=$("$VENV_PYTHON" - <<'EOF'
import importlib.metadata, re, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
extras = project["optional-dependencies"]
wanted = project["dependencies"] + extras["export"] + [
    pin for pin in extras["dev"] if re.split(r"[=\[]", pin)[0] in ("pytest", "pytest-timeout", "httpx", "triton")
]
missing = []
for pin in wanted:
    try:
        importlib.metadata.version(re.split(r"[=<>\[; ]", pin)[0])  # present in any version: the machine's stays
    except importlib.metadata.PackageNotFoundError:
        missing.append(pin.split(";")[0].split("#")[0].strip())
print(" ".join(missing))
EOF
)
echo "missing here: ${missing:-nothing}"
if [ -n "$missing" ]; then
    read -r -a missing_pins <<<"$missing"
    "${PIP[@]}" "${missing_pins[@]}"
fi
if ! "$VENV_PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "this torch has no CUDA: installing $(pins_of torch) (PyPI's Linux build is a CUDA one)"
    read -r -a torch_pin <<<"$(pins_of torch)"
    "${PIP[@]}" "${torch_pin[@]}"
fi
if ! "$VENV_PYTHON" -c "import onnxruntime, sys; sys.exit('CUDAExecutionProvider' not in onnxruntime.get_available_providers())"; then
    ort_version=$(pins_of onnxruntime | cut -d= -f3)
    "${PIP[@]}" "onnxruntime-gpu==$ort_version" || echo "onnxruntime-gpu $ort_version not installed: no ONNX Runtime CUDA rows"
fi
"$VENV_PYTHON" -m pip install --quiet --no-deps --no-build-isolation --ignore-requires-python -e .
"$VENV_PYTHON" - <<'EOF'
import torch
print("torch", torch.__version__, "CUDA", torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else "absent")
for name in ("triton", "onnxruntime", "tensorrt"):
    try:
        module = __import__(name)
        extra = module.get_available_providers() if name == "onnxruntime" else ""
        print(name, module.__version__, extra)
    except ImportError:
        print(name, "absent")
EOF

step "CUDA tests (natively)"
set +e
timeout 240 "$VENV_PYTHON" -m pytest -q -rs -p no:cacheprovider tests/test_triton_gating.py tests/test_device.py \
    "tests/test_export.py::test_tensorrt_export_builds_an_engine_that_computes_what_onnx_runtime_computes" \
    2>&1 | tee "$OUT_DIR/tests.log"
tests_status=${PIPESTATUS[0]}

step "timings (benchmarks/gpu.py)"
timeout 300 "$VENV_PYTHON" benchmarks/gpu.py --out "$OUT_DIR"
bench_status=$?
set -e

step "done: tests exit $tests_status, benchmark exit $bench_status (1: a target missed; 124: out of time)"
exit $((tests_status || bench_status))
