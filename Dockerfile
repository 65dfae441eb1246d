# registry-proxy sidecar image.
#
#   docker build -t registry-proxy:0.1.0 .
#
# Two stages: "builder" installs the package and its dependencies into a virtualenv, "runtime"
# copies only that virtualenv onto a fresh slim base (no compilers, no build files, no pip cache).
# The runtime runs as the fixed non-root UID/GID 10001 and works with a read-only root
# filesystem: the only writable paths are the two declared volumes, the journal directory and /tmp.
#
# Both stages must use the same base: the virtualenv points at its interpreter by path.
# For reproducible release builds, pin the base by digest as well:
#   --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:<digest>
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# Only what the build needs; .dockerignore keeps the rest of the context out.
# Every dependency is installed from a binary wheel (asyncpg, orjson and uvloop publish
# manylinux wheels for CPython 3.11): the slim base has no compiler, and the build fails
# instead of silently compiling.
COPY pyproject.toml README.md ./
COPY proxy ./proxy
RUN pip install --only-binary=:all: --no-binary=registry-proxy . \
    && pip check

FROM ${PYTHON_IMAGE} AS runtime

ARG UID=10001
ARG GID=10001

LABEL org.opencontainers.image.title="registry-proxy" \
      org.opencontainers.image.description="Resilience sidecar for the agent registry in front of PostgreSQL" \
      org.opencontainers.image.licenses="Apache-2.0"

RUN groupadd --system --gid "${GID}" registry-proxy \
    && useradd --system --uid "${UID}" --gid "${GID}" --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin registry-proxy \
    && mkdir -p /var/lib/registry-proxy/journal \
    && chown -R "${UID}:${GID}" /var/lib/registry-proxy \
    && chmod 0750 /var/lib/registry-proxy/journal

COPY --from=builder /opt/venv /opt/venv

# PYTHONDONTWRITEBYTECODE: the root filesystem is read-only; the virtualenv already holds the
# bytecode compiled at install time.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    REGISTRY_PROXY_JOURNAL__DIR=/var/lib/registry-proxy/journal

# The write journal must outlive the container (mount an emptyDir or a PersistentVolumeClaim);
# /tmp is the only other writable path under a read-only root filesystem.
VOLUME ["/var/lib/registry-proxy/journal", "/tmp"]

WORKDIR /var/lib/registry-proxy

# The sidecar listens on 127.0.0.1:3580 by default. To reach it from outside the container
# (docker run -p), set REGISTRY_PROXY_HOST=0.0.0.0 and REGISTRY_PROXY_ALLOW_NON_LOOPBACK=true.
EXPOSE 3580

USER 10001:10001

# No HEALTHCHECK: Kubernetes ignores it; the Helm chart defines startup, liveness (/healthz) and
# readiness (/readyz) probes instead.
ENTRYPOINT ["registry-proxy"]
CMD ["serve"]
