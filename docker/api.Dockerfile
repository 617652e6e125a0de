# The HTTP API: FastAPI + rq client, no torch, no CUDA (a ~150 MB image).
#   docker build -f docker/api.Dockerfile -t ldm-serve-api .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 ldm \
    && useradd --system --uid 10001 --gid ldm --home-dir /app --shell /usr/sbin/nologin ldm
WORKDIR /app

# Only the packages the API process imports; model/ and workers/ stay out of this image.
COPY pyproject.toml README.md ./
COPY cli ./cli
COPY jobs ./jobs
COPY service ./service
COPY webhooks ./webhooks
# Installs this repository (a local path, not a package name): pyproject.toml bounds its deps.
# hadolint ignore=DL3013
RUN pip install --no-compile '.[api]' && rm -rf /root/.cache

# Numeric (= ldm): Kubernetes' runAsNonRoot can only verify a numeric user.
USER 10001:10001
ENV LDM_API_HOST=0.0.0.0 \
    LDM_API_PORT=8000
EXPOSE 8000

# urllib instead of curl: the slim image has no curl.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('LDM_API_PORT', '8000'), timeout=4)"]

ENTRYPOINT ["ldm-serve"]
CMD ["api"]
