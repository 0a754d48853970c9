# The worker's production image: the locked runtime dependencies only (no `demo` extra, no dev group, so no
# moto and no test tools), run as a fixed non-root UID from a read-only root filesystem.
#
#   docker build -t deletion-reconciler:0.1.0 .
#
# Base: python:3.11.16-slim-bookworm, pinned by the digest of its multi-platform index (amd64 and arm64
# alike), as published in docker-library/repo-info (repos/python/remote/3.11.16-slim-bookworm.md at
# commit 422f3cfe488dc9ae394c5058b27db617f72c91db). Both stages use the same base, so the venv's
# interpreter path (/usr/local/bin/python3.11) exists in the final stage.

FROM python:3.11.16-slim-bookworm@sha256:c425d915a89a6dcd3183b1797ad9bd8878caff5a417f6371c8df93c8ea8b727f AS builder

# uv pinned as in scripts/dev; it stays in this stage.
RUN pip install --no-cache-dir --disable-pip-version-check uv==0.13.8

# Install into /opt/reconciler with the base image's interpreter, compiled to bytecode now because the
# running container cannot write .pyc files.
ENV UV_PROJECT_ENVIRONMENT=/opt/reconciler \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1

WORKDIR /src

# Dependencies first, in their own layer: it is rebuilt only when the lock changes.
COPY pyproject.toml uv.lock ./
RUN uv sync --locked --no-dev --no-editable --no-install-project

# Then the project itself, installed as a wheel (not editable), so /src is not needed at runtime.
COPY README.md LICENSE ./
COPY reconciler ./reconciler
RUN uv sync --locked --no-dev --no-editable


FROM python:3.11.16-slim-bookworm@sha256:c425d915a89a6dcd3183b1797ad9bd8878caff5a417f6371c8df93c8ea8b727f

LABEL org.opencontainers.image.title="deletion-reconciler" \
      org.opencontainers.image.description="Deletes everything linked to a DynamoDB item when its TTL expires or its owner asks." \
      org.opencontainers.image.licenses="MIT"

# No .pyc writes at runtime (the root filesystem is read-only); logs leave unbuffered.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/reconciler/bin:$PATH

# The venv has no installer of its own; the base image's pip, setuptools and wheel are removed too. The
# standard library ships without bytecode in the official images: compile it here, once. UID/GID 10001 is
# fixed and numeric so that Kubernetes' runAsNonRoot can verify it; it owns nothing in the image.
RUN python -m pip uninstall --yes --quiet --disable-pip-version-check pip setuptools wheel \
    && python -m compileall -q /usr/local/lib/python3.11 \
    && groupadd --system --gid 10001 reconciler \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin reconciler

COPY --from=builder /opt/reconciler /opt/reconciler

USER 10001:10001

# /metrics, /healthz and /readyz. The worker binds 127.0.0.1 unless RECONCILER_HTTP_HOST says otherwise:
# the Kubernetes Deployment sets 0.0.0.0 so that the kubelet's probes reach it.
EXPOSE 9464

# No HEALTHCHECK: Kubernetes ignores it and probes /healthz and /readyz itself.
# Exec form: the Python process is PID 1 and receives SIGTERM itself (first signal drains, second forces).
ENTRYPOINT ["/opt/reconciler/bin/reconciler"]
CMD ["run"]
