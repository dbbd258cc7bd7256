"""Schema guard: a candidate whose inputs break Production's clients is named and refused."""

from __future__ import annotations

import logging
import warnings

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient
from mlflow.types.schema import ColSpec, Schema, TensorSpec
from sklearn.linear_model import LogisticRegression

from pipeline.errors import RegistryError
from pipeline.registry import schema
from pipeline.registry.schema import SchemaChangeError


def _schema(*columns: tuple[str, str] | tuple[str, str, bool]) -> Schema:
    return Schema([ColSpec(c[1], c[0], required=c[2] if len(c) > 2 else True) for c in columns])


COLUMNS: tuple[tuple[str, str, bool], ...] = (
    ("age", "long", True),
    ("income", "double", True),
    ("city", "string", False),
)
PRODUCTION = _schema(*COLUMNS)


def _breaking(current: Schema | None, candidate: Schema | None) -> list[str]:
    return [change.description for change in schema.compare(current, candidate).breaking]


def test_identical_inputs_are_compatible_with_no_changes() -> None:
    comparison = schema.compare(PRODUCTION, PRODUCTION)
    assert comparison.compatible and comparison.changes == () and comparison.describe() == ""


def test_a_different_column_order_is_compatible() -> None:
    reordered = _schema(("city", "string", False), ("income", "double"), ("age", "long"))
    assert schema.compare(PRODUCTION, reordered).changes == ()


def test_a_removed_column_is_breaking_and_named_with_its_type() -> None:
    candidate = _schema(("age", "long"), ("city", "string", False))
    assert _breaking(PRODUCTION, candidate) == [
        "column 'income' (double, required) was removed, so requests that send it would be refused"
    ]


def test_an_added_required_column_is_breaking() -> None:
    candidate = _schema(*COLUMNS, ("x", "double"))
    assert _breaking(PRODUCTION, candidate) == [
        "required column 'x' (double) was added, so requests without it would be refused"
    ]


def test_an_added_optional_column_is_a_compatible_note() -> None:
    candidate = _schema(*COLUMNS, ("x", "double", False))
    comparison = schema.compare(PRODUCTION, candidate)
    assert comparison.compatible
    assert [c.description for c in comparison.changes] == ["optional column 'x' (double) was added"]


def test_an_optional_column_made_required_is_breaking() -> None:
    candidate = _schema(("age", "long"), ("income", "double"), ("city", "string"))
    assert _breaking(PRODUCTION, candidate) == [
        "column 'city' became required, so requests without it would be refused"
    ]


def test_a_required_column_made_optional_is_compatible() -> None:
    candidate = _schema(("age", "long", False), ("income", "double"), ("city", "string", False))
    comparison = schema.compare(PRODUCTION, candidate)
    assert comparison.compatible
    assert [c.description for c in comparison.changes] == ["column 'age' became optional"]


def test_a_number_retyped_as_a_string_is_breaking() -> None:
    candidate = _schema(("age", "long"), ("income", "string"), ("city", "string", False))
    assert _breaking(PRODUCTION, candidate) == [
        "column 'income' changed type from double to string, "
        "so requests sending a number would be refused"
    ]


def test_a_double_retyped_as_an_integer_is_breaking_because_fractions_are_refused() -> None:
    candidate = _schema(("age", "long"), ("income", "long"), ("city", "string", False))
    assert _breaking(PRODUCTION, candidate) == [
        "column 'income' changed type from double to long, "
        "so requests with fractional values such as 1.5 would be refused"
    ]


def test_a_narrower_integer_is_breaking() -> None:
    candidate = _schema(("age", "integer"), ("income", "double"), ("city", "string", False))
    assert _breaking(PRODUCTION, candidate) == [
        "column 'age' changed type from long to integer, so values beyond 31 bits would be refused"
    ]


@pytest.mark.parametrize(
    ("old", "new"),
    [("integer", "long"), ("long", "double"), ("integer", "float"), ("double", "float")],
)
def test_a_widening_type_change_is_compatible(old: str, new: str) -> None:
    comparison = schema.compare(_schema(("x", old)), _schema(("x", new)))
    assert comparison.compatible
    assert [c.description for c in comparison.changes] == [
        f"column 'x' changed type from {old} to {new}, which accepts it"
    ]


def test_every_breaking_difference_is_listed_in_one_line_before_the_notes() -> None:
    candidate = _schema(
        ("age", "double"), ("city", "string"), ("new", "long", False), ("z", "boolean")
    )
    comparison = schema.compare(PRODUCTION, candidate)
    assert [c.column for c in comparison.breaking] == ["city", "income", "z"]
    assert [c.breaking for c in comparison.changes] == [True, True, True, False, False]
    assert comparison.describe().count("; ") == 2
    assert "column 'income' (double, required) was removed" in comparison.describe()


