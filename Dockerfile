# k2actors: Binance trades to Kafka. Build: docker build -t k2actors .
# PYTHON_IMAGE: the base image, for a registry mirror or an image built locally.
ARG PYTHON_IMAGE=python:3.12-slim

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
# Wheels for the package and every dependency; anything that must compile does so here only.
COPY setup.py README.md ./
COPY k2actors ./k2actors
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 k2 \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin k2
COPY --from=build /wheels /wheels
# Exactly the wheels built above (versions fixed there), nothing fetched from an index.
RUN pip install --no-cache-dir --no-index /wheels/*.whl && rm -rf /wheels
COPY config.yaml /etc/k2actors/config.yaml
USER 10001:10001
ENV PYTHONUNBUFFERED=1
EXPOSE 9091
# The slim image has no curl: the check is the standard library, against /health.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "-m", "k2actors.healthcheck"]
CMD ["python", "-m", "k2actors", "start", "--config", "/etc/k2actors/config.yaml"]
