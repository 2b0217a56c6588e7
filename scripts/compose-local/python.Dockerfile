# The compose check's stand-in for python:3.12-slim (no image registry is reachable here):
# Debian's Python in a virtual environment with a current pip, so `python` and `pip` behave as
# the project's Dockerfile expects. PIP_CERT: the machine's trust store (the check copies the
# machine's own CA certificates into the base image, for a TLS-inspecting egress).
FROM k2-local/bookworm
ENV PATH=/opt/python/bin:$PATH PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/python \
    && pip install --no-cache-dir --quiet --upgrade pip
