"""Cheap schemas: exactly what MLflow infers from every value, for every column kind."""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import numpy as np
import pandas as pd
import pytest
from mlflow.data.pandas_dataset import from_pandas
from mlflow.models import infer_signature

from pipeline.steps import ingest, signature
from tests.pipeline.factories import CONFIGS, fitted, shipped_config

SHIPPED = sorted(path.stem for path in CONFIGS.glob("*.yaml"))


def _mlflow_schema(frame: pd.DataFrame) -> object:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the integer-column hint
        return infer_signature(frame).inputs


def _gaps(values: Iterable[object], gaps: np.ndarray, missing: object) -> list[object]:
    return [missing if gap else value for value, gap in zip(values, gaps, strict=True)]


def _every_column_kind(rows: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    gaps = rng.random(rows) < 0.2
    gaps[-1] = True  # a column whose gaps include the last row
    text = rng.choice(["a", "b", "c"], size=rows).astype(object)
    return pd.DataFrame(
        {
            "int": rng.integers(0, 9, rows),
            "int8": rng.integers(0, 9, rows).astype("int8"),
            "uint32": rng.integers(0, 9, rows).astype("uint32"),
            "float": rng.random(rows),
            "float_gaps": np.where(gaps, np.nan, rng.random(rows)),
            "float32_gaps": np.where(gaps, np.nan, rng.random(rows)).astype("float32"),
            "only_last_gap": np.r_[rng.random(rows - 1), np.nan],
            "bool": rng.random(rows) < 0.5,
            "nullable_int": pd.array(_gaps([3] * rows, gaps, None), dtype="Int64"),
            "nullable_bool": pd.array(_gaps([True] * rows, gaps, None), dtype="boolean"),
            "text": text,
            "text_nan": _gaps(text, gaps, np.nan),
            "text_none": _gaps(text, gaps, None),
            "category": pd.Categorical(text),
            "category_gaps": pd.Categorical(_gaps(text, gaps, None)),
            "category_ints": pd.Categorical(_gaps(rng.integers(0, 3, rows), gaps, None)),
            "string": pd.array(_gaps(text, gaps, None), dtype="string"),
            "str": pd.Series(_gaps(text, gaps, None)).astype("str"),
            "object_ints": pd.Series(rng.integers(0, 9, rows), dtype=object),
            "object_floats_gaps": pd.Series(_gaps([1.5] * rows, gaps, None), dtype=object),
            "object_bools": pd.Series(rng.random(rows) < 0.5, dtype=object),
            "all_missing": pd.Series([np.nan] * rows, dtype=object),
            "dates": pd.to_datetime(pd.Series(_gaps(["2024-01-02"] * rows, gaps, None))),
        }
    )


def test_the_schema_of_every_column_kind_is_the_one_mlflow_infers() -> None:
    frame = _every_column_kind()
    assert signature.schema(frame).to_dict() == _mlflow_schema(frame).to_dict()  # type: ignore[attr-defined]


@pytest.mark.parametrize("column", ["text", "float_gaps", "category_gaps", "only_last_gap"])
def test_a_single_column_schema_is_the_one_mlflow_infers(column: str) -> None:
    frame = _every_column_kind()[[column]]
    assert signature.schema(frame).to_dict() == _mlflow_schema(frame).to_dict()  # type: ignore[attr-defined]


def test_a_text_column_mixed_with_numbers_gets_mlflows_fallback_type() -> None:
    frame = pd.DataFrame({"mixed": pd.Series(["a", 1, "b"] * 5, dtype=object)})
    assert signature.schema(frame).to_dict() == _mlflow_schema(frame).to_dict()  # type: ignore[attr-defined]


def test_a_column_of_lists_is_inferred_from_all_its_values() -> None:
    frame = pd.DataFrame({"lists": [[1, 2], [3], None, [4, 5]]})
    assert signature.schema(frame).to_dict() == _mlflow_schema(frame).to_dict()  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_config_logs_the_signature_and_schema_mlflow_infers(name: str) -> None:
    config = shipped_config(name)
    trained = fitted(config)
    X = trained.dataset.X
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = infer_signature(X, trained.model.predict(X))
    assert signature.model_signature(X, trained.model).to_dict() == expected.to_dict()
    frame = trained.dataset.frame
    assert signature.schema(frame).to_dict() == _mlflow_schema(frame).to_dict()  # type: ignore[attr-defined]


def test_the_dataset_input_is_mlflows_with_our_digest() -> None:
    frame = ingest.run(shipped_config("customers")).frame
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = signature.dataset_input(
            frame, source="customers.csv", targets="churned", name="customers", digest="abc123"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MLflow's own: ambiguous source, integer-column hint
        theirs = from_pandas(frame, source="customers.csv", targets="churned", name="customers")
        reference = theirs.to_dict()
    assert ours.digest == "abc123"
    mine = ours.to_dict()
    assert {k: v for k, v in mine.items() if k != "digest"} == {
        k: v for k, v in reference.items() if k != "digest"
    }
