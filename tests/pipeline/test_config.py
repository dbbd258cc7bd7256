from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import PipelineConfig, load_config
from pipeline.errors import ConfigError
from tests.pipeline.factories import CONFIGS, diabetes_config, shipped_config

SHIPPED_CONFIGS = sorted(CONFIGS.glob("*.yaml"))


def test_the_repository_ships_the_four_documented_configs() -> None:
    names = {path.stem for path in SHIPPED_CONFIGS}
    assert {"iris", "breast_cancer", "diabetes", "customers"} <= names


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_config_loads(path: Path) -> None:
    config = load_config(path)
    assert isinstance(config, PipelineConfig)
    assert config.gate.metric.startswith("test_")


def test_a_csv_config_resolves_its_data_path_against_the_config_file() -> None:
    config = shipped_config("customers")
    assert config.data_path == CONFIGS / "data" / "customers.csv"


def test_config_hash_changes_when_a_hyperparameter_changes(
    write_config: Callable[..., Path], iris_config: Callable[..., dict[str, Any]]
) -> None:
    base = load_config(write_config(iris_config()))
    changed = load_config(
        write_config(
            iris_config(
                estimator={
                    "class_path": "sklearn.linear_model.LogisticRegression",
                    "params": {"max_iter": 500, "C": 0.5},
                }
            )
        )
    )
    assert base.config_hash() != changed.config_hash()
    assert base.config_hash() == load_config(write_config(iris_config())).config_hash()


def _refused(write_config: Callable[..., Path], config: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(config))
    return str(caught.value)


def test_a_missing_config_file_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file '.*nope\.yaml' not found"):
        load_config(tmp_path / "nope.yaml")


def test_invalid_yaml_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("task: [classification\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_an_unknown_top_level_key_is_refused_naming_it(
    write_config: Callable[..., Path], iris_config: Callable[..., dict[str, Any]]
) -> None:
    message = _refused(write_config, {**iris_config(), "estimater": {}})
    assert "unknown key 'estimater'" in message


def test_an_unknown_nested_key_is_refused_with_its_path(
    write_config: Callable[..., Path], iris_config: Callable[..., dict[str, Any]]
) -> None:
    config = iris_config(split={"test_size": 0.3, "sede": 1})
    assert "unknown key 'split.sede'" in _refused(write_config, config)


def test_a_missing_required_key_is_named(
    write_config: Callable[..., Path], iris_config: Callable[..., dict[str, Any]]
) -> None:
    config = iris_config()
    del config["gate"]
    assert "missing required key 'gate'" in _refused(write_config, config)


def test_an_estimator_that_does_not_import_is_refused(
    write_config: Callable[..., Path], iris_config: Callable[..., dict[str, Any]]
) -> None:
    config = iris_config(estimator={"class_path": "sklearn.nonexistent.Forest"})
    message = _refused(write_config, config)
    assert "estimator.class_path 'sklearn.nonexistent.Forest'" in message
    assert "cannot import 'sklearn.nonexistent'" in message


def test_a_class_that_is_not_an_estimator_is_refused(
    write_config: Callable[..., Path], iris_config: Callable[..., dict[str, Any]]
) -> None:
    config = iris_config(estimator={"class_path": "pathlib.Path"})
    assert "'Path' is not a scikit-learn estimator" in _refused(write_config, config)


def test_a_regressor_for_a_classification_task_is_refused(
    write_config: Callable[..., Path], iris_config: Callable[..., dict[str, Any]]
) -> None:
    config = iris_config(estimator={"class_path": "sklearn.linear_model.Ridge"})
    message = _refused(write_config, config)
    assert "'sklearn.linear_model.Ridge' is not a classifier" in message


def test_an_unknown_estimator_parameter_is_refused_naming_it(
    write_config: Callable[..., Path], iris_config: Callable[..., dict[str, Any]]
) -> None:
    config = iris_config(
        estimator={
            "class_path": "sklearn.linear_model.LogisticRegression",
            "params": {"max_iterations": 10},
        }
    )
    message = _refused(write_config, config)
    assert "['max_iterations'] are not parameters of LogisticRegression" in message


