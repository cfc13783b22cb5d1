# syntax=docker/dockerfile:1
# One image for every stalk process; the command selects which (as the Helm chart does):
#   stalk api | stalk worker --queues Q | stalk beat | stalk db upgrade | python -m stalk_operator
# Runs as UID/GID 10001 with a read-only root file system: only /tmp is written (beat's schedule,
# the workers' metrics files, the evaluation SQLite file).

# Python 3.11 like the lock file's development environment; an exact tag, bump with the lock.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---- build: resolve nothing, install exactly what uv.lock pins (hashes, wheels only) ----------
FROM ${PYTHON_IMAGE} AS build
# The uv release the Makefile bootstraps (UV_VERSION), from PyPI.
ARG UV_VERSION=0.13.8
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_NO_CACHE=1
RUN pip install --no-cache-dir "uv==${UV_VERSION}"
WORKDIR /src
# Dependencies first: this layer is rebuilt only when the lock file changes.
COPY pyproject.toml uv.lock ./
RUN uv export --frozen --no-dev --no-emit-project --format requirements-txt --output-file /tmp/requirements.txt \
 && uv venv --python /usr/local/bin/python3 /opt/stalk \
 && uv pip install --python /opt/stalk/bin/python --require-hashes --no-deps --only-binary :all: \
      --compile-bytecode -r /tmp/requirements.txt
# Then stalk itself, as a wheel (no editable install, no sources left behind).
COPY README.md ./
COPY api ./api
COPY workers ./workers
COPY operator ./operator
RUN uv build --wheel --out-dir /tmp/dist \
 && uv pip install --python /opt/stalk/bin/python --no-deps --compile-bytecode /tmp/dist/*.whl

# ---- runtime: the interpreter and /opt/stalk, nothing to build with ---------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="stalk" \
      org.opencontainers.image.description="Celery task queues on Kubernetes: task API, workers, beat and the autoscaling operator" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 stalk \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin stalk \
 && pip uninstall --yes --no-cache-dir pip setuptools wheel
COPY --from=build /opt/stalk /opt/stalk
# skaffold dev only (skaffold.yaml sets DEV_RELOAD=true): the app user may receive synced sources,
# and the servers (`stalk api|worker|beat`) restart when a synced Python file changes; one-off
# commands (`stalk db upgrade` in the migrations init container, `stalk submit` in `helm test`)
# run and exit as in the release image. Off in release images.
ARG DEV_RELOAD=false
# The wrapper's own "$1", "$*" and "$@" are written literally (single quotes) for it to expand at run time.
# hadolint ignore=SC2016
RUN if [ "$DEV_RELOAD" = "true" ]; then \
      site=/opt/stalk/lib/python3.11/site-packages \
      && chown -R 10001:10001 "$site/stalk_api" "$site/stalk_workers" "$site/stalk_operator" \
      && mv /opt/stalk/bin/stalk /opt/stalk/bin/stalk-app \
      && printf '#!/bin/sh\ncase "$1" in\n  api|worker|beat) exec watchfiles --filter python "stalk-app $*" %s/stalk_api %s/stalk_workers %s/stalk_operator ;;\n  *) exec stalk-app "$@" ;;\nesac\n' \
           "$site" "$site" "$site" > /opt/stalk/bin/stalk \
      && chmod 0755 /opt/stalk/bin/stalk; \
    fi
# PYTHONDONTWRITEBYTECODE: the root file system is read-only (bytecode was compiled at build time).
# STALK_API_HOST 0.0.0.0: the API then insists on STALK_API_TOKENS(_FILE), which the chart provides.
# STALK_DATABASE_URL: an evaluation default in /tmp; deployments set PostgreSQL.
ENV PATH=/opt/stalk/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    STALK_API_HOST=0.0.0.0 \
    STALK_API_PORT=8000 \
    STALK_WORKER_METRICS_PORT=9818 \
    STALK_METRICS_PORT=8090 \
    STALK_DATABASE_URL=sqlite:////tmp/stalk.db
WORKDIR /opt/stalk
USER 10001:10001
# API, worker metrics, operator metrics and health.
EXPOSE 8000 9818 8090
CMD ["stalk", "api"]
