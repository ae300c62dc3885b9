# Clipwise service image: `clipwise serve` on 0.0.0.0:8000, serving the repository at /models.
#
#   docker build -t clipwise:cpu .                            # CPU: torch (CPU wheel) and onnxruntime
#   docker build --build-arg VARIANT=gpu -t clipwise:gpu .    # GPU: torch (CUDA 12.8), onnxruntime-gpu, TensorRT
#   docker run --rm -p 127.0.0.1:8000:8000 clipwise:cpu
#   docker run --rm --gpus all -p 127.0.0.1:8000:8000 clipwise:gpu
#
# Both variants share the python:3.11-slim base: the CUDA wheels of torch, onnxruntime-gpu and TensorRT
# carry their CUDA libraries, so the GPU image needs only the host's NVIDIA driver (NVIDIA Container
# Toolkit). The image runs what `make serve` runs, installed without an editable checkout or dev tools.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ARG VARIANT=cpu
ARG TORCH_VERSION=2.13.0
ARG ONNXRUNTIME_VERSION=1.31.1
ARG TENSORRT_VERSION=11.4.0.106

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CLIPWISE_HOST=0.0.0.0 \
    CLIPWISE_PORT=8000 \
    CLIPWISE_MODEL_REPOSITORY=/models

WORKDIR /app

# The runtimes first: the largest layers, cached while the code changes.
RUN case "${VARIANT}" in \
      cpu) pip install --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}" \
           && pip install "onnxruntime==${ONNXRUNTIME_VERSION}" ;; \
      gpu) pip install --index-url https://download.pytorch.org/whl/cu128 "torch==${TORCH_VERSION}" \
           && pip install "onnxruntime-gpu==${ONNXRUNTIME_VERSION}" "tensorrt-cu12==${TENSORRT_VERSION}" ;; \
      *) echo "VARIANT must be cpu or gpu, not ${VARIANT}" >&2; exit 1 ;; \
    esac

COPY pyproject.toml README.md ./
COPY clipwise ./clipwise
COPY models ./models
COPY video ./video
COPY service ./service
COPY export ./export
COPY training ./training
# The export extra without onnxruntime (installed above, CPU or GPU build): onnx and onnxscript.
RUN pip install . "onnx==1.23.2" "onnxscript==0.7.2" \
    && useradd --create-home --uid 10001 clipwise

# The bundled repository; docker-compose mounts the host's repository read-only over it.
COPY model_repository /models

USER clipwise
EXPOSE 8000
# Ready = every default model loaded and warmed up (GET /readyz answers 200); compose waits on it too.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2)"]
CMD ["clipwise", "serve"]
