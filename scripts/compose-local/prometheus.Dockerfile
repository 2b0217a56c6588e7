# The compose check's stand-in for prom/prometheus: Debian's Prometheus, laid out as that
# image is (binary as entrypoint, the compose file's command as its flags, data in /prometheus).
FROM k2-local/bookworm
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /prometheus
ENTRYPOINT ["/usr/bin/prometheus"]
