# syntax=docker/dockerfile:1
# The serving image. The same image also runs the pipeline's jobs (`python -m pipeline ...`,
# configs/ is included) and the MLflow tracking server (`mlflow server ...`), so that client and
# server always run the same MLflow. Settings come from the environment only (SERVING_*,
# MLFLOW_TRACKING_URI): nothing here names a store, a model or a key.
#
#   docker build -t mlops-pipeline:local .
#   docker run --rm -p 8000:8000 -e SERVING_TRACKING_URI=http://tracking:5000 mlops-pipeline:local
#
# docs/deployment.md describes every variable; tests/deploy checks this file against the app.

ARG PYTHON_IMAGE=python:3.11-slim

# --- build: a virtual environment holding exactly uv.lock's releases and the project ----------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1
WORKDIR /src
# pip only brings uv, at the release the lock pins; uv installs everything else from the lock and
# refuses (--locked) a lock that no longer matches pyproject.toml.
COPY pyproject.toml uv.lock ./
COPY tools/lockfile.py ./tools/lockfile.py
RUN pip install "uv==$(python tools/lockfile.py uv-version)"
# `team` brings the PostgreSQL driver the tracking server needs; `--build-arg EXTRAS=` leaves it
# out of an image that only serves; several are separated by commas.
ARG EXTRAS=team
# The dependencies first, in a layer of their own that a change of code does not rebuild.
RUN for extra in $(echo "$EXTRAS" | tr ',' ' '); do echo "--extra $extra"; done > extras \
 && uv sync --locked --no-install-project --no-editable $(cat extras)
# README.md is the package's long description: setuptools refuses to build without it.
COPY README.md ./
COPY pipeline ./pipeline
COPY serving ./serving
# The project itself, built as a wheel (templates included) rather than linked to /src.
RUN uv sync --locked --no-editable $(cat extras)

# --- runtime: the environment, the configs and a non-root user; no compiler, no pip cache ------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="mlops-pipeline" \
      org.opencontainers.image.description="Serves the MLflow registered model over REST; also runs the pipeline jobs and the tracking server."
# A fixed uid, so Kubernetes' runAsNonRoot can verify it and volumes can be prepared for it.
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin app
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY configs ./configs
COPY deploy/monitor-retrain.sh ./deploy/monitor-retrain.sh
# Writable by the app user: the prediction log (serving writes, monitoring reads) and the tracking
# server's artifacts. A named volume mounted on an empty directory copies its owner.
RUN mkdir -p prediction_log mlartifacts \
 && chown app:app /app prediction_log mlartifacts
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    SERVING_HOST=0.0.0.0 \
    SERVING_PORT=8000 \
    SERVING_PREDICTION_LOG_DIR=/app/prediction_log
USER 10001:10001
EXPOSE 8000
# Readiness, not liveness: the container is healthy once a model answers. slim has no curl, and
# urlopen raises on a 503, so the exit code says it. The port follows SERVING_PORT overrides.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('SERVING_PORT', '8000') + '/health/ready', timeout=4)"]
CMD ["python", "-m", "serving"]
