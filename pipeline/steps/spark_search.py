"""Search trials on Spark: joblib's Spark backend (`joblibspark`) over a Spark session.

With `search.backend: spark` the cross-validation fits that scikit-learn's search would hand
to local worker processes become Spark tasks (joblibspark runs each batch of joblib tasks as
one Spark job). The fits, their folds and seeds are the local backend's, so the trials, their
scores and the best setting are too; only where they run changes. The session is the active
one if there is one (a notebook, `spark-submit`), else one built here: Spark Connect when
`SPARK_REMOTE` is set (PySpark's own variable), else the master in `SPARK_MASTER`, else
`local[*]` (every core of this machine).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from joblib import effective_n_jobs, parallel_config

from pipeline.errors import ConfigError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

logger = logging.getLogger(__name__)

DEFAULT_MASTER = "local[*]"
# A local session stays on loopback and quiet; a cluster's own settings are left alone.
_LOCAL_CONF = {
    "spark.ui.enabled": "false",
    "spark.driver.host": "127.0.0.1",
    "spark.driver.bindAddress": "127.0.0.1",
}


@contextmanager
def trials_on_spark(n_jobs: int) -> Iterator[None]:
    """Within the block, scikit-learn's parallel fits run as Spark tasks, `n_jobs` at a time
    (-1: as many as the cluster has task slots)."""
    try:
        from joblibspark import register_spark
    except ImportError as exc:
        raise ConfigError(
            "search.backend: spark needs the spark extra (pyspark, joblibspark): "
            "pip install -e '.[spark]', and Java 17 for a local session"
        ) from exc
    session = _session()
    register_spark()
    with warnings.catch_warnings():
        # A local session has no stage-level scheduling and needs none (a task per core);
        # joblibspark would say so for every batch of trials.
        warnings.filterwarnings("ignore", message="Spark local mode doesn't support stage")
        with parallel_config(backend="spark", n_jobs=n_jobs):
            logger.info(
                "Search trials run on Spark (%s, %d at a time)",
                _where(session),
                effective_n_jobs(n_jobs),
            )
            yield


def _session() -> SparkSession:
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    builder = SparkSession.builder.appName("pipeline-search")
    if "SPARK_REMOTE" not in os.environ:
        master = os.environ.get("SPARK_MASTER", DEFAULT_MASTER)
        builder = builder.master(master)
        if master.startswith("local"):
            # Spark's Python workers must run this interpreter (the venv's), not the first
            # python3 on PATH.
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
            os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
            for key, value in _LOCAL_CONF.items():
                builder = builder.config(key, value)
    # Spark's own stage progress bar, on a terminal only; the search shows one per trial too.
    builder = builder.config("spark.ui.showConsoleProgress", str(sys.stderr.isatty()).lower())
    session = builder.getOrCreate()
    if not _is_connect():
        session.sparkContext.setLogLevel("ERROR")
    return session


def _is_connect() -> bool:
    from pyspark.sql.utils import is_remote

    return bool(is_remote())


def _where(session: SparkSession) -> str:
    # A Spark Connect session has no SparkContext to ask.
    if _is_connect():
        return f"Spark Connect {os.environ.get('SPARK_REMOTE', '')}".strip()
    return f"master {session.sparkContext.master}"
