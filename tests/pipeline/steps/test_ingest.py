"""Data layer: every contract violation is one clear error naming the column and the count."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pipeline.config import load_config
from pipeline.errors import DataValidationError
from pipeline.steps import features, ingest
from tests.pipeline.factories import shipped_config

GOOD_CSV = """age,income,city,bought
31,52000,paris,yes
45,,lyon,no
27,38000,,yes
52,61000,paris,no
38,47000,lyon,yes
29,41000,nice,no
"""


@pytest.fixture
def csv_config(
    write_config: Callable[..., Path], iris_config: Callable[..., dict[str, Any]]
) -> Callable[..., Path]:
    def make(csv_text: str, **data: Any) -> Path:
        config = iris_config(
            data={"target": "bought", **data},
            split={"test_size": 0.34, "seed": 1, "stratify": False, "cv_folds": 2},
        )
        return write_config(config, csv_text=csv_text)

    return make


def _refused(path: Path) -> str:
    with pytest.raises(DataValidationError) as caught:
        ingest.run(load_config(path))
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_bundled_iris_loads_with_real_label_names_and_snake_case_columns() -> None:
    dataset = ingest.run(shipped_config("iris"))
    assert dataset.rows == 150
    assert set(dataset.y.unique()) == {"setosa", "versicolor", "virginica"}
    assert "sepal_length_cm" in dataset.numeric_features


def test_features_are_inferred_from_dtypes_when_not_listed(csv_config: Callable[..., Path]) -> None:
    dataset = ingest.run(load_config(csv_config(GOOD_CSV)))
    assert dataset.numeric_features == ("age", "income")
    assert dataset.categorical_features == ("city",)
    city = dataset.frame["city"]
    assert isinstance(city.dtype, pd.CategoricalDtype)
    assert city.cat.categories.tolist() == ["lyon", "nice", "paris"]
    assert city.tolist() == ["paris", "lyon", np.nan, "paris", "lyon", "nice"]
    assert np.isnan(dataset.frame["city"].iloc[2])


def test_the_shipped_csv_has_categorical_columns_and_gaps() -> None:
    dataset = ingest.run(shipped_config("customers"))
    assert dataset.categorical_features == ("contract", "payment_method", "senior")
    assert dataset.frame["payment_method"].isna().sum() > 0
    assert dataset.frame["monthly_charges"].isna().sum() > 0


def test_the_data_hash_covers_every_value(csv_config: Callable[..., Path]) -> None:
    first = ingest.run(load_config(csv_config(GOOD_CSV))).data_hash
    again = ingest.run(load_config(csv_config(GOOD_CSV))).data_hash
    changed = ingest.run(load_config(csv_config(GOOD_CSV.replace("29,41000", "29,41001"))))
    assert first == again
    assert changed.data_hash != first


def test_a_missing_target_column_is_named(csv_config: Callable[..., Path]) -> None:
    message = _refused(csv_config(GOOD_CSV.replace("bought", "purchased")))
    assert "target column 'bought' not found" in message
    assert "purchased" in message


def test_missing_target_values_are_counted(csv_config: Callable[..., Path]) -> None:
    text = GOOD_CSV.replace("31,52000,paris,yes", "31,52000,paris,").replace(
        "29,41000,nice,no", "29,41000,nice,"
    )
    message = _refused(csv_config(text))
    assert "target column 'bought' has 2 missing values in 6 rows" in message
    assert "first at row 1" in message


def test_non_numeric_values_in_a_numeric_feature_are_counted(
    csv_config: Callable[..., Path],
) -> None:
    text = GOOD_CSV.replace("45,,lyon", "forty,,lyon")
    path = csv_config(text, features={"numeric": ["age", "income"], "categorical": ["city"]})
    message = _refused(path)
    assert "numeric feature 'age' has 1 non-numeric values in 6 rows" in message
    assert "'forty' at row 2" in message
    assert "declare it categorical" in message


def test_a_declared_column_absent_from_the_file_is_named(csv_config: Callable[..., Path]) -> None:
    path = csv_config(GOOD_CSV, features={"numeric": ["age", "height"]})
    assert "feature column 'height' declared in the config is not in" in _refused(path)


def test_a_header_only_file_is_refused_as_having_no_rows(csv_config: Callable[..., Path]) -> None:
    assert "has no rows" in _refused(csv_config("age,income,city,bought\n"))


def test_an_empty_file_is_refused(csv_config: Callable[..., Path]) -> None:
    assert "is empty" in _refused(csv_config(""))


def test_a_feature_missing_in_every_row_is_named(csv_config: Callable[..., Path]) -> None:
    text = "age,income,note,bought\n" + "".join(
        f"{30 + i},{40000 + i},,{'yes' if i % 2 else 'no'}\n" for i in range(6)
    )
    path = csv_config(text, features={"numeric": ["age", "income"], "categorical": ["note"]})
    assert "feature column 'note' is missing in all 6 rows" in _refused(path)


def test_a_single_class_target_is_refused(csv_config: Callable[..., Path]) -> None:
    text = GOOD_CSV.replace(",no\n", ",yes\n")
    assert "has a single class 'yes' in 6 rows" in _refused(csv_config(text))


def test_a_class_with_one_row_is_refused_when_stratifying(
    write_config: Callable[..., Path], iris_config: Callable[..., dict[str, Any]]
) -> None:
    text = GOOD_CSV.replace("29,41000,nice,no", "29,41000,nice,maybe")
    path = write_config(iris_config(data={"target": "bought"}), csv_text=text)
    assert "classes with a single row (['maybe'])" in _refused(path)


def test_a_non_numeric_regression_target_is_counted(
    write_config: Callable[..., Path],
) -> None:
    config = {
        "experiment": "r",
        "registered_model": "r",
        "task": "regression",
        "data": {"target": "price"},
        "estimator": {"class_path": "sklearn.linear_model.Ridge"},
        "split": {"stratify": False, "cv_folds": 2, "test_size": 0.34},
        "gate": {"metric": "test_rmse"},
    }
    text = "size,price\n10,100\n20,cheap\n30,300\n40,400\n50,500\n60,600\n"
    message = _refused(write_config(config, csv_text=text))
    assert "regression target 'price' has 1 non-numeric values in 6 rows" in message


def test_infinite_feature_values_are_counted(csv_config: Callable[..., Path]) -> None:
    message = _refused(csv_config(GOOD_CSV.replace("52000", "inf").replace("61000", "-inf")))
    assert "numeric feature 'income' has 2 infinite values in 6 rows (first at row 1)" in message


def test_an_undeclared_numeric_column_with_typos_is_refused_not_one_hot_encoded(
    csv_config: Callable[..., Path],
) -> None:
    text = "age,income,city,bought\n" + "".join(
        f"{30 + i},{'abc' if i == 3 else 40000 + i},paris,{'yes' if i % 2 else 'no'}\n"
        for i in range(12)
    )
    message = _refused(csv_config(text))
    assert "column 'income' looks numeric but has 1 non-numeric values in 12 rows" in message
    assert "'abc'" in message


def test_an_undeclared_date_column_in_a_csv_is_refused(csv_config: Callable[..., Path]) -> None:
    text = "age,signed_up,bought\n" + "".join(
        f"{30 + i},2024-01-{i + 1:02d},{'yes' if i % 2 else 'no'}\n" for i in range(6)
    )
    assert "column 'signed_up' holds dates" in _refused(csv_config(text))


def test_categorical_codes_and_booleans_are_spelled_as_a_client_sends_them(
    csv_config: Callable[..., Path],
) -> None:
    text = "zone,member,age,bought\n1,True,30,yes\n,False,40,no\n3,True,50,yes\n2,False,35,no\n"
    path = csv_config(
        text,
        features={"numeric": ["age"], "categorical": ["zone", "member"]},
    )
    frame = ingest.run(load_config(path)).frame
    assert frame["zone"].tolist()[0::2] == ["1", "3"]
    assert frame["member"].tolist() == ["true", "false", "true", "false"]


def test_a_test_size_leaving_too_few_rows_is_refused_before_training(
    write_config: Callable[..., Path], iris_config: Callable[..., dict[str, Any]]
) -> None:
    config = load_config(write_config(iris_config(split={"test_size": 0.01})))
    with pytest.raises(DataValidationError, match=r"split\.test_size 0\.01 gives 2 held-out"):
        features.split(config, ingest.run(config))


def test_more_cv_folds_than_rows_of_a_class_is_refused(
    write_config: Callable[..., Path], iris_config: Callable[..., dict[str, Any]]
) -> None:
    config = load_config(
        write_config(iris_config(split={"test_size": 0.9, "cv_folds": 10, "seed": 1}))
    )
    with pytest.raises(DataValidationError, match=r"split\.cv_folds 10 exceeds the 5 training"):
        features.split(config, ingest.run(config))


def test_columns_the_config_does_not_use_are_not_read(
    csv_config: Callable[..., Path], tmp_path: Path
) -> None:
    declared = {"features": {"numeric": ["age", "income"], "categorical": ["city"]}}
    plain = ingest.run(load_config(csv_config(GOOD_CSV, **declared)))
    frame = pd.read_csv(io.StringIO(GOOD_CSV)).assign(notes=["x", "", "y", "z", "", "w"])
    wider = ingest.run(load_config(csv_config(frame.to_csv(index=False), **declared)))
    # The hash covers the columns read, so an unused column leaves it as it was.
    assert wider.data_hash == plain.data_hash
    assert "notes" not in wider.frame.columns


def test_a_parquet_file_is_read_for_the_used_columns_only(
    write_config: Callable[..., Path], iris_config: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    frame = pd.read_csv(io.StringIO(GOOD_CSV))
    data = {"target": "bought", "features": {"numeric": ["age"], "categorical": ["city"]}}
    hashes = []
    for name, table in (("narrow", frame), ("wide", frame.assign(extra=range(6)))):
        table.to_parquet(tmp_path / f"{name}.parquet")
        config = iris_config(
            data={**data, "path": str(tmp_path / f"{name}.parquet")},
            split={"test_size": 0.34, "seed": 1, "stratify": False, "cv_folds": 2},
        )
        hashes.append(ingest.run(load_config(write_config(config))).data_hash)
    assert hashes[0] == hashes[1]


def test_values_spelled_alike_become_one_category_and_gaps_stay_gaps() -> None:
    column = pd.Series([3, "3", 3.0, None, True, np.nan, "b"], dtype=object, name="zone")
    categories = ingest._as_category_strings(column)
    assert categories.cat.categories.tolist() == ["3", "b", "true"]
    assert categories.tolist() == ["3", "3", "3", np.nan, "true", np.nan, "b"]


def test_accuracy_on_a_rare_class_is_warned_about_naming_better_metrics(
    write_config: Callable[..., Path], iris_config: Callable[..., dict[str, Any]]
) -> None:
    config = load_config(write_config(iris_config(gate={"metric": "test_accuracy"})))
    y = pd.Series(["ok"] * 96 + ["fraud"] * 4)
    warning = ingest.imbalance_warning(config, y)
    assert warning is not None
    assert "'fraud' is 4.0% of the rows" in warning and "accuracy 0.960" in warning
    assert "test_roc_auc" in warning
    assert ingest.imbalance_warning(config, pd.Series(["a", "b"] * 50)) is None


def test_validating_the_data_already_warns_of_accuracy_on_a_rare_class(
    tmp_path: Path,
    write_config: Callable[..., Path],
    iris_config: Callable[..., dict[str, Any]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    csv = tmp_path / "rare.csv"
    rows = [f"{i % 7},{i % 5},{'fraud' if i < 4 else 'ok'}" for i in range(100)]
    csv.write_text("a,b,label\n" + "\n".join(rows) + "\n")
    config = load_config(
        write_config(
            iris_config(
                data={"path": str(csv), "target": "label"}, gate={"metric": "test_accuracy"}
            )
        )
    )
    with caplog.at_level("WARNING", logger="pipeline.steps.ingest"):
        ingest.run(config)
    assert "gate.metric test_accuracy: class 'fraud' is 4.0% of the rows" in caplog.text
