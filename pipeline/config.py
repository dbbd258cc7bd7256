"""Pipeline configuration: YAML validated once, at the edge, into strict frozen models.

Everything downstream receives a `PipelineConfig` and never re-reads YAML, so an unknown key,
a missing data file, an estimator that does not import or a metric that does not fit the task
is refused here, before any run is started or any model is registered.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from pipeline import metrics
from pipeline.errors import ConfigError
from pipeline.metrics import Task

# Monitoring's settings live with monitoring (pipeline/monitoring/config.py).
from pipeline.monitoring.config import MonitoringConfig

if TYPE_CHECKING:
    # The CLI imports this module: scikit-learn is imported by the validators that need it.
    from sklearn.base import BaseEstimator

SKLEARN_DATASETS: dict[str, Task] = {
    "iris": "classification",
    "wine": "classification",
    "breast_cancer": "classification",
    "diabetes": "regression",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class FeaturesConfig(_Strict):
    """Feature columns by kind; a kind left out is inferred from the column dtypes."""

    numeric: list[str] | None = None
    categorical: list[str] | None = None


class DataConfig(_Strict):
    """Where the data comes from: a bundled scikit-learn data set or a CSV/Parquet file."""

    dataset: str | None = Field(default=None, description="scikit-learn bundled data set name")
    path: str | None = Field(default=None, description="CSV or Parquet, relative to the config")
    target: str
    features: FeaturesConfig = FeaturesConfig()
    positive_class: str | int | bool | None = Field(
        default=None,
        description=(
            "binary classification: the class precision, recall, average precision, Brier "
            "score and threshold tuning are about; default: the second of the sorted classes"
        ),
    )

    @model_validator(mode="after")
    def _exactly_one_source(self) -> DataConfig:
        if (self.dataset is None) == (self.path is None):
            raise ValueError("give exactly one of 'dataset' (a scikit-learn data set) or 'path'")
        if self.dataset is not None and self.dataset not in SKLEARN_DATASETS:
            raise ValueError(
                f"unknown scikit-learn data set '{self.dataset}'; "
                f"choose one of {', '.join(sorted(SKLEARN_DATASETS))}"
            )
        if self.path is not None and Path(self.path).suffix.lower() not in {
            ".csv",
            ".parquet",
            ".pq",
        }:
            raise ValueError(f"data file '{self.path}' must end in .csv or .parquet")
        both = set(self.features.numeric or ()) & set(self.features.categorical or ())
        if both:
            raise ValueError(f"columns {sorted(both)} are declared both numeric and categorical")
        if self.target in set(self.features.numeric or ()) | set(self.features.categorical or ()):
            raise ValueError(f"target '{self.target}' is also listed as a feature")
        return self


class PreprocessingConfig(_Strict):
    """How raw columns become the estimator's input.

    ``kind: auto`` picks by estimator: tree models (``sklearn.ensemble``, ``sklearn.tree``)
    get ``tree``: no scaling, categories as ordinal codes, and for ``HistGradientBoosting*``
    native missing values and native categorical splits. Everything else gets ``linear``:
    imputation, scaling and one-hot encoding, which linear and distance-based models need.
    """

    kind: Literal["auto", "linear", "tree"] = "auto"
    numeric_imputation: Literal["mean", "median", "most_frequent", "constant"] = "median"
    categorical_imputation: Literal["most_frequent", "constant"] = "constant"
    scaling: Literal["standard", "minmax", "robust", "none"] = "standard"
    one_hot_max_categories: int | None = Field(default=None, ge=2)


class EstimatorConfig(_Strict):
    """Any scikit-learn compatible estimator by import path, with its constructor parameters."""

    class_path: str
    params: dict[str, Any] = Field(default_factory=dict)

    def build(self) -> BaseEstimator:
        estimator_class = _import_estimator(self.class_path)
        return estimator_class(**self.params)


class SplitConfig(_Strict):
    test_size: float = Field(default=0.2, gt=0.0, lt=1.0)
    seed: int = Field(default=42, ge=0, le=2**32 - 1)
    stratify: bool | None = Field(
        default=None, description="keep class shares in both parts; default: yes for classification"
    )
    cv_folds: int = Field(default=5, ge=2, le=20)
    recent_rows: int = Field(
        default=0,
        ge=0,
        description=(
            "the last N rows of the data are recent (retrain sets it for labelled production "
            "rows): they are split apart, so test_size of them is held out and the gate also "
            "judges on current data"
        ),
    )


class BootstrapConfig(_Strict):
    """Paired bootstrap of the challenger-minus-champion gain on the shared held-out rows."""

    resamples: int = Field(default=1000, ge=100, le=100_000)
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    seed: int = Field(default=0, ge=0, le=2**32 - 1)


class GateConfig(_Strict):
    """When a candidate may replace the champion in Production."""

    metric: str
    threshold: float | None = Field(
        default=None, description="absolute bar the candidate must reach"
    )
    min_improvement: float = Field(
        default=0.0, ge=0.0, description="gain over the champion required to replace it"
    )
    # On by default: a gain whose interval includes 0 is as likely noise as improvement, and
    # replacing a working champion on noise costs a deployment and gains nothing.
    require_significant_gain: bool = Field(
        default=True,
        description="also require the lower confidence bound of the gain to be above 0",
    )
    beat_baseline: bool = Field(
        default=True,
        description=(
            "require the lower confidence bound of the gain over a trivial baseline (prior or "
            "majority class, mean) to be above 0, also for the first model"
        ),
    )
    bootstrap: BootstrapConfig = BootstrapConfig()
    live: bool = Field(
        default=False,
        description=(
            "send a candidate that passes to Staging (alias challenger) to be judged on live "
            "traffic by live-gate, instead of straight to Production"
        ),
    )
    live_min_labels: int = Field(
        default=200,
        ge=10,
        description="labelled requests both versions answered before live-gate decides",
    )
    allow_schema_change: bool = Field(
        default=False,
        description=(
            "promote a candidate whose input signature breaks requests Production accepts "
            "(a column removed or retyped, a required column added); by default it is rejected"
        ),
    )


class DecisionThresholdConfig(_Strict):
    """Binary classification: tune the probability threshold of the positive class by
    cross-validation on the training rows (scikit-learn's ``TunedThresholdClassifierCV``)."""

    optimize: Literal["f1", "balanced_accuracy", "precision", "recall", "accuracy"] = "f1"
    cv_folds: int | None = Field(default=None, ge=2, le=20, description="default: split.cv_folds")


class SearchRange(_Strict):
    """A numeric range sampled by random search: uniform, or log-uniform with `log: true`."""

    low: float
    high: float
    log: bool = False
    type: Literal["int", "float"] = "float"

    @model_validator(mode="after")
    def _ordered(self) -> SearchRange:
        if not self.low < self.high:
            raise ValueError(f"low {self.low} must be below high {self.high}")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self


class SearchConfig(_Strict):
    """Hyperparameter search over estimator parameters; each trial is a nested MLflow run."""

    strategy: Literal["grid", "random"]
    space: dict[str, list[Any] | SearchRange] = Field(min_length=1)
    trials: int | None = Field(
        default=None, ge=1, le=10_000, description="random: trials to sample; grid: a cap"
    )
    cv_folds: int | None = Field(default=None, ge=2, le=20, description="default: split.cv_folds")
    scoring: str | None = Field(
        default=None, description="sklearn scorer name; default: the one matching gate.metric"
    )
    n_jobs: int = Field(default=1, ge=-1, description="parallel trials; -1 = all cores")
    backend: Literal["local", "spark"] = Field(
        default="local",
        description="where trials run: this machine, or Spark (SPARK_MASTER, default local[*])",
    )
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1, description="default: split.seed")

    @model_validator(mode="after")
    def _consistent(self) -> SearchConfig:
        if self.n_jobs == 0:
            raise ValueError("n_jobs must be -1 (all cores) or at least 1")
        for name, values in self.space.items():
            if isinstance(values, list) and not values:
                raise ValueError(f"space.{name} is an empty list; give at least one value")
            if self.strategy == "grid" and isinstance(values, SearchRange):
                raise ValueError(
                    f"space.{name} is a range, which grid search cannot enumerate; "
                    "list the values, or use strategy: random"
                )
        if self.strategy == "random" and self.trials is None:
            raise ValueError("random search needs 'trials' (how many settings to sample)")
        return self


