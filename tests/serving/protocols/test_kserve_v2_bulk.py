"""v2 infer takes the bulk fast path of /predict: column tensors of at least
SERVING_MAX_BATCH_SIZE rows for an all-numeric model become one checked frame and one model
call, with the same answers (and the same errors) as the record way."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from serving.protocols import kserve_v2
from tests.serving.factories import MakeClient, TinyModel, TinyStore

INFER = "/v2/models/gappy/infer"


@pytest.fixture
def pair(
    make_client: MakeClient, store: TinyStore, gappy: TinyModel
) -> tuple[TestClient, TestClient]:
    """The gappy forest twice: bulk from 4 rows, and never bulk (the record way)."""
    uri = "models:/gappy/1"
    return (
        make_client("gappy", store.settings(model_uri=uri, max_batch_size=4)),
        make_client("gappy", store.settings(model_uri=uri, max_batch_size=100_000)),
    )


def _body(rows: Any) -> dict[str, Any]:
    inputs = []
    for name in rows.columns:
        values = [None if isinstance(v, float) and np.isnan(v) else v for v in rows[name].tolist()]
        datatype = "INT64" if rows[name].dtype.kind == "i" else "FP64"
        inputs.append({"name": name, "shape": [len(values)], "datatype": datatype, "data": values})
    return {"inputs": inputs}


def test_a_bulk_v2_request_answers_what_the_record_way_answers(
    pair: tuple[TestClient, TestClient], gappy: TinyModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = gappy.features.iloc[::7].copy()
    rows.loc[rows.index[[1, 3]], "sepal width (cm)"] = np.nan  # optional: imputed
    record_way: list[int] = []
    real = kserve_v2._records_from_columns

    def spy(*args: Any) -> Any:
        record_way.append(1)
        return real(*args)

    monkeypatch.setattr(kserve_v2, "_records_from_columns", spy)
    bulk = pair[0].post(INFER, json=_body(rows))
    assert record_way == []  # one frame, no record per row
    records = pair[1].post(INFER, json=_body(rows))
    assert record_way == [1]
    assert bulk.status_code == records.status_code == 200, bulk.text
    assert bulk.json()["outputs"] == records.json()["outputs"]
    assert bulk.json()["outputs"][0]["data"] == gappy.estimator.predict(rows).tolist()


def test_a_bulk_v2_request_with_a_bad_value_gets_the_record_way_error(
    pair: tuple[TestClient, TestClient], gappy: TinyModel
) -> None:
    body = _body(gappy.features.iloc[:10])
    body["inputs"][0]["data"][5] = None  # 'sepal length (cm)' is required
    bulk, records = (client.post(INFER, json=body) for client in pair)
    assert bulk.status_code == records.status_code == 400, bulk.text
    assert bulk.json() == records.json()
    assert "holds null for required column 'sepal length (cm)'" in bulk.json()["error"]
