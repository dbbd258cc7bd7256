"""The training-at-scale benchmark reads the seconds of each step of `main` from its log."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
Steps = Callable[[str, float, float], tuple[tuple[str, float], ...]]


@pytest.fixture
def steps(monkeypatch: pytest.MonkeyPatch) -> Steps:
    # The benchmarks are scripts run from the checkout, not an installed package.
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    module = importlib.import_module("bench.pipeline_scale")
    return module._steps  # type: ignore[no-any-return]


def _at(clock: str) -> float:
    return datetime.strptime(f"2026-12-06 {clock}", "%Y-%m-%d %H:%M:%S,%f").timestamp()


LOG = """\
2026-12-06 06:00:04,000 INFO pipeline.steps.ingest: Validated data.csv: 10 rows
2026/12/06 06:00:05 INFO mlflow.tracking.fluent: Experiment with name 'x' does not exist.
2026-12-06 06:00:34,500 INFO pipeline.steps.train: Trained HistGradientBoostingClassifier
2026-12-06 06:00:37,000 INFO pipeline.steps.evaluate: Held-out metrics for run 1: a=1
2026-12-06 06:00:37,250 INFO pipeline.steps.register: Registered 'x' version 1 from run 1
2026-12-06 06:00:39,000 INFO pipeline.registry.transaction: gate: version 1 is now Production
2026-12-06 06:00:40,000 INFO pipeline.reports.model_card: Logged the model card of 'x' version 1
"""


def test_each_step_lasts_from_the_log_line_ending_the_one_before_to_its_own(
    steps: Steps,
) -> None:
    seconds = dict(steps(LOG, _at("06:00:00,000"), _at("06:00:40,500")))
    assert seconds == pytest.approx(
        {
            "start to data validated": 4.0,
            "split + train": 30.5,
            "evaluate": 2.5,
            "register": 0.25,
            "gate + model card": 2.75,
            "exit": 0.5,
        }
    )


def test_a_log_without_every_step_gives_no_steps(steps: Steps) -> None:
    assert steps("plain scikit-learn: held-out ROC AUC 0.75\n", 0.0, 1.0) == ()