class PipelineConfig(_Strict):
    experiment: str = Field(min_length=1)
    registered_model: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    task: Task
    data: DataConfig
    preprocessing: PreprocessingConfig = PreprocessingConfig()
    estimator: EstimatorConfig
    split: SplitConfig = SplitConfig()
    gate: GateConfig
    search: SearchConfig | None = None
    decision_threshold: DecisionThresholdConfig | None = None
    monitoring: MonitoringConfig = MonitoringConfig()

    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)
    _name: str = PrivateAttr(default="config")

    @model_validator(mode="after")
    def _consistent(self) -> PipelineConfig:
        task_metrics = [m.held_out for m in metrics.for_task(self.task)]
        if self.gate.metric not in task_metrics:
            raise ValueError(
                f"gate.metric '{self.gate.metric}' does not fit task '{self.task}'; "
                f"choose one of {', '.join(task_metrics)}"
            )
        if self.data.dataset is not None and SKLEARN_DATASETS[self.data.dataset] != self.task:
            raise ValueError(
                f"data set '{self.data.dataset}' is a {SKLEARN_DATASETS[self.data.dataset]} "
                f"data set but task is '{self.task}'"
            )
        if self.task == "regression" and self.split.stratify is True:
            raise ValueError(
                "split.stratify: true only applies to classification; "
                "set it to false for a regression task"
            )
        if self.decision_threshold is not None:
            _check_threshold_tuning(self)
        estimator = self.estimator.build()
        _check_estimator_fits(self, estimator)
        if self.search is not None:
            _check_search(self.search, estimator, self.task)
        return self

    @property
    def base_dir(self) -> Path:
        """The config file's directory: relative data paths resolve against it."""
        return self._base_dir

    @property
    def name(self) -> str:
        """The config file's stem (``iris`` for configs/iris.yaml): names runs in the UI."""
        return self._name

    @property
    def search_scoring(self) -> str:
        if self.search is not None and self.search.scoring is not None:
            return self.search.scoring
        return self.gate_metric.scorer

    @property
    def data_path(self) -> Path | None:
        """The data file, resolved against the directory of the config file."""
        if self.data.path is None:
            return None
        return (self._base_dir / self.data.path).resolve()

    @property
    def source_description(self) -> str:
        return f"sklearn:{self.data.dataset}" if self.data.dataset else str(self.data.path)

    @property
    def monitoring_experiment(self) -> str:
        return self.monitoring.experiment or f"{self.experiment}-monitoring"

    @property
    def stratified(self) -> bool:
        return self.task == "classification" and self.split.stratify is not False

    @property
    def gate_metric(self) -> metrics.Metric:
        return metrics.metric(self.gate.metric)

    def gate_lower_is_better(self) -> bool:
        return self.gate_metric.lower_is_better

    def config_hash(self) -> str:
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def with_data_file(self, path: Path, *, name: str, recent_rows: int = 0) -> PipelineConfig:
        """A re-validated copy that trains on the file at `path` instead of the configured data;
        its last `recent_rows` rows are recent ones (``split.recent_rows``)."""
        raw = self.model_dump(mode="python")
        raw["data"].update(path=str(path.resolve()), dataset=None)
        raw["split"]["recent_rows"] = recent_rows
        return _validate(raw, self._base_dir, source=f"data file {path}", name=name)

    def with_overrides(self, **overrides: Any) -> PipelineConfig:
        """A re-validated copy with `section.key` overrides applied (None values are skipped)."""
        raw = self.model_dump(mode="python")
        for dotted, value in overrides.items():
            if value is None:
                continue
            section, key = dotted.split(".", 1)
            raw[section][key] = value
        return _validate(raw, self._base_dir, source=f"overrides {overrides}", name=self._name)