def test_an_invalid_estimator_parameter_value_is_refused(
    write_config: Callable[..., Path], iris_config: Callable[..., dict[str, Any]]
) -> None:
    config = iris_config(
        estimator={"class_path": "sklearn.linear_model.LogisticRegression", "params": {"C": -1}}
    )
    message = _refused(write_config, config)
    assert "estimator.params" in message and "'C'" in message


def test_a_metric_that_does_not_fit_the_task_is_refused(
    write_config: Callable[..., Path], iris_config: Callable[..., dict[str, Any]]
) -> None:
    config = iris_config(gate={"metric": "test_rmse", "threshold": 1.0})
    message = _refused(write_config, config)
    assert "gate.metric 'test_rmse' does not fit task 'classification'" in message


def test_a_missing_data_file_is_refused_naming_it(
    write_config: Callable[..., Path], iris_config: Callable[..., dict[str, Any]]
) -> None:
    config = iris_config(data={"path": "absent.csv", "target": "species"})
    assert "data.path 'absent.csv' not found" in _refused(write_config, config)


def test_a_data_section_with_two_sources_is_refused(
    write_config: Callable[..., Path], iris_config: Callable[..., dict[str, Any]]
) -> None:
    config = iris_config(data={"dataset": "iris", "path": "x.csv", "target": "species"})
    assert "exactly one of 'dataset'" in _refused(write_config, config)


def test_an_unknown_bundled_data_set_is_refused(
    write_config: Callable[..., Path], iris_config: Callable[..., dict[str, Any]]
) -> None:
    config = iris_config(data={"dataset": "mnist", "target": "label"})
    assert "unknown scikit-learn data set 'mnist'" in _refused(write_config, config)


def test_a_string_where_a_number_belongs_is_refused_naming_the_key(
    write_config: Callable[..., Path], iris_config: Callable[..., dict[str, Any]]
) -> None:
    config = iris_config(split={"test_size": "a lot"})
    assert "split.test_size" in _refused(write_config, config)


def test_overrides_are_validated_like_the_file(
    write_config: Callable[..., Path], iris_config: Callable[..., dict[str, Any]]
) -> None:
    config = load_config(write_config(iris_config()))
    assert config.with_overrides(**{"split.seed": 7}).split.seed == 7
    with pytest.raises(ConfigError, match=r"split\.test_size"):
        config.with_overrides(**{"split.test_size": 1.5})


def test_a_meta_estimator_needing_arguments_is_refused_naming_the_key(
    write_config: Callable[..., Path], iris_config: Callable[..., dict[str, Any]]
) -> None:
    config = iris_config(estimator={"class_path": "sklearn.pipeline.Pipeline"})
    message = _refused(write_config, config)
    assert "estimator.class_path 'sklearn.pipeline.Pipeline' cannot be built" in message


def test_a_probability_metric_for_an_estimator_without_probabilities_is_refused(
    write_config: Callable[..., Path], iris_config: Callable[..., dict[str, Any]]
) -> None:
    config = iris_config(
        estimator={"class_path": "sklearn.svm.LinearSVC"},
        gate={"metric": "test_log_loss"},
    )
    message = _refused(write_config, config)
    assert "gate.metric 'test_log_loss' needs class probabilities" in message


def test_stratifying_a_regression_split_is_refused(write_config: Callable[..., Path]) -> None:
    config = diabetes_config(split={"stratify": True})
    assert "split.stratify: true only applies to classification" in _refused(write_config, config)


def test_a_negative_seed_is_refused_naming_the_key(
    write_config: Callable[..., Path], iris_config: Callable[..., dict[str, Any]]
) -> None:
    assert "split.seed" in _refused(write_config, iris_config(split={"seed": -1}))


_DUPLICATED_GATE = """\
experiment: iris-test
registered_model: iris-test
task: classification
data: {dataset: iris, target: species}
estimator:
  class_path: sklearn.linear_model.LogisticRegression
gate:
  metric: test_accuracy
  threshold: 0.8
  metric: test_f1_macro
"""


def test_a_key_given_twice_in_a_section_is_refused_naming_it_the_file_and_both_lines(
    tmp_path: Path,
) -> None:
    path = tmp_path / "twice.yaml"
    path.write_text(_DUPLICATED_GATE)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == (
        f"config key 'gate.metric' appears twice in {path} (lines 8 and 10); keep one"
    )


