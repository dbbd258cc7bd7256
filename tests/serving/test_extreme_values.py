"""Valid JSON with values a model cannot take is the client's problem: a 4xx naming it, never a 500.

Found by review: an integer beyond 64 bits overflowed pandas (500), and finite doubles near
1e308 overflowed the scaler to infinity inside the model (500).
"""

from __future__ import annotations

from typing import Any

from tests.serving.factories import MakeClient

HUGE = 1e308
DIABETES = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
MIXED = {"age": 41.0, "city": "paris", "owner": "yes"}


def _extreme_diabetes() -> dict[str, Any]:
    return {name: (HUGE if name in {"age", "bmi"} else 0.0) for name in DIABETES}


def test_predict_refuses_values_the_model_overflows_on_naming_them(make_client: MakeClient) -> None:
    response = make_client(model_name="diabetes").post("/predict", json=_extreme_diabetes())
    assert response.status_code == 422, response.text
    message = response.json()["error"]["message"]
    assert "overflowed" in message
    assert "'age', 'bmi'" in message


def test_invocations_refuses_values_the_model_overflows_on_with_a_400(
    make_client: MakeClient,
) -> None:
    payload = {
        "dataframe_split": {"columns": DIABETES, "data": [list(_extreme_diabetes().values())]}
    }
    response = make_client(model_name="diabetes").post("/invocations", json=payload)
    assert response.status_code == 400, response.text
    assert response.json()["error_code"] == "BAD_REQUEST"
    assert "overflowed" in response.json()["message"]


def test_v2_infer_refuses_values_the_model_overflows_on_with_a_400(
    make_client: MakeClient,
) -> None:
    inputs = [
        {"name": name, "shape": [1], "datatype": "FP64", "data": [value]}
        for name, value in _extreme_diabetes().items()
    ]
    response = make_client(model_name="diabetes").post(
        "/v2/models/diabetes/infer", json={"inputs": inputs}
    )
    assert response.status_code == 400, response.text
    assert "overflowed" in response.json()["error"]


def test_predict_refuses_an_integer_beyond_64_bits_naming_the_field(
    make_client: MakeClient,
) -> None:
    response = make_client(model_name="mixed").post("/predict", json={**MIXED, "rooms": 2**63})
    assert response.status_code == 422, response.text
    detail = response.json()["error"]["details"][0]
    assert detail["field"] == "rooms"
    assert "out of range for long" in detail["message"]


def test_invocations_refuses_an_integer_beyond_64_bits_naming_the_column(
    make_client: MakeClient,
) -> None:
    payload = {"dataframe_records": [{**MIXED, "rooms": 2**63}]}
    response = make_client(model_name="mixed").post("/invocations", json=payload)
    assert response.status_code == 400, response.text
    assert "'rooms'" in response.json()["message"]
    assert "out of range for long" in response.json()["message"]


def test_a_double_too_large_for_a_float_is_out_of_range_not_the_wrong_type(
    make_client: MakeClient,
) -> None:
    response = make_client(model_name="mixed").post(
        "/predict", json={**MIXED, "rooms": 2, "age": 10**400}
    )
    assert response.status_code == 422, response.text
    detail = response.json()["error"]["details"][0]
    assert detail == {
        "field": "age",
        "message": "'age' is out of range for double: send a smaller value.",
    }
