"""Model layer: a retrain's gate judges only on rows neither model trained on.

The case that leaked: the champion trained on a CSV of integers; the retrain data holds the
same rows read back as floats, plus labelled production rows that copy rows already there.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from pipeline.config import load_config
from pipeline.monitoring import retrain
from pipeline.steps import flow, ingest
from tests.pipeline.factories import iris_csv

FEATURES = ["sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm"]


def _rows(X: pd.DataFrame, y: pd.Series) -> set[tuple[Any, ...]]:
    """Rows as plain tuples of floats and the label: identity by value, by hand."""
    frame = X[FEATURES].astype(float).assign(label=y.astype(str).to_numpy())
    return set(frame.itertuples(index=False, name=None))


@pytest.fixture
def integer_iris(tmp_path: Path) -> Path:
    """Iris in millimetres: every feature an integer column."""
    frame = pd.read_csv(pd.io.common.StringIO(iris_csv("species")))
    frame.columns = [*FEATURES, "species"]
    frame[FEATURES] = (frame[FEATURES] * 10).round().astype(int)
    path = tmp_path / "iris_mm.csv"
    frame.to_csv(path, index=False)
    return path


def test_the_retrain_gate_compares_only_rows_unseen_by_both_when_integers_return_as_floats(
    mlflow_store: str,
    tmp_path: Path,
    integer_iris: Path,
    write_config: Callable[..., Path],
    iris_config: Callable[..., dict[str, Any]],
) -> None:
    raw = iris_config(data={"path": str(integer_iris), "target": "species"})
    raw["gate"] = {"metric": "test_f1_macro", "threshold": None}
    config = load_config(write_config(raw))
    champion = flow.run_all(config)
    assert champion.decision.promoted
    dataset = ingest.run(config)
    assert all(pd.api.types.is_integer_dtype(dataset.X[c]) for c in FEATURES)

    # What retrain writes: the configured rows, plus labelled production rows read back from
    # the log as floats, many of them copies of rows the champion trained on.
    configured = dataset.frame[[*FEATURES, "species"]]
    trained_on = champion.training.split
    copies = trained_on.X_train.head(60).astype(float)
    copies["species"] = trained_on.y_train.head(60).to_numpy()
    fresh = copies.head(5).assign(sepal_length_cm=1000.0)  # no flower is a metre long
    production = pd.concat([copies, fresh, fresh], ignore_index=True)
    new = retrain.new_rows(configured, production, dataset)
    # Every copy of a configured row and the second copy of each new row are dropped.
    assert len(new) == 5
    combined = pd.concat([configured, new], ignore_index=True)
    data = tmp_path / "retrain.parquet"
    combined.astype({c: float for c in FEATURES}).to_parquet(data, index=False)
    challenger = flow.run_all(
        config.with_data_file(data, name="iris-retrain", recent_rows=len(new)).with_overrides(
            **{"split.seed": 7}  # another split: the champion's training rows reach held-out
        )
    )

    held_out = challenger.training.split
    unseen_by_both = [
        row not in _rows(trained_on.X_train, trained_on.y_train)
        and row not in _rows(held_out.X_train, held_out.y_train)
        for row in (
            tuple(r)
            for r in held_out.X_test[FEATURES]
            .astype(float)
            .assign(label=held_out.y_test.astype(str).to_numpy())
            .itertuples(index=False, name=None)
        )
    ]
    assert 0 < sum(unseen_by_both) < len(unseen_by_both)
    assert challenger.decision.comparison_rows == sum(unseen_by_both)
    assert f"of {sum(unseen_by_both)} held-out rows unseen by both" in challenger.decision.reason