def test_a_top_level_section_given_twice_is_refused_rather_than_replaced(tmp_path: Path) -> None:
    path = tmp_path / "two_gates.yaml"
    path.write_text(_DUPLICATED_GATE.replace("  metric: test_f1_macro\n", "") + "gate: {}\n")
    with pytest.raises(ConfigError, match=r"config key 'gate' appears twice .*\(lines 7 and 10\)"):
        load_config(path)


def test_a_duplicate_key_deep_in_a_flow_mapping_is_refused_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    gate = "  bootstrap: {resamples: 200, seed: 1, seed: 2}\n"
    path.write_text(_DUPLICATED_GATE.replace("  metric: test_f1_macro\n", gate))
    with pytest.raises(
        ConfigError, match=r"'gate\.bootstrap\.seed' appears twice .*lines 10 and 10"
    ):
        load_config(path)


def test_equal_keys_in_different_sections_are_not_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "same_names.yaml"
    path.write_text(
        _DUPLICATED_GATE.replace("  metric: test_f1_macro\n", "")
        + "split: {seed: 3}\nsearch: {strategy: grid, seed: 3, space: {C: [0.1, 1.0]}}\n"
    )
    config = load_config(path)
    assert (config.split.seed, config.search and config.search.seed) == (3, 3)


def test_schema_changes_are_refused_by_the_gate_unless_the_config_allows_them(
    write_config: Callable[..., Path], iris_config: Callable[..., dict[str, Any]]
) -> None:
    assert load_config(write_config(iris_config())).gate.allow_schema_change is False
    gate = {"metric": "test_f1_macro", "allow_schema_change": True}
    assert load_config(write_config(iris_config(gate=gate))).gate.allow_schema_change is True
    assert "gate.allow_schema_change" in _refused(
        write_config, iris_config(gate={**gate, "allow_schema_change": "yes please"})
    )


def test_a_decision_threshold_for_a_regression_is_refused(
    write_config: Callable[..., Path],
) -> None:
    path = write_config(diabetes_config(decision_threshold={"optimize": "f1"}))
    with pytest.raises(ConfigError, match="decision_threshold applies to classification only"):
        load_config(path)


def test_a_decision_threshold_with_a_search_is_refused_saying_why(
    write_config: Callable[..., Path], iris_config: Callable[..., dict[str, Any]]
) -> None:
    search = {"strategy": "grid", "space": {"C": [0.1, 1.0]}}
    path = write_config(iris_config(decision_threshold={"optimize": "f1"}, search=search))
    with pytest.raises(ConfigError, match="decision_threshold and search cannot be combined"):
        load_config(path)


def test_an_unknown_threshold_objective_is_refused_naming_the_key(
    write_config: Callable[..., Path], iris_config: Callable[..., dict[str, Any]]
) -> None:
    path = write_config(iris_config(decision_threshold={"optimize": "auc"}))
    with pytest.raises(ConfigError, match=r"decision_threshold\.optimize"):
        load_config(path)


def test_challengers_must_show_a_significant_gain_and_beat_the_baseline_by_default(
    write_config: Callable[..., Path], iris_config: Callable[..., dict[str, Any]]
) -> None:
    gate = load_config(write_config(iris_config())).gate
    assert gate.require_significant_gain and gate.beat_baseline


def test_live_judging_is_off_by_default_and_waits_for_200_labelled_shared_requests(
    write_config: Callable[..., Path], iris_config: Callable[..., dict[str, Any]]
) -> None:
    gate = load_config(write_config(iris_config())).gate
    assert (gate.live, gate.live_min_labels) == (False, 200)


def test_too_few_live_labels_to_judge_on_are_refused_naming_the_key_and_the_minimum(
    write_config: Callable[..., Path], iris_config: Callable[..., dict[str, Any]]
) -> None:
    gate = {"metric": "test_accuracy", "live": True, "live_min_labels": 5}
    message = _refused(write_config, iris_config(gate=gate))
    assert "gate.live_min_labels" in message and "greater than or equal to 10" in message


def test_live_as_text_is_refused_naming_the_key(
    write_config: Callable[..., Path], iris_config: Callable[..., dict[str, Any]]
) -> None:
    message = _refused(write_config, iris_config(gate={"metric": "test_accuracy", "live": "yes"}))
    assert "gate.live" in message
