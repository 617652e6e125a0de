# Stand-in for prom/prometheus:v2.55.1, built from Debian bookworm (ldm-base:bookworm, made by
# build.sh): Debian's Prometheus 2.42, with the official image's layout (/bin/prometheus,
# /etc/prometheus, /prometheus owned by nobody) and wget for docker-compose.yml's healthcheck.
FROM ldm-base:bookworm

# Unpinned: the stand-in follows bookworm's updates of prometheus.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        prometheus wget \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /prometheus /etc/prometheus \
    && chown nobody:nogroup /prometheus \
    && test -x /bin/prometheus

VOLUME ["/prometheus"]
WORKDIR /prometheus
# nobody:nogroup, numeric like the official image's user.
USER 65534:65534
EXPOSE 9090
ENTRYPOINT ["/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
