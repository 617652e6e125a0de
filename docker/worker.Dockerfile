# The batching worker: torch + the model + rq. One image per device kind, chosen by a build arg:
#   docker build -f docker/worker.Dockerfile -t ldm-serve-worker:cpu .                       # default
#   docker build -f docker/worker.Dockerfile --build-arg DEVICE=gpu -t ldm-serve-worker:gpu .
# The shipped default model is baked in at /app/models/default; mount your own models at /models
# and point LDM_MODEL at one (e.g. LDM_MODEL=/models/sd15.safetensors).
ARG DEVICE=cpu
ARG PYTHON_IMAGE=python:3.11-slim
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04

# --- CPU base: plain Python, torch from the CPU wheel index (no multi-GB CUDA libraries). ---
FROM ${PYTHON_IMAGE} AS base-cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV TORCH_INDEX_URL=${TORCH_INDEX_URL}
RUN python -m venv /opt/venv

# --- GPU base: NVIDIA's CUDA runtime image and a CUDA build of torch whose CUDA version matches. ---
FROM ${CUDA_IMAGE} AS base-gpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ENV TORCH_INDEX_URL=${TORCH_INDEX_URL} \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
# Ubuntu 24.04 ships Python 3.12 (pyproject requires >= 3.11); a venv avoids PEP 668's system pip lock.
# gcc and python3-dev: Triton builds its kernel launcher with them when LDM_COMPILE compiles.
# Unpinned apt packages: Ubuntu's archive keeps only the latest build of each, so a pinned version
# stops building at the next security update; CUDA_IMAGE (a fixed tag) pins the release instead.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv python3-dev gcc ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

# --- The worker itself, identical on both bases. ---
# base-${DEVICE} is one of the two stages above, not an image from a registry: nothing to tag.
# hadolint ignore=DL3006
FROM base-${DEVICE} AS worker
ARG DEVICE
LABEL org.opencontainers.image.title="ldm-serve worker (${DEVICE})"
ARG TORCH_VERSION=2.13.0
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 ldm \
    && useradd --system --uid 10001 --gid ldm --home-dir /app --shell /usr/sbin/nologin ldm \
    && mkdir -p /models /cache && chown ldm:ldm /models /cache
WORKDIR /app

# torch first, from the index that matches the device, so `.[worker]` finds it already satisfied
# (a bare `pip install torch` on the CPU image would pull several GB of CUDA wheels).
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

COPY pyproject.toml README.md ./
COPY cli ./cli
COPY jobs ./jobs
COPY model ./model
COPY workers ./workers
# Installs this repository (a local path, not a package name): pyproject.toml bounds its deps.
# hadolint ignore=DL3013
RUN pip install --no-compile '.[worker]'

# The shipped default model (diffusers folder); user models are mounted read-only at /models.
COPY models/default ./models/default

# Numeric (= ldm): Kubernetes' runAsNonRoot can only verify a numeric user.
USER 10001:10001
ENV LDM_MODEL=/app/models/default \
    LDM_MODEL_NAME=default \
    LDM_DEVICE=auto \
    LDM_METRICS_PORT=9101 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1
VOLUME ["/models"]
EXPOSE 9101

# The worker's Prometheus endpoint doubles as its liveness probe. Docker does not restart an
# unhealthy container; a hung sampler is caught by the worker's own watchdog and by the
# LdmWorkerStalled alert (docs/deploy.md).
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/metrics' % os.environ.get('LDM_METRICS_PORT', '9101'), timeout=4)"]

# SIGTERM = warm shutdown: finish the running batch, then exit (compose stop_grace_period > job).
STOPSIGNAL SIGTERM
ENTRYPOINT ["ldm-serve"]
CMD ["worker"]
