# Clipwise service image. CPU by default:
#   docker build -t clipwise:cpu .
# GPU variant (to come with the ONNX Runtime / TensorRT backends): a CUDA base image and wheel index, e.g.
#   docker build --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04 \
#                --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 -t clipwise:gpu .
# (a CUDA base image needs Python 3.11 installed; not built or tested yet).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CLIPWISE_HOST=0.0.0.0 \
    CLIPWISE_PORT=8000 \
    CLIPWISE_MODEL_REPOSITORY=/models

WORKDIR /app

# torch first, from the PyTorch index: the largest layer, cached while the code changes.
RUN pip install --index-url "${TORCH_INDEX}" torch==2.13.0

COPY pyproject.toml README.md ./
COPY clipwise ./clipwise
COPY models ./models
COPY video ./video
COPY service ./service
COPY export ./export
COPY training ./training
RUN pip install . && useradd --create-home --uid 10001 clipwise

# The bundled repository; docker-compose mounts the host's read-only over it.
COPY model_repository /models

USER clipwise
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2)"]
CMD ["clipwise", "serve"]
