# syntax=docker/dockerfile:1
# tokencache-proxy image.
#   docker build -t tokencache/tokencache-proxy:0.1.0 .
# Builder: the project (extras: aws for SECRET_ROLE_ARN and aws-* secret references,
# otlp for OTEL_EXPORTER_OTLP_ENDPOINT) and every dependency become wheels, so the runtime stage
# installs offline and carries no build tools or pip cache.
FROM python:3.11-slim AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY tokencache ./tokencache
COPY plugin ./plugin
COPY proxy ./proxy
RUN python -m pip wheel --wheel-dir /wheels ".[aws,kubernetes,otlp]"

# Runtime: a virtualenv with the wheels installed, run as an unprivileged user.
FROM python:3.11-slim AS runtime

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-index --find-links /wheels "tokencache[aws,kubernetes,otlp]" \
    && groupadd --system --gid 10001 tokencache \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin tokencache

# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
WORKDIR /tmp

# http (LISTEN_ADDR), peer (GROUPCACHE_PORT), health (HEALTH_ADDR), metrics (METRICS_ADDR)
EXPOSE 8080 5000 8888 3000

ENTRYPOINT ["tokencache-proxy"]