def test_without_a_production_signature_there_is_nothing_to_break() -> None:
    assert schema.compare(None, PRODUCTION).compatible
    tensor = Schema([TensorSpec(type=np.dtype("float64"), shape=(-1, 4))])
    assert schema.compare(tensor, PRODUCTION).compatible


def test_a_candidate_without_input_columns_is_breaking() -> None:
    assert _breaking(PRODUCTION, None) == [
        "the candidate declares no input columns, Production declares 'age', 'income', 'city'"
    ]


# --- against a real registry ------------------------------------------------------------------

NAME = "schema-test"


def _register(frame: pd.DataFrame) -> str:
    """Log a tiny real model with the signature of `frame` and register it; its version."""
    target = [0, 1] * (len(frame) // 2)
    model = LogisticRegression().fit(frame, target)
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=infer_signature(frame, model.predict(frame)),
            serialization_format="skops",
            pip_requirements=[],
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        version = mlflow.register_model(info.model_uri, NAME)
    return str(version.version)


@pytest.fixture
def production_and_candidate(mlflow_store: str) -> tuple[str, str]:
    """Version 1 (in Production) takes a, b; version 2 takes a and a new required column c."""
    old = _register(pd.DataFrame({"a": [0.0, 1.0, 2.0, 3.0], "b": [1.0, 0.0, 1.0, 0.0]}))
    new = _register(pd.DataFrame({"a": [0.0, 1.0, 2.0, 3.0], "c": [1.0, 0.0, 1.0, 0.0]}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        MlflowClient().transition_model_version_stage(NAME, old, "Production")
    return old, new


def test_promoting_a_version_with_other_columns_is_refused_listing_them_and_the_override(
    production_and_candidate: tuple[str, str],
) -> None:
    old, new = production_and_candidate
    with pytest.raises(SchemaChangeError) as caught:
        schema.check_promotion(MlflowClient(), NAME, new)
    assert isinstance(caught.value, RegistryError)
    assert str(caught.value) == (
        f"version {new} of '{NAME}' would break clients of Production version {old}: "
        "column 'b' (double, required) was removed, so requests that send it would be refused; "
        "required column 'c' (double) was added, so requests without it would be refused; "
        "update the clients first, then promote with --allow-schema-change "
        "(the gate: set gate.allow_schema_change: true)"
    )


def test_an_allowed_schema_change_passes_with_a_warning(
    production_and_candidate: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    _, new = production_and_candidate
    with caplog.at_level(logging.WARNING, logger="pipeline.registry.schema"):
        comparison = schema.check_promotion(MlflowClient(), NAME, new, allow_schema_change=True)
    assert comparison is not None and not comparison.compatible
    assert "(allowed): column 'b' (double, required) was removed" in caplog.text


def test_the_guard_passes_when_there_is_no_production_version(
    production_and_candidate: tuple[str, str],
) -> None:
    _, new = production_and_candidate
    assert schema.check(MlflowClient(), NAME, new, None) is None


def test_a_version_with_the_same_columns_passes(production_and_candidate: tuple[str, str]) -> None:
    old, _ = production_and_candidate
    copy = MlflowClient().create_model_version(NAME, f"models:/{NAME}/{old}")
    comparison = schema.check_promotion(MlflowClient(), NAME, str(copy.version))
    assert comparison is not None and comparison.changes == ()


def test_an_unknown_version_is_refused_naming_it(production_and_candidate: tuple[str, str]) -> None:
    old, _ = production_and_candidate
    with pytest.raises(
        RegistryError, match=f"cannot read the input signature of version 9 of '{NAME}'"
    ):
        schema.check(MlflowClient(), NAME, "9", old)


def test_the_gate_gets_the_same_refusal_as_its_reason_unless_the_config_allows_it(
    production_and_candidate: tuple[str, str],
) -> None:
    old, new = production_and_candidate
    client = MlflowClient()
    reason = schema.gate_rejection(client, NAME, new, old, allow_schema_change=False)
    assert reason is not None and reason.startswith(
        f"version {new} of '{NAME}' would break clients of Production version {old}: "
        "column 'b' (double, required) was removed"
    )
    assert schema.gate_rejection(client, NAME, new, old, allow_schema_change=True) is None
    assert schema.gate_rejection(client, NAME, new, None, allow_schema_change=False) is None
