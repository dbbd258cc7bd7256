"""``python -m serving``: start uvicorn with settings from ``SERVING_*`` environment variables."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import uvicorn
from pydantic import ValidationError

from serving.app import create_app
from serving.settings import Settings

logger = logging.getLogger(__name__)


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
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    overrides = {
        "host": args.host,
        "port": args.port,
        "model_uri": args.model_uri,
        "log_level": args.log_level,
    }
    try:
        settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        print(f"Invalid serving settings (SERVING_* variables or flags):\n{exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logger.info("Starting on http://%s:%d", settings.host, settings.port)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
