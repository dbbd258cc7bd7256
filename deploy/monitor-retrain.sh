#!/bin/sh
# Monitor the served model and retrain only when the monitor finds something.
#
#   deploy/monitor-retrain.sh [CONFIG]      (default: $PIPELINE_CONFIG, else configs/iris.yaml)
#
# `python -m pipeline monitor` exits 0 when it finds nothing, 10 when it finds drift or degraded
# performance, and 1-4 on errors. Exit 10 is a finding, not a failure: run as-is by cron or a
# Kubernetes Job it would be reported as a failed run and retried, so it is turned into a
# retraining here. The retraining is forced because the monitor has just decided; the gate still
# decides whether the new model replaces Production. Errors keep their exit code, so a scheduler
# sees them (2 config and 3 data errors will not fix themselves; 1 and 4 may be transient).
# PYTHON selects the interpreter (e.g. PYTHON=.venv/bin/python from a checkout).
set -u

config="${1:-${PIPELINE_CONFIG:-configs/iris.yaml}}"
python="${PYTHON:-python}"

"$python" -m pipeline monitor --config "$config"
status=$?
case "$status" in
    0)
        echo "monitor-retrain: no drift and no degraded performance; nothing to retrain"
        exit 0
        ;;
    10)
        echo "monitor-retrain: drift or degraded performance found; retraining" >&2
        exec "$python" -m pipeline retrain --config "$config" --force
        ;;
    *)
        echo "monitor-retrain: the monitor failed (exit code $status); not retraining" >&2
        exit "$status"
        ;;
esac