def _check_threshold_tuning(config: PipelineConfig) -> None:
    if config.task != "classification":
        raise ValueError("decision_threshold applies to classification only; remove it")
    if config.search is not None:
        raise ValueError(
            "decision_threshold and search cannot be combined yet: tune the threshold on the "
            "searched estimator's parameters in a second config"
        )
    if not hasattr(config.estimator.build(), "predict_proba"):
        raise ValueError(
            f"decision_threshold needs class probabilities, but "
            f"'{config.estimator.class_path}' has no predict_proba with these parameters"
        )


def _check_estimator_fits(config: PipelineConfig, estimator: BaseEstimator) -> None:
    from sklearn.base import is_classifier, is_regressor

    gate_metric = config.gate_metric
    if gate_metric.needs_proba and not hasattr(estimator, "predict_proba"):
        without = " or ".join(m.held_out for m in metrics.cross_validated(config.task))
        raise ValueError(
            f"gate.metric '{config.gate.metric}' needs class probabilities, but "
            f"'{config.estimator.class_path}' has no predict_proba with these parameters; "
            f"choose {without}, or an estimator with probabilities"
        )
    classification = config.task == "classification"
    if not (is_classifier(estimator) if classification else is_regressor(estimator)):
        raise ValueError(
            f"estimator '{config.estimator.class_path}' is not a "
            f"{'classifier' if classification else 'regressor'}; "
            f"pick an estimator for task '{config.task}'"
        )


