#!/usr/bin/env bash
# Team tracking server: `mlflow server` on PostgreSQL with proxied artifact storage.
#
# Settings, by environment only (the names mlflow server itself reads, so a container or a
# systemd unit can set them the same way):
#   MLFLOW_BACKEND_STORE_URI      runs, metrics and the model registry
#                                 (default postgresql://postgres@127.0.0.1:5432/mlflow;
#                                 the database is created when it does not exist; a bare
#                                 postgresql:// is run with the psycopg2 driver)
#   MLFLOW_ARTIFACTS_DESTINATION  where proxied artifacts are stored (default ./mlartifacts;
#                                 s3://bucket/prefix with MLFLOW_S3_ENDPOINT_URL,
#                                 AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for S3-compatible)
#   MLFLOW_HOST, MLFLOW_PORT      bind address (default 127.0.0.1:5000)
#   MLFLOW_WORKERS                server worker processes (default 2)
#   MLFLOW_SERVER_ALLOWED_HOSTS   Host headers to accept when reached by a name other than
#                                 localhost or a private IP (mlflow's DNS-rebinding guard)
#   PYTHON, MLFLOW                the interpreter (with psycopg2) and the mlflow executable
# Clients point MLFLOW_TRACKING_URI=http://$MLFLOW_HOST:$MLFLOW_PORT at it.
set -euo pipefail

export MLFLOW_BACKEND_STORE_URI="${MLFLOW_BACKEND_STORE_URI:-postgresql://postgres@127.0.0.1:5432/mlflow}"
export MLFLOW_ARTIFACTS_DESTINATION="${MLFLOW_ARTIFACTS_DESTINATION:-./mlartifacts}"
export MLFLOW_HOST="${MLFLOW_HOST:-127.0.0.1}"
export MLFLOW_PORT="${MLFLOW_PORT:-5000}"
export MLFLOW_WORKERS="${MLFLOW_WORKERS:-2}"
# mlflow server 3.17 starts eight background job workers otherwise; the registry needs none.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"
export MLFLOW_DISABLE_TELEMETRY="${MLFLOW_DISABLE_TELEMETRY:-true}"
PYTHON="${PYTHON:-python}"
# SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; the project installs psycopg2.
case "$MLFLOW_BACKEND_STORE_URI" in
  postgresql://*) MLFLOW_BACKEND_STORE_URI="postgresql+psycopg2://${MLFLOW_BACKEND_STORE_URI#postgresql://}" ;;
esac
MLFLOW="${MLFLOW:-mlflow}"

case "$MLFLOW_BACKEND_STORE_URI" in
  postgresql*://*)
    # Create the database on first start: connect to the server's maintenance database.
    "$PYTHON" - <<'PY'
import os
import sys

try:
    import psycopg2
    from psycopg2 import sql
    from sqlalchemy.engine import make_url
except ImportError as exc:
    sys.exit(f"tracking-server: {exc.name} is missing; install the project with its 'team' extra")

url = make_url(os.environ["MLFLOW_BACKEND_STORE_URI"])
if not url.database:
    sys.exit("tracking-server: MLFLOW_BACKEND_STORE_URI names no database, e.g. .../mlflow")
try:
    connection = psycopg2.connect(
        host=url.host, port=url.port, user=url.username, password=url.password,
        dbname="postgres", connect_timeout=10,
    )
except psycopg2.OperationalError as exc:
    first = str(exc).strip().splitlines()[0]
    sys.exit(f"tracking-server: cannot reach PostgreSQL at {url.host}:{url.port}: {first}")
connection.autocommit = True
with connection.cursor() as cursor:
    cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (url.database,))
    if cursor.fetchone() is None:
        cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(url.database)))
        print(f"tracking-server: created database {url.database!r}", file=sys.stderr)
connection.close()
PY
    ;;
esac

case "$MLFLOW_ARTIFACTS_DESTINATION" in
  *://*) ;;
  *) mkdir -p "$MLFLOW_ARTIFACTS_DESTINATION" ;;
esac

echo "tracking-server: http://$MLFLOW_HOST:$MLFLOW_PORT (store ${MLFLOW_BACKEND_STORE_URI##*@}," \
  "artifacts $MLFLOW_ARTIFACTS_DESTINATION)" >&2
exec "$MLFLOW" server \
  --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" \
  --serve-artifacts --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" \
  --host "$MLFLOW_HOST" --port "$MLFLOW_PORT" --workers "$MLFLOW_WORKERS" \
  "$@"
