"""inference: request models from the signature, validation errors, typed frames, predictions.

No HTTP here: these call the plain functions the routes call.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from serving.errors import InvalidRequestError
from serving.model import inference
from serving.model.inference import (
    ClassPrediction,
    RegressionPrediction,
    build_request_models,
    parse_request,
    predict,
    predict_frame,
    to_frame,
)
from serving.model.ref import ModelRef
from serving.model.store import InputColumn, LoadedModel, load_model
from tests.serving.factories import TinyStore

MIXED = (
    InputColumn("age", "double", required=False),
    InputColumn("rooms", "long", required=True),
    InputColumn("city", "string", required=False),
    InputColumn("owner", "string", required=True),
)
REQUESTS = build_request_models(MIXED)
GOOD = {"age": 31.5, "rooms": 3, "city": "paris", "owner": "yes"}


@pytest.fixture(scope="module")
def load(store: TinyStore) -> Any:
    cache: dict[str, LoadedModel] = {}

    def _load(uri: str) -> LoadedModel:
        if uri not in cache:
            cache[uri] = load_model(ModelRef.from_uri(uri), store.tracking_uri)
        return cache[uri]

    return _load


def _invalid(payload: Any) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as info:
        parse_request(REQUESTS, payload)
    assert info.value.status_code == 422
    return info.value


def _only_detail(error: InvalidRequestError) -> tuple[str, str]:
    assert len(error.details) == 1, error.details
    return error.details[0].field, error.details[0].message


def test_request_model_schema_lists_real_column_names_and_required_ones() -> None:
    schema = REQUESTS.record.model_json_schema()
    assert list(schema["properties"]) == ["age", "rooms", "city", "owner"]
    assert schema["required"] == ["rooms", "owner"]
    assert schema["additionalProperties"] is False


def test_parse_single_record_returns_values_by_column_name() -> None:
    records, is_batch = parse_request(REQUESTS, GOOD)
    assert records == [GOOD]
    assert not is_batch


def test_parse_batch_returns_every_record() -> None:
    records, is_batch = parse_request(REQUESTS, {"records": [GOOD, {**GOOD, "rooms": 1}]})
    assert [r["rooms"] for r in records] == [3, 1]
    assert is_batch


def test_optional_columns_may_be_omitted_or_null() -> None:
    records, _ = parse_request(REQUESTS, {"rooms": 2, "owner": "no", "city": None})
    assert records == [{"age": None, "rooms": 2, "city": None, "owner": "no"}]


def test_integers_are_accepted_for_double_columns() -> None:
    records, _ = parse_request(REQUESTS, {**GOOD, "age": 30})
    assert records[0]["age"] == 30.0


def test_rejects_missing_required_field_naming_it() -> None:
    field, message = _only_detail(_invalid({"age": 1.0, "city": "nice", "owner": "no"}))
    assert field == "rooms"
    assert "'rooms' is required (long)" in message


def test_rejects_null_for_required_field_naming_it() -> None:
    field, message = _only_detail(_invalid({**GOOD, "owner": None}))
    assert field == "owner"
    assert "cannot be null" in message and "string" in message


@pytest.mark.parametrize(
    ("column", "value", "expected"),
    [
        ("age", "31", "must be a number (double), got a string"),
        ("age", True, "must be a number (double), got a boolean"),
        ("rooms", 2.5, "must be an integer (long), got a number"),
        ("rooms", "2", "must be an integer (long), got a string"),
        ("owner", 1, "must be a string (string), got a number"),
    ],
)
def test_rejects_wrong_type_naming_field_and_expected_type(
    column: str, value: Any, expected: str
) -> None:
    field, message = _only_detail(_invalid({**GOOD, column: value}))
    assert field == column
    assert expected in message


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_rejects_non_finite_numbers_naming_the_field(value: float) -> None:
    field, message = _only_detail(_invalid({**GOOD, "age": value}))
    assert field == "age"
    assert "finite number" in message and "NaN and Infinity" in message


def test_rejects_unknown_field_naming_it_and_listing_expected_ones() -> None:
    field, message = _only_detail(_invalid({**GOOD, "colour": "red"}))
    assert field == "colour"
    assert "not an input of this model" in message
    assert "age, rooms, city, owner" in message


def test_rejects_empty_records_list() -> None:
    field, message = _only_detail(_invalid({"records": []}))
    assert field == "records"
    assert "at least one record" in message


def test_batch_errors_name_the_record_index_and_field() -> None:
    error = _invalid({"records": [GOOD, {**GOOD, "rooms": None}, "oops"]})
    assert [d.field for d in error.details] == ["records[1].rooms", "records[2]"]
    assert "records[1].rooms" in error.message
    assert "JSON object" in error.details[1].message


@pytest.mark.parametrize("payload", [[GOOD], "text", 3, None])
def test_rejects_a_body_that_is_not_an_object(payload: Any) -> None:
    error = _invalid(payload)
    assert error.details[0].field == "body"
    assert '{"records": [record, ...]}' in error.message


def test_frame_has_training_dtypes_with_nan_for_missing_values() -> None:
    frame = to_frame(MIXED, [GOOD, {"age": None, "rooms": 1, "city": None, "owner": "no"}])
    assert list(frame.columns) == ["age", "rooms", "city", "owner"]
    assert frame["age"].dtype == np.float64 and np.isnan(frame["age"][1])
    assert frame["rooms"].dtype == np.int64
    assert frame["city"].dtype == object and frame["owner"].dtype == object
    assert frame["city"][1] is np.nan


def test_frame_uses_float_for_a_long_column_with_missing_values() -> None:
    column = InputColumn("count", "long", required=False)
    frame = to_frame([column], [{"count": 2}, {"count": None}])
    assert frame["count"].dtype == np.float64
    assert frame["count"].tolist()[0] == 2.0


def test_classifier_predictions_equal_sklearn_predict_and_predict_proba(
    store: TinyStore, load: Any
) -> None:
    loaded = load("models:/iris/Production")
    rows = store.models["iris"].features.iloc[[0, 60, 120, 140]]
    predictions = predict(loaded, rows.to_dict(orient="records"))
    expected_labels = loaded.estimator.predict(rows)
    expected_proba = loaded.estimator.predict_proba(rows)
    assert all(isinstance(p, ClassPrediction) for p in predictions)
    assert [p.label for p in predictions] == expected_labels.tolist()
    for prediction, proba in zip(predictions, expected_proba, strict=True):
        assert type(prediction.label) is str
        assert prediction.probabilities is not None
        assert list(prediction.probabilities) == list(loaded.classes)
        assert list(prediction.probabilities.values()) == pytest.approx(proba.tolist())
        assert prediction.confidence == pytest.approx(proba.max())


def test_labels_and_probabilities_of_a_frame_equal_sklearn_with_one_preprocessing_pass(
    store: TinyStore, load: Any
) -> None:
    loaded = load("models:/iris/Production")  # a Pipeline: ColumnTransformer + logistic
    frame = store.models["iris"].features.iloc[::3].reset_index(drop=True)
    predictions = predict_frame(loaded, frame, proba=True)
    assert predictions.outputs.tolist() == loaded.estimator.predict(frame).tolist()
    assert predictions.probabilities is not None
    assert np.array_equal(predictions.probabilities, loaded.estimator.predict_proba(frame))
    labels_only = predict_frame(loaded, frame, proba=False)
    assert labels_only.probabilities is None
    assert labels_only.outputs.tolist() == predictions.outputs.tolist()


@pytest.mark.parametrize("rows", [[0], [0, 60, 120, 140], list(range(0, 150, 2))])
def test_models_with_only_double_inputs_answer_through_the_numpy_replay_to_the_bit(
    store: TinyStore, load: Any, rows: list[int]
) -> None:
    for uri, name in (
        ("models:/iris/Production", "iris"),
        ("models:/diabetes/Production", "diabetes"),
    ):
        loaded = load(uri)
        assert loaded.fast is not None  # so the replay is what answers here
        records = store.models[name].features.iloc[rows].to_dict(orient="records")
        frame = to_frame(loaded.columns, records)
        predictions = predict_frame(loaded, frame, proba=True)
        if loaded.task == "regression":
            expected = loaded.estimator.predict(frame)
            assert predictions.outputs.tobytes() == expected.tobytes()
            answered = inference.predict_rows(loaded, records)  # matrix to replay, no frame
            assert [row["value"] for row in answered] == expected.tolist()
            continue
        assert predictions.probabilities is not None
        expected = loaded.estimator.predict_proba(frame)
        assert predictions.probabilities.tobytes() == expected.tobytes()
        assert predictions.outputs.tolist() == loaded.estimator.predict(frame).tolist()
        answered = inference.predict_rows(loaded, records)  # matrix to replay, no frame
        assert [list(row["probabilities"].values()) for row in answered] == expected.tolist()


def test_a_model_with_text_inputs_has_no_numpy_replay(load: Any) -> None:
    assert load("models:/mixed/Production").fast is None


def test_classifier_without_predict_proba_returns_label_only(store: TinyStore, load: Any) -> None:
    loaded = load("models:/iris@challenger")
    rows = store.models["iris_svc"].features.iloc[[0, 75]]
    predictions = predict(loaded, rows.to_dict(orient="records"))
    assert [p.label for p in predictions] == loaded.estimator.predict(rows).tolist()
    assert all(p.confidence is None and p.probabilities is None for p in predictions)


def test_regressor_predictions_equal_sklearn_predict(store: TinyStore, load: Any) -> None:
    loaded = load("models:/diabetes/Production")
    rows = store.models["diabetes"].features.iloc[:5]
    predictions = predict(loaded, rows.to_dict(orient="records"))
    assert all(isinstance(p, RegressionPrediction) for p in predictions)
    expected = loaded.estimator.predict(rows)
    assert [p.value for p in predictions] == pytest.approx(expected.tolist())


def test_mixed_model_handles_missing_optional_values_like_training(
    store: TinyStore, load: Any
) -> None:
    loaded = load("models:/mixed/Production")
    training = store.models["mixed"].features
    rows = training.iloc[[3, 5, 6]]
    records = [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
        for r in rows.to_dict(orient="records")
    ]
    validated, _ = parse_request(build_request_models(loaded.columns), {"records": records})
    predictions = predict(loaded, validated)
    assert [p.label for p in predictions] == loaded.estimator.predict(rows).tolist()
    assert all(type(p.label) is int for p in predictions)
    assert all(set(p.probabilities or {}) == {"0", "1"} for p in predictions)