def _check_search(search: SearchConfig, estimator: BaseEstimator, task: Task) -> None:
    from sklearn.base import clone

    valid = estimator.get_params()
    unknown = sorted(set(search.space) - set(valid))
    if unknown:
        raise ValueError(
            f"search.space {unknown} are not parameters of {type(estimator).__name__}; "
            f"valid parameters: {', '.join(sorted(valid))}"
        )
    for name, values in search.space.items():
        for value in values if isinstance(values, list) else [values.low, values.high]:
            if isinstance(values, SearchRange) and values.type == "int":
                value = int(value)
            problem = _parameter_problem(clone(estimator).set_params(**{name: value}))
            if problem is not None:
                raise ValueError(f"search.space.{name}: value {value!r}: {problem}")
    if search.scoring is not None:
        scorer_task = metrics.scorer_task(search.scoring)
        if scorer_task is None:
            raise ValueError(
                f"search.scoring '{search.scoring}' is not a scikit-learn scorer; "
                "e.g. accuracy, f1_macro, roc_auc_ovr, neg_root_mean_squared_error, r2"
            )
        if scorer_task != task:
            raise ValueError(
                f"search.scoring '{search.scoring}' is a {scorer_task} scorer but task is '{task}'"
            )


class _DataReached(BaseException):
    """Raised by `_Probe` when `fit` first touches its data: the parameters were accepted.

    A BaseException, so an estimator's own `except Exception` cannot swallow it.
    """


class _Probe:
    """Stands in for X and y: any use of it ends `fit` before any work is done."""

    def __getattr__(self, name: str) -> Any:
        raise _DataReached

    def __len__(self) -> int:
        raise _DataReached

    def __iter__(self) -> Any:
        raise _DataReached

    def __array__(self, *args: Any, **kwargs: Any) -> Any:
        raise _DataReached


def _parameter_problem(estimator: BaseEstimator) -> str | None:
    """Why scikit-learn refuses one of the estimator's parameters, or None if it accepts them.

    scikit-learn has no public call that only validates parameters: `fit` checks each one
    against its constraints first, before it reads the data. Fitting on a probe that stops
    `fit` at the first touch of the data runs that check and no training. Only a parameter
    outside its constraints is refused here; a combination `fit` rejects (a solver that cannot
    fit a penalty) is a failed trial at training time, where search reports it.
    """
    try:
        with warnings.catch_warnings():
            # Deprecation notes about parameters are shown once, when the model is trained.
            warnings.simplefilter("ignore")
            estimator.fit(_Probe(), _Probe())
    except _DataReached:
        return None
    except (ValueError, TypeError) as exc:
        return str(exc) if _is_constraint_error(exc) else None
    except Exception:  # not a parameter error: training reports it with the data
        return None
    return None


def _is_constraint_error(exc: Exception) -> bool:
    # scikit-learn raises its InvalidParameterError for a value outside a parameter's
    # constraints; the class is not exported, but it is a ValueError and a TypeError at once
    # (for backward compatibility), unlike the plain ValueError of an estimator's own checks.
    return isinstance(exc, ValueError) and isinstance(exc, TypeError)


def _import_estimator(class_path: str) -> type[BaseEstimator]:
    from sklearn.base import BaseEstimator

    module_name, _, class_name = class_path.rpartition(".")
    if not module_name:
        raise ValueError(
            f"estimator.class_path '{class_path}' must be a full import path, "
            "e.g. sklearn.linear_model.LogisticRegression"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"estimator.class_path '{class_path}': cannot import '{module_name}'"
        ) from exc
    estimator_class = getattr(module, class_name, None)
    if not isinstance(estimator_class, type) or not issubclass(estimator_class, BaseEstimator):
        raise ValueError(
            f"estimator.class_path '{class_path}': '{class_name}' is not a scikit-learn "
            f"estimator in '{module_name}'"
        )
    return estimator_class


