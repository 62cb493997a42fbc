# syntax=docker/dockerfile:1.7
# GPU image of the diffmamba restoration service.
#
#   docker build -t diffmamba-service:gpu .
#   docker build -t diffmamba-service:gpu-trt --build-arg WITH_TENSORRT=1 .
#   docker run --gpus all -p 8000:8000 diffmamba-service:gpu
#   docker run --gpus all -p 8000:8000 -v "$PWD/my-models:/models:ro" diffmamba-service:gpu
#
# Two stages: the CUDA *devel* image compiles the mamba-ssm and causal-conv1d kernels against
# the installed torch into a virtualenv; the *runtime* image receives only that virtualenv, so
# compilers and headers stay out of the served image. Settings come from DIFFMAMBA_* variables
# (see README "Settings"); the checkpoints of models/ are baked in at /models, and a volume
# mounted there (or DIFFMAMBA_MODELS_DIR pointing elsewhere) replaces them.

ARG CUDA_VERSION=12.8.1
# Ubuntu 24.04 ships Python 3.12, which current torch, mamba-ssm and TensorRT wheels support.
ARG UBUNTU_VERSION=ubuntu24.04

FROM nvidia/cuda:${CUDA_VERSION}-cudnn-devel-${UBUNTU_VERSION} AS builder

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG ONNXRUNTIME_VERSION=1.31.1
ARG ONNX_VERSION=1.23.2
ARG WITH_TENSORRT=0
ARG TENSORRT_VERSION=11.4.0.106
# Ampere, Ada, Hopper; add "10.0" for Blackwell. Fewer archs build faster.
ARG TORCH_CUDA_ARCH_LIST="8.0;8.6;8.9;9.0"
ARG MAX_JOBS=4

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST} \
    MAX_JOBS=${MAX_JOBS} \
    PATH=/opt/venv/bin:${PATH}

# Distribution packages follow the base image; build tools only need a floor (DL3008, DL3013).
# hadolint ignore=DL3008,DL3013
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12 python3.12-venv python3.12-dev git \
    && rm -rf /var/lib/apt/lists/* \
    && python3.12 -m venv /opt/venv \
    && pip install --upgrade "pip>=24" "setuptools>=68" wheel packaging ninja

RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service

# --no-build-isolation: the CUDA extensions must build against the torch above, not a fresh one.
# "." is this project: its dependencies are bounded in pyproject.toml (DL3013).
# [redis]: the job store shared by replicas (docker/compose.yaml, k8s/).
# hadolint ignore=DL3013
RUN pip install --no-build-isolation ".[cuda]" ".[redis]" \
    && pip install "onnx==${ONNX_VERSION}" "onnxruntime-gpu==${ONNXRUNTIME_VERSION}" \
    && if [ "${WITH_TENSORRT}" = "1" ]; then pip install "tensorrt==${TENSORRT_VERSION}"; fi \
    && python -c "import mamba_ssm, causal_conv1d, onnxruntime, redis; print('cuda extras ok')"


FROM nvidia/cuda:${CUDA_VERSION}-cudnn-runtime-${UBUNTU_VERSION} AS runtime

LABEL org.opencontainers.image.title="diffmamba-service" \
      org.opencontainers.image.description="Mamba-based image restoration service (GPU)" \
      org.opencontainers.image.licenses="Apache-2.0"

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12 libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 diffmamba \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/diffmamba \
       --shell /usr/sbin/nologin diffmamba \
    && mkdir -p /cache \
    && chown 10001:10001 /cache

COPY --from=builder /opt/venv /opt/venv
# Read-only for the service user: checkpoints are data, not state.
COPY models /models

# Caches (numba's compiled scan kernels, Triton's for mamba-ssm) go to /cache: site-packages is
# not writable by the service user, and Kubernetes mounts an emptyDir there.
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/diffmamba \
    XDG_CACHE_HOME=/cache \
    NUMBA_CACHE_DIR=/cache/numba \
    TRITON_CACHE_DIR=/cache/triton \
    TORCHINDUCTOR_CACHE_DIR=/cache/inductor \
    DIFFMAMBA_HOST=0.0.0.0 \
    DIFFMAMBA_PORT=8000 \
    DIFFMAMBA_MODELS_DIR=/models \
    DIFFMAMBA_DEVICE=auto

USER 10001:10001
WORKDIR /home/diffmamba
EXPOSE 8000

# Liveness only: /readyz turns 200 after model loading and warm-up, which orchestrators check
# separately (compose depends_on, Kubernetes startup/readiness probes).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('DIFFMAMBA_PORT', '8000'), timeout=4)"]

# SIGTERM drains: /readyz turns 503, accepted requests finish (DIFFMAMBA_DRAIN_TIMEOUT_S), exit 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["diffmamba", "serve"]
CMD []
