# Stand-in for python:3.11-slim, built from Debian bookworm (ldm-base:bookworm, made by build.sh):
# Debian's Python 3.11 where the official image has its own. For hosts without a registry (CI);
# the project's Dockerfiles use it unchanged.
FROM ldm-base:bookworm

# Extra CA certificates of the build host (a TLS-intercepting egress proxy), so pip reaches PyPI
# from inside `docker build`; build.sh writes the file (empty when the host has none).
COPY host-ca.crt /usr/local/share/ca-certificates/ldm-build-host.crt

# Unpinned: the stand-in follows bookworm like python:3.11-slim follows its Python patch release.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-pip python3-venv python-is-python3 ca-certificates \
    && update-ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && rm -f /usr/lib/python3.11/EXTERNALLY-MANAGED \
    && ln -sf /usr/bin/pip3 /usr/local/bin/pip

# The official image's pip installs into the system Python; Debian's refuses (PEP 668) without this.
ENV PIP_BREAK_SYSTEM_PACKAGES=1 \
    LANG=C.UTF-8

CMD ["python3"]