def _check_estimator_params(estimator_config: dict[str, Any]) -> None:
    class_path = estimator_config.get("class_path")
    params = estimator_config.get("params") or {}
    if not isinstance(class_path, str) or not isinstance(params, dict):
        return  # the schema reports the type error itself
    estimator_class = _import_estimator(class_path)
    try:
        valid = set(estimator_class().get_params())
    except TypeError as exc:
        raise ValueError(
            f"estimator.class_path '{class_path}' cannot be built without constructor "
            "arguments (a meta-estimator?); use a plain estimator such as "
            "sklearn.ensemble.RandomForestClassifier"
        ) from exc
    unknown = sorted(set(params) - valid)
    if unknown:
        raise ValueError(
            f"estimator.params {unknown} are not parameters of {estimator_class.__name__}; "
            f"valid parameters: {', '.join(sorted(valid))}"
        )
    problem = _parameter_problem(estimator_class(**params))
    if problem is not None:
        raise ValueError(f"estimator.params: {problem}")


def _format_validation_error(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False):
        location = ".".join(str(part) for part in error["loc"])
        if error["type"] == "extra_forbidden":
            problems.append(f"unknown key '{location}' (check its spelling and indentation)")
        elif error["type"] == "missing":
            problems.append(f"missing required key '{location}'")
        else:
            message = error["msg"].removeprefix("Value error, ")
            problems.append(f"{location}: {message}" if location else message)
    return "; ".join(problems)


def _validate(raw: Any, base_dir: Path, source: str, name: str = "config") -> PipelineConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of keys at the top level")
    try:
        estimator_raw = raw.get("estimator")
        if isinstance(estimator_raw, dict):
            _check_estimator_params(estimator_raw)
        config = PipelineConfig.model_validate(raw)
    except ValueError as exc:
        message = _format_validation_error(exc) if isinstance(exc, ValidationError) else str(exc)
        raise ConfigError(f"{source}: {message}") from exc
    config._base_dir = base_dir
    config._name = name
    if config.data_path is not None and not config.data_path.is_file():
        raise ConfigError(
            f"{source}: data.path '{config.data.path}' not found "
            f"(looked for {config.data_path}; paths are relative to the config file)"
        )
    return config


def config_from_mapping(
    raw: Mapping[str, Any], *, base_dir: str | Path | None, source: str, name: str = "config"
) -> PipelineConfig:
    """Validate a config recorded elsewhere (a run's resolved config) as if loaded from YAML."""
    return _validate(dict(raw), Path(base_dir) if base_dir else Path.cwd(), source, name=name)


def load_config(path: str | Path) -> PipelineConfig:
    """Read and validate a YAML config; every problem is a `ConfigError` naming the key."""
    config_path = Path(path)
    if not config_path.is_file():
        raise ConfigError(f"config file '{path}' not found; pass an existing YAML file")
    try:
        raw = _load_yaml(config_path.read_text(), source=str(path))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}".replace("\n", " ")) from exc
    return _validate(raw, config_path.resolve().parent, source=str(path), name=config_path.stem)


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _load_yaml(text: str, *, source: str) -> Any:
    """`yaml.safe_load`, refusing a key given twice in one mapping.

    PyYAML silently keeps the last of two equal keys, so a second `gate:` section pasted below
    the first would replace it unnoticed. The check runs on the composed node tree, where
    every key still has its line and its place in the document, before any value is built.
    """
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _refuse_duplicate_keys(node, (), source, set())
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _refuse_duplicate_keys(
    node: yaml.Node, path: tuple[str, ...], source: str, visited: set[int]
) -> None:
    if id(node) in visited:  # an alias of a node already checked (or a recursive one)
        return
    visited.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _refuse_duplicate_keys(item, (*path, f"[{index}]"), source, visited)
        return
    if not isinstance(node, yaml.MappingNode):
        return
    lines: dict[tuple[str, str], int] = {}
    for key_node, value_node in node.value:
        if key_node.tag == _MERGE_TAG:
            # Keys merged in with `<<` may be overridden on purpose: only explicit ones count.
            _refuse_duplicate_keys(value_node, path, source, visited)
            continue
        # The resolved tag tells `1` (an int) from `"1"` (a string), as the loaded dict would.
        key = (key_node.tag, str(key_node.value))
        line = key_node.start_mark.line + 1
        if key in lines:
            dotted = ".".join((*path, key[1])).replace(".[", "[")
            raise ConfigError(
                f"config key '{dotted}' appears twice in {source} "
                f"(lines {lines[key]} and {line}); keep one"
            )
        lines[key] = line
        _refuse_duplicate_keys(value_node, (*path, key[1]), source, visited)
