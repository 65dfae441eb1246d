# registry-proxy sidecar image.
#
#   docker build -t <your-registry>/registry-proxy:0.1.0 .
#
# Two stages: "builder" installs the package and its dependencies into a virtualenv, "runtime"
# copies only that virtualenv onto a fresh slim base (no compilers, no build files, no pip cache).
# The runtime runs as the fixed non-root UID/GID 10001 and works with a read-only root
# filesystem: the only writable paths are the two declared volumes, the journal directory and /tmp.
#
# No packaging tools at run time: the virtualenv is created --without-pip and filled by the base
# image's pip from outside, and the runtime stage deletes the base image's own pip, setuptools
# and wheel. Nothing at run time installs anything, and each of them is a scanner finding.
#
# Behind a TLS-intercepting proxy or with a private index (docs/image.md has the details):
#   docker build --build-arg PIP_INDEX_URL=https://pypi.example.com/simple \
#     --secret id=ca_bundle,src=/etc/ssl/certs/ca-certificates.crt -t ... .
# An index URL holding credentials goes in a secret instead of a build argument:
#   --secret id=pip_index_url,src=./index-url.txt
# Secrets (BuildKit, the default builder since Docker 23) never reach a layer or the history.
#
# Both stages must use the same base: the virtualenv points at its interpreter by path.
# For reproducible release builds, pin the base by digest as well:
#   --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:<digest>
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder

# Package index of the build; empty means pip's default (PyPI). HTTP(S)_PROXY and NO_PROXY are
# predefined build arguments and reach pip without being declared.
ARG PIP_INDEX_URL=""
ARG PIP_EXTRA_INDEX_URL=""

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv --without-pip /opt/venv

WORKDIR /src
# Only what the build needs; .dockerignore keeps the rest of the context out. That includes
# chaos/, the fault-injection server of the tests: a distribution of its own, never in the image.
# Every dependency is installed from a binary wheel (asyncpg, orjson and uvloop publish
# manylinux wheels for CPython 3.11): the slim base has no compiler, and the build fails
# instead of silently compiling. The base image's pip installs into the virtualenv
# (--python); building the package itself pulls setuptools into a throwaway build environment.
COPY pyproject.toml README.md ./
COPY proxy ./proxy
RUN --mount=type=secret,id=ca_bundle,required=false \
    --mount=type=secret,id=pip_index_url,required=false \
    set -eu; \
    if [ -s /run/secrets/ca_bundle ]; then \
        export PIP_CERT=/run/secrets/ca_bundle SSL_CERT_FILE=/run/secrets/ca_bundle; \
    fi; \
    if [ -s /run/secrets/pip_index_url ]; then \
        PIP_INDEX_URL="$(cat /run/secrets/pip_index_url)"; \
    fi; \
    if [ -n "${PIP_INDEX_URL}" ]; then export PIP_INDEX_URL; else unset PIP_INDEX_URL; fi; \
    if [ -n "${PIP_EXTRA_INDEX_URL}" ]; then export PIP_EXTRA_INDEX_URL; else unset PIP_EXTRA_INDEX_URL; fi; \
    python -m pip --python /opt/venv/bin/python install \
        --only-binary=:all: --no-binary=registry-proxy . \
    && python -m pip --python /opt/venv/bin/python check \
    && for tool in pip setuptools wheel pkg_resources; do \
        if /opt/venv/bin/python -c "import ${tool}" 2>/dev/null; then \
            echo "${tool} is in the virtualenv" >&2; exit 1; \
        fi; \
    done \
    && /opt/venv/bin/registry-proxy --help > /dev/null

FROM ${PYTHON_IMAGE} AS runtime

ARG UID=10001
ARG GID=10001

LABEL org.opencontainers.image.title="registry-proxy" \
      org.opencontainers.image.description="Resilience sidecar for the agent registry in front of PostgreSQL" \
      org.opencontainers.image.licenses="Apache-2.0"

# The base image's pip, setuptools and wheel (and the copies ensurepip bundles) go: the sidecar
# never installs anything. Deleting them here does not shrink the base layers underneath, but
# the image's filesystem, which scanners and an attacker see, no longer holds them.
RUN groupadd --system --gid "${GID}" registry-proxy \
    && useradd --system --uid "${UID}" --gid "${GID}" --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin registry-proxy \
    && mkdir -p /var/lib/registry-proxy/journal \
    && chown -R "${UID}:${GID}" /var/lib/registry-proxy \
    && chmod 0750 /var/lib/registry-proxy/journal \
    && rm -rf /usr/local/bin/pip /usr/local/bin/pip3* /usr/local/bin/wheel \
        /usr/local/lib/python3*/site-packages/pip /usr/local/lib/python3*/site-packages/pip-* \
        /usr/local/lib/python3*/site-packages/setuptools \
        /usr/local/lib/python3*/site-packages/setuptools-* \
        /usr/local/lib/python3*/site-packages/pkg_resources \
        /usr/local/lib/python3*/site-packages/_distutils_hack \
        /usr/local/lib/python3*/site-packages/distutils-precedence.pth \
        /usr/local/lib/python3*/site-packages/wheel /usr/local/lib/python3*/site-packages/wheel-* \
        /usr/local/lib/python3*/ensurepip/_bundled \
    && for tool in pip setuptools wheel pkg_resources; do \
        if python -c "import ${tool}" 2>/dev/null; then \
            echo "${tool} is still in the base image" >&2; exit 1; \
        fi; \
    done

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
