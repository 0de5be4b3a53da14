# syntax=docker/dockerfile:1
#
# extauthz container image.
#
#   docker build -t extauthz:0.1.0 .
#   docker run --rm --read-only --tmpfs /tmp -p 9191:9191 \
#     -v "$PWD/config.yaml:/etc/extauthz/config.yaml:ro" extauthz:0.1.0
#
# Pinned by exact version tag. For reproducible production builds also pin the
# digest (`docker buildx imagetools inspect python:3.12.13-slim-bookworm`) and
# let a bot (Renovate/Dependabot) bump both together.
ARG PYTHON_IMAGE=python:3.12.13-slim-bookworm

# ---- build: install the package and its dependencies into a self-contained venv
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/extauthz
WORKDIR /src
# Only what the wheel needs: the metadata, the readme it references, the package.
COPY pyproject.toml README.md ./
COPY extauthz ./extauthz
# pip compiles the .pyc files here, so the read-only runtime never needs to write
# them; pip itself is not needed at runtime. The tracing extra is included so that
# server.tracing works from the image (it is imported only when configured).
RUN /opt/extauthz/bin/pip install '.[tracing]' \
 && /opt/extauthz/bin/pip uninstall --yes pip

# ---- runtime: the venv and nothing else (no compilers, no source tree, no pip cache)
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="extauthz" \
      org.opencontainers.image.description="Envoy ext_authz (v3, gRPC) server that verifies JWTs against a rotating JWKS" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed numeric uid/gid, so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
RUN groupadd --system --gid 10001 extauthz \
 && useradd --system --no-log-init --uid 10001 --gid 10001 \
      --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin extauthz
COPY --from=build /opt/extauthz /opt/extauthz
# Read-only root filesystem: no bytecode writes, unbuffered logs, temp files (and the
# prometheus multiprocess dir when server.workers > 1) only under /tmp.
ENV PATH=/opt/extauthz/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TMPDIR=/tmp \
    HOME=/tmp
USER 10001:10001
# 9191: gRPC (envoy.service.auth.v3.Authorization + grpc.health.v1)
# 9192: admin HTTP (/healthz, /readyz, /metrics); set server.admin_listen: 0.0.0.0:9192
EXPOSE 9191 9192
# No HEALTHCHECK on purpose: Kubernetes probes (gRPC health on 9191, /healthz on 9192)
# decide readiness and liveness; see deploy/k8s/deployment.yaml.
# SIGTERM (the default stop signal) drains: NOT_SERVING, server.shutdown_delay, exit 0.
ENTRYPOINT ["extauthz"]
CMD ["serve", "--config", "/etc/extauthz/config.yaml"]
