"""Training-domain flags, vectorised over a frame: the same messages as the contract's own
``InputDomain.warnings`` record by record."""

from __future__ import annotations

import numpy as np
import pandas as pd

from serving.model.domain import flagged_columns, frame_warnings, record_warnings, with_warnings
from tests.serving.domain_factories import MIXED_DOMAIN


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "age": [41.0, 99.0, np.nan, 10.0],
            "rooms": [4, 2, 9, 1],
            "city": pd.Series(["lyon", "rome", np.nan, "paris"], dtype=object),
            "owner": pd.Series(["yes", "no", "yes", "maybe"], dtype=object),
        }
    )


def test_frame_warnings_flag_the_same_values_as_the_contract_record_by_record() -> None:
    frame = _frame()
    records = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
    expected = {
        i: MIXED_DOMAIN.warnings(r) for i, r in enumerate(records) if MIXED_DOMAIN.warnings(r)
    }
    assert frame_warnings(MIXED_DOMAIN, frame) == expected
    assert record_warnings(MIXED_DOMAIN, records) == expected
    assert sorted(expected) == [1, 2, 3]  # row 0 is inside; NaN and None are never flagged


def test_no_domain_flags_nothing() -> None:
    assert frame_warnings(None, _frame()) == {}
    assert record_warnings(None, [{"age": 1e9}]) == {}


def test_warnings_are_added_to_copies_of_the_flagged_rows_only() -> None:
    rows = [{"label": 0}, {"label": 1}]
    flagged = with_warnings(rows, {1: ["age: 99 is outside the training range [20, 60]"]})
    assert flagged == [
        {"label": 0},
        {"label": 1, "warnings": ["age: 99 is outside the training range [20, 60]"]},
    ]
    assert rows == [{"label": 0}, {"label": 1}]
    assert flagged_columns({1: ["age: x", "city: y"], 3: ["age: z"]}) == ["age", "city", "age"]
