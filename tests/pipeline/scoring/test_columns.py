"""Input columns against the signature, checked before any row is scored."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from sklearn.dummy import DummyClassifier
from sklearn.pipeline import Pipeline

from pipeline.errors import DataValidationError
from pipeline.scoring.columns import bad_values_message, check_columns, output_schema
from pipeline.scoring.model import Feature, LoadedModel
from pipeline.scoring.source import Source


def _model(classes: tuple[str, ...] | None = ("a", "b")) -> LoadedModel:
    return LoadedModel(
        uri="models:/m/1",
        version="1",
        local_dir=Path("."),
        pipeline=Pipeline([("model", DummyClassifier())]),
        features=(
            Feature("x", "double", required=True),
            Feature("n", "long", required=True),
            Feature("c", "string", required=False),
        ),
        classes=classes,
        has_proba=classes is not None,
    )


def _parquet(**types: pa.DataType) -> Source:
    return Source(
        path=Path("rows.parquet"),
        fmt="parquet",
        files=(Path("rows.parquet"),),
        schema=pa.schema(list(types.items())),
        rows=1,
    )


def test_a_missing_required_column_is_named_but_a_missing_optional_one_is_not() -> None:
    with pytest.raises(DataValidationError) as raised:
        check_columns(_parquet(x=pa.float64(), c=pa.string()), _model())
    assert "lacks the model's input column(s) 'n'; add them" in str(raised.value)
    check_columns(_parquet(x=pa.int32(), n=pa.int64()), _model())


def test_an_input_column_named_like_an_output_column_is_refused() -> None:
    source = _parquet(x=pa.float64(), n=pa.int64(), **{"proba.a": pa.float64()})
    with pytest.raises(DataValidationError, match="already has the column"):
        check_columns(source, _model())


@pytest.mark.parametrize(
    ("types", "message"),
    [
        ({"x": pa.string(), "n": pa.int64()}, "holds text (string); the model expects numbers"),
        ({"x": pa.float64(), "n": pa.float64()}, "holds numbers (double); the model expects whole"),
        (
            {"x": pa.float64(), "n": pa.int64(), "c": pa.int8()},
            "holds whole numbers (int8); the model expects text",
        ),
        (
            {"x": pa.bool_(), "n": pa.int64()},
            "holds values of another type (bool); the model expects numbers",
        ),
    ],
)
def test_a_parquet_column_of_the_wrong_type_is_refused_by_name(
    types: dict[str, pa.DataType], message: str
) -> None:
    with pytest.raises(DataValidationError) as raised:
        check_columns(_parquet(**types), _model())
    assert message in str(raised.value)


def test_dictionary_encoded_text_is_accepted_for_a_text_feature() -> None:
    text = pa.dictionary(pa.int32(), pa.string())
    check_columns(_parquet(x=pa.float64(), n=pa.int64(), c=text), _model())


def test_the_output_schema_types_the_features_and_appends_prediction_and_probabilities() -> None:
    source = _parquet(id=pa.int64(), x=pa.int32(), n=pa.int16(), c=pa.large_string())
    schema = output_schema(source, _model())
    assert schema.names == ["id", "x", "n", "c", "prediction", "proba.a", "proba.b"]
    assert (
        schema.types
        == [pa.int64(), pa.float64(), pa.int64(), pa.string(), pa.string()] + [pa.float64()] * 2
    )
    regressor = output_schema(source, _model(classes=None))
    assert regressor.field("prediction").type == pa.float64()


def test_a_bad_value_message_names_the_column_an_example_and_what_to_do() -> None:
    message = bad_values_message(
        Feature("n", "long", required=True),
        _parquet(n=pa.int64()),
        "missing",
        "2 missing value(s)",
        None,
        "row 3",
    )
    assert message == (
        "column 'n' of 'rows.parquet' has 2 missing value(s) (at row 3); the model takes this "
        "column as integers, which cannot be empty; fill the gaps"
    )
