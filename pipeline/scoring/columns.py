"""Input columns against the model signature: what is accepted, what is written, what is said.

Both engines type the features by these rules and word their refusals with these messages, so
the same bad input fails the same way whichever engine reads it.
"""

from __future__ import annotations

import pyarrow as pa

from pipeline.contracts import PROBA_PREFIX
from pipeline.errors import DataValidationError
from pipeline.scoring.model import Feature, FeatureKind, LoadedModel
from pipeline.scoring.source import Source

PREDICTION = "prediction"

# The cells pandas.read_csv reads as missing by default, which is how the training data was
# read (ingest): the same text means "missing" at scoring time, in both engines.
NULL_MARKERS: tuple[str, ...] = (
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
)  # fmt: skip
# Numbers as text: plain decimals, optionally with an exponent. Both engines accept exactly
# this (RE2 in Arrow, java.util.regex in Spark, same meaning for this pattern); each engine's
# own parser is more lenient in different ways (Java takes "1d" and " 1", Arrow neither).
NUMBER_PATTERN = r"\A[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\z"
INTEGER_PATTERN = r"\A[+-]?[0-9]+\z"

ARROW_TYPES: dict[FeatureKind, pa.DataType] = {
    "double": pa.float64(),
    "long": pa.int64(),
    "string": pa.string(),
}
_DESCRIPTIONS: dict[FeatureKind, str] = {
    "double": "numbers",
    "long": "whole numbers",
    "string": "text",
}
_NOT_A: dict[FeatureKind, str] = {
    "double": "non-numeric",
    "long": "non-integer",
    "string": "non-text",
}
_HINTS = {
    "missing": "the model takes this column as integers, which cannot be empty; fill the gaps",
    "infinite": "replace them with numbers or leave the cells empty",
}
_DEFAULT_HINT = "fix them, or leave the cells empty for a missing value"


def check_columns(source: Source, model: LoadedModel) -> None:
    """Refuse, before scoring, an input lacking a required feature or clashing with the output."""
    names = set(source.schema.names)
    missing = [f.name for f in model.features if f.required and f.name not in names]
    if missing:
        raise DataValidationError(
            f"input '{source.path}' lacks the model's input column(s) "
            f"{', '.join(map(repr, missing))}; add them (its columns are: "
            f"{', '.join(source.schema.names)})"
        )
    produced = [PREDICTION, *(f"{PROBA_PREFIX}{c}" for c in model.classes or ())]
    clashing = [c for c in source.schema.names if c in produced]
    if clashing:
        raise DataValidationError(
            f"input '{source.path}' already has the column(s) {', '.join(map(repr, clashing))} "
            "that scoring writes; drop or rename them"
        )
    if source.fmt == "parquet":
        _check_parquet_types(source, model)


def _check_parquet_types(source: Source, model: LoadedModel) -> None:
    # CSV columns are text and typed value by value later; Parquet ones must fit already.
    names = set(source.schema.names)
    for feature in model.features:
        if feature.name in names:
            have = source.schema.field(feature.name).type
            if not _accepts(feature.kind, have):
                raise DataValidationError(
                    f"column '{feature.name}' of '{source.path}' holds {_held(have)} ({have}); "
                    f"the model expects {describe(feature.kind)}: convert the column "
                    "(or export the data as CSV)"
                )


def _is_text(have: pa.DataType) -> bool:
    if pa.types.is_dictionary(have):
        have = have.value_type
    return bool(
        pa.types.is_string(have) or pa.types.is_large_string(have) or pa.types.is_string_view(have)
    )


def _accepts(kind: FeatureKind, have: pa.DataType) -> bool:
    if kind == "double":
        return bool(pa.types.is_integer(have) or pa.types.is_floating(have))
    if kind == "long":
        return bool(pa.types.is_integer(have))
    return _is_text(have)


def _held(have: pa.DataType) -> str:
    if _is_text(have):
        return "text"
    if pa.types.is_dictionary(have):
        have = have.value_type
    if pa.types.is_floating(have):
        return "numbers"
    if pa.types.is_integer(have):
        return "whole numbers"
    return "values of another type"


def describe(kind: FeatureKind) -> str:
    """What a feature kind holds, in the words of an error message."""
    return _DESCRIPTIONS[kind]


def not_a(kind: FeatureKind) -> str:
    """The problem of a value that does not parse as `kind`, e.g. 'non-numeric'."""
    return _NOT_A[kind]


def output_schema(source: Source, model: LoadedModel) -> pa.Schema:
    """Input columns (features as the signature's types), then prediction and probabilities."""
    kinds = {f.name: f.kind for f in model.features}
    fields = [
        pa.field(f.name, ARROW_TYPES[kinds[f.name]]) if f.name in kinds else f
        for f in source.schema
    ]
    if model.classes is None:
        fields.append(pa.field(PREDICTION, pa.float64()))
    else:
        fields.append(pa.field(PREDICTION, pa.string()))
        if model.has_proba:
            fields += [pa.field(f"{PROBA_PREFIX}{c}", pa.float64()) for c in model.classes]
    return pa.schema(fields)


def bad_values_message(
    feature: Feature,
    source: Source,
    problem: str,
    found: str,
    example: object,
    where: str | None,
) -> str:
    """One line naming the column, what is wrong, an example and where, and what to do."""
    hint = _HINTS.get(problem, _DEFAULT_HINT)
    shown = " ".join(
        part
        for part in (
            f"e.g. {example!r}" if example is not None else "",
            f"at {where}" if where else "",
        )
        if part
    )
    return (
        f"column '{feature.name}' of '{source.path}' has {found}"
        + (f" ({shown})" if shown else "")
        + f"; {hint}"
    )
