"""``python -m serving``: start uvicorn with settings from ``SERVING_*`` environment variables."""

from __future__ import annotations

import argparse
import copy
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

import uvicorn.config
from pydantic import ValidationError

from serving.server import PortUnavailableError, bind_socket, serve, server_config
from serving.settings import Settings, describe_errors

logger = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
APP_FACTORY = "serving.app:app_from_env"
"""What each worker process imports and calls when there are several."""


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m serving",
        description="Serve the MLflow registered model over REST. Settings come from "
        "SERVING_* environment variables (e.g. SERVING_MODEL_URI, SERVING_TRACKING_URI); "
        "these flags override them.",
    )
    parser.add_argument("--host", help="interface to bind (SERVING_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to bind (SERVING_PORT, default 8000)")
    parser.add_argument("--model-uri", help="models:/<name>@<alias>, /<version> or /<stage>")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING ... (SERVING_LOG_LEVEL)")
    parser.add_argument(
        "--workers",
        type=int,
        help="worker processes, each with its own copy of the model (SERVING_WORKERS, default 1)",
    )
    return parser.parse_args(argv)


def _log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging plus a root handler for ours, applied by uvicorn in every worker."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["formatters"]["serving"] = {"format": LOG_FORMAT}
    config["handlers"]["serving"] = {
        "class": "logging.StreamHandler",
        "formatter": "serving",
        "stream": "ext://sys.stderr",
    }
    config["root"] = {"handlers": ["serving"], "level": level}
    return config


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    overrides = {
        "host": args.host,
        "port": args.port,
        "model_uri": args.model_uri,
        "log_level": args.log_level,
        "workers": args.workers,
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        print(
            f"Invalid serving settings (SERVING_* variables or flags):\n{describe_errors(exc)}",
            file=sys.stderr,
        )
        return 2
    try:  # before anything is loaded: a busy port fails in milliseconds, not after the model
        sock = bind_socket(settings.host, settings.port)
    except PortUnavailableError as exc:
        print(exc, file=sys.stderr)
        return 1
    logging.basicConfig(level=settings.log_level, format=LOG_FORMAT)
    logger.info(
        "Starting on http://%s:%d (%d worker%s)",
        settings.host,
        settings.port,
        settings.workers,
        "" if settings.workers == 1 else "s",
    )
    options: dict[str, Any] = {
        "log_level": settings.log_level.lower(),
        "log_config": _log_config(settings.log_level),
    }
    if settings.workers == 1:
        # Imported here, not at the top: with several workers this process only supervises
        # them, and skipping the app's imports (MLflow, pandas, scikit-learn) saves ~220 MB.
        from serving.app import create_app

        serve(server_config(create_app(settings), settings, **options), sock)
        return 0
    # Several processes: each worker imports the factory and reads its settings from the
    # environment, so the flags travel there (validated above, so every worker accepts them).
    for field, value in overrides.items():
        os.environ[f"SERVING_{field.upper()}"] = str(value)
    config = server_config(APP_FACTORY, settings, factory=True, workers=settings.workers, **options)
    # The workers write their counters to files here, and each scrape sums them all.
    with tempfile.TemporaryDirectory(prefix="serving-metrics-") as shared:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = shared
        serve(config, sock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
