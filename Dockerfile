# Clipwise service image: `clipwise serve` on 0.0.0.0:$CLIPWISE_PORT (8000), serving the repository at /models.
#
#   docker build -t clipwise:cpu .                            # CPU: torch (CPU wheel) and onnxruntime
#   docker build --build-arg VARIANT=gpu -t clipwise:gpu .    # GPU: torch (CUDA 12.8), onnxruntime-gpu, TensorRT
#   docker run --rm -p 127.0.0.1:8000:8000 clipwise:cpu
#   docker run --rm --gpus all -p 127.0.0.1:8000:8000 clipwise:gpu
#
# Build arguments for machines without the usual registries (scripts/container_test.sh uses all three):
#   PYTHON_IMAGE  the base: any Debian bookworm image with python3.11 and python3-venv (a locally made one)
#   TORCH_WHEELS  a directory of the build context holding the torch wheel: torch comes from there (its
#                 dependencies from PyPI), not from the PyTorch index; the CPU image checks it is a CPU build
#   CA_BUNDLE     a PEM file of the build context that pip trusts, for networks that re-sign TLS
#
# The GPU variant needs no CUDA base: the CUDA wheels of torch, onnxruntime-gpu and TensorRT carry their CUDA
# libraries, so the GPU image needs only the host's NVIDIA driver (NVIDIA Container Toolkit). The image runs
# what `make serve` runs, from a virtual environment, without an editable checkout or dev tools. The build
# stage's inputs (wheels, CA bundle, sources) stay out of the final image.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG VARIANT=cpu
ARG TORCH_VERSION=2.13.0
ARG ONNXRUNTIME_VERSION=1.31.1
ARG TENSORRT_VERSION=11.4.0.106
ARG TORCH_WHEELS=
ARG CA_BUNDLE=
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The inputs given (a directory's wheels land in /build/inputs itself); COPY needs a source that exists, so
# .dockerignore stands in for an input not given (and is never read).
COPY .dockerignore ${TORCH_WHEELS:-.dockerignore} ${CA_BUNDLE:-.dockerignore} /build/inputs/
# The venv's own pip.conf (read by its pip only) names the CA bundle; it is removed with the inputs below.
RUN python3 -m venv /opt/clipwise \
    && if [ -n "${CA_BUNDLE}" ]; then \
         printf '[global]\ncert = /build/inputs/%s\n' "${CA_BUNDLE##*/}" > /opt/clipwise/pip.conf; fi
ENV PATH=/opt/clipwise/bin:$PATH

# The runtimes first: the largest layers, cached while the code changes.
RUN case "${VARIANT}" in \
      cpu) torch_index=https://download.pytorch.org/whl/cpu; runtimes="onnxruntime==${ONNXRUNTIME_VERSION}" ;; \
      gpu) torch_index=https://download.pytorch.org/whl/cu128; \
           runtimes="onnxruntime-gpu==${ONNXRUNTIME_VERSION} tensorrt-cu12==${TENSORRT_VERSION}" ;; \
      *) echo "VARIANT must be cpu or gpu, not ${VARIANT}" >&2; exit 1 ;; \
    esac \
    && if [ -n "${TORCH_WHEELS}" ]; then \
         pip install --no-index --find-links /build/inputs --no-deps "torch==${TORCH_VERSION}"; \
       else pip install --index-url "${torch_index}" "torch==${TORCH_VERSION}"; fi \
    && pip install "torch==${TORCH_VERSION}" ${runtimes} \
    && if [ "${VARIANT}" = cpu ]; then \
         python -c "import sys, torch; sys.exit(f'torch {torch.__version__} is a CUDA build' if torch.version.cuda else 0)"; \
       fi

COPY pyproject.toml README.md /build/src/
COPY clipwise /build/src/clipwise
COPY models /build/src/models
COPY video /build/src/video
COPY service /build/src/service
COPY export /build/src/export
COPY training /build/src/training
# The export extra without onnxruntime (installed above, CPU or GPU build): onnx and onnxscript.
RUN pip install /build/src "onnx==1.23.2" "onnxscript==0.7.2" \
    && rm -f /opt/clipwise/pip.conf


FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/clipwise/bin:$PATH \
    CLIPWISE_HOST=0.0.0.0 \
    CLIPWISE_PORT=8000 \
    CLIPWISE_MODEL_REPOSITORY=/models
RUN useradd --create-home --uid 10001 clipwise
COPY --from=build /opt/clipwise /opt/clipwise
# The bundled repository; docker-compose mounts the host's repository read-only over it.
COPY model_repository /models

USER clipwise
WORKDIR /home/clipwise
EXPOSE 8000
# Ready = every default model loaded and warmed up (GET /readyz answers 200) on the port the server listens
# on (CLIPWISE_PORT); compose waits on it too.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"CLIPWISE_PORT\"]}/readyz', timeout=2)"]
CMD ["clipwise", "serve"]
