"""Bounded cost per request: rows, columns and a Parquet file's decoded size are checked
before values are parsed, and error bodies list a few problems and count the rest."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from tests.serving.factories import SETOSA, MakeClient

PARQUET = {"content-type": "application/vnd.apache.parquet"}
CSV = {"content-type": "text/csv"}


@pytest.fixture
def small(make_client: MakeClient) -> TestClient:
    """iris with small limits: 50 rows, 6 columns, 20 kB decoded, 3 problems listed."""
    return make_client(
        model_uri="models:/iris/1",
        max_rows=50,
        max_columns=6,
        max_decoded_bytes=20_000,
        max_error_details=3,
    )


def _parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, compression="zstd", index=False)
    return buffer.getvalue()


def _iris_rows(n: int) -> pd.DataFrame:
    return pd.DataFrame({name: np.full(n, value) for name, value in SETOSA.items()})


def test_a_parquet_file_with_too_many_rows_is_refused_from_its_metadata(small: TestClient) -> None:
    body = _parquet(_iris_rows(100_000))  # a few kB of zstd
    response = small.post("/invocations", content=body, headers=PARQUET)
    assert response.status_code == 413, response.text
    assert response.json() == {
        "error_code": "REQUEST_LIMIT_EXCEEDED",
        "message": "The request holds 100000 rows; at most 50 are accepted per request: send "
        "them in several requests (the server's limit is SERVING_MAX_ROWS).",
    }


def test_a_parquet_file_that_decodes_too_large_is_refused_before_decompressing(
    small: TestClient,
) -> None:
    wide = pd.DataFrame({name: ["x" * 1_000] * 40 for name in SETOSA})  # 160 kB decoded
    response = small.post("/invocations", content=_parquet(wide), headers=PARQUET)
    assert response.status_code == 413, response.text
    message = response.json()["message"]
    assert "bytes of data; at most 20000 are accepted" in message
    assert "SERVING_MAX_DECODED_BYTES" in message


def test_a_parquet_file_with_an_unknown_column_is_refused_naming_it(small: TestClient) -> None:
    body = _parquet(_iris_rows(3).assign(colour=1.0))
    response = small.post("/invocations", content=body, headers=PARQUET)
    assert response.status_code == 400, response.text
    assert response.json()["message"].startswith(
        "Invalid input. The Parquet file names unknown column(s) 'colour': remove them"
    )


def test_a_parquet_file_within_the_limits_is_predicted(small: TestClient) -> None:
    response = small.post("/invocations", content=_parquet(_iris_rows(40)), headers=PARQUET)
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": ["setosa"] * 40}


def test_a_csv_body_with_too_many_lines_is_refused_before_parsing(small: TestClient) -> None:
    response = small.post("/invocations", content=_iris_rows(60).to_csv(index=False), headers=CSV)
    assert response.status_code == 413, response.text
    assert "holds 60 rows; at most 50" in response.json()["message"]


def test_json_records_with_many_distinct_keys_are_refused_at_the_first_unknown_one(
    small: TestClient,
) -> None:
    records = [{f"k{i}": 1} for i in range(8_000)]
    response = small.post("/invocations", json={"dataframe_records": records[:40]})
    assert response.status_code == 400, response.text
    assert response.json()["message"].startswith(
        "Invalid input. Record 0 of 'dataframe_records' names unknown column(s) 'k0'"
    )
    split = {"dataframe_split": {"columns": [f"k{i}" for i in range(10)], "data": []}}
    response = small.post("/invocations", json=split)
    assert response.status_code == 413, response.text
    assert "names 10 columns; at most 6" in response.json()["message"]


def test_predict_refuses_more_records_than_the_limit_with_a_413(small: TestClient) -> None:
    response = small.post("/predict", json={"records": [SETOSA] * 51})
    assert response.status_code == 413, response.text
    assert response.json()["error"] == {
        "type": "limit_exceeded",
        "message": "The request holds 51 rows; at most 50 are accepted per request: send them "
        "in several requests (the server's limit is SERVING_MAX_ROWS).",
        "details": [],
    }


@pytest.mark.parametrize(
    "record", [{"x": 1}, {**SETOSA, "sepal width (cm)": "wide"}], ids=["unknown", "mistyped"]
)
def test_predict_lists_the_first_problems_and_counts_the_rest(
    small: TestClient, record: dict[str, Any]
) -> None:
    response = small.post("/predict", json={"records": [record] * 50})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert len(error["details"]) == 3
    assert error["details"][0]["field"].startswith("records[0].")
    per_record = 5 if "x" in record else 1  # 'x' unknown and the 4 inputs missing
    hidden = 50 * per_record - 3
    assert error["message"].endswith(f"({hidden} more problems not listed.)")


def test_feedback_lists_the_first_problems_and_counts_the_rest(small: TestClient) -> None:
    response = small.post("/feedback", json={"labels": [{"request_id": "r", "x": 1}] * 40})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert len(error["details"]) == 3
    assert error["message"].endswith("(77 more problems not listed.)")  # 'x' and 'label' each


def test_v2_refuses_more_tensors_or_rows_than_the_limits_with_a_413(small: TestClient) -> None:
    tensors = [{"name": f"k{i}", "shape": [1], "datatype": "FP64", "data": [1]} for i in range(7)]
    response = small.post("/v2/models/iris/infer", json={"inputs": tensors})
    assert response.status_code == 413, response.text
    assert "names 7 columns; at most 6" in response.json()["error"]
    rows = [
        {"name": name, "shape": [51], "datatype": "FP64", "data": [1.0] * 51} for name in SETOSA
    ]
    response = small.post("/v2/models/iris/infer", json={"inputs": rows})
    assert response.status_code == 413, response.text
    assert "holds 51 rows; at most 50" in response.json()["error"]


def test_a_large_body_is_parsed_off_the_event_loop_with_the_same_answer(
    make_client: MakeClient,
) -> None:
    client = make_client(model_uri="models:/iris/1")
    records = [SETOSA] * 2_000  # about 200 kB: above the 64 kB parsed on the loop
    assert len(json.dumps({"records": records})) > 64 * 1024
    response = client.post("/predict", json={"records": records})
    assert response.status_code == 200, response.text
    assert [p["label"] for p in response.json()["predictions"]] == ["setosa"] * 2_000
    split = {"dataframe_split": {"columns": list(SETOSA), "data": [list(SETOSA.values())] * 3000}}
    response = client.post("/invocations", json=split)
    assert response.status_code == 200, response.text
    assert response.json()["predictions"] == ["setosa"] * 3000
