# Stand-in for redis:7.4-alpine, built from Debian bookworm (ldm-base:bookworm, made by build.sh):
# Debian's redis-server 7.0 and redis-cli. Like the official image it runs as user redis in /data
# (a fresh named volume inherits that ownership); docker-compose.yml gives the command line.
# uid/gid 999 as in the official image, created before the package's postinst would pick one.
FROM ldm-base:bookworm

# Unpinned: the stand-in follows bookworm's security updates of redis.
# hadolint ignore=DL3008
RUN groupadd --system --gid 999 redis \
    && useradd --system --uid 999 --gid redis --home-dir /var/lib/redis --shell /usr/sbin/nologin redis \
    && apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        redis-server redis-tools \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /data /usr/local/etc/redis \
    && chown redis:redis /data

VOLUME ["/data"]
WORKDIR /data
USER 999:999
EXPOSE 6379
CMD ["redis-server", "--protected-mode", "no"]
