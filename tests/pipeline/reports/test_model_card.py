"""Model layer: every registered version gets a card that shows what its run recorded.

One real pipeline run (iris, through flow.run_all) is shared by the module: training it is
the slow part. Cases the run cannot show (a hostile string, missing tags, a search, a
regressor, a confidence interval) use small hand-made runs in the same store, each under its
own registered model so the tests do not see each other.
"""

from __future__ import annotations

import base64
import html
import json
import posixpath
import re
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow.tracking import MlflowClient
from mlflow.tracking._model_registry import utils as registry_utils
from mlflow.tracking._tracking_service import utils as tracking_utils

from pipeline.config import load_config
from pipeline.errors import PipelineError, RegistryError
from pipeline.reports import model_card
from pipeline.steps import flow

IRIS = {
    "experiment": "card-test",
    "registered_model": "card-test",
    "task": "classification",
    "data": {"dataset": "iris", "target": "species"},
    "estimator": {
        "class_path": "sklearn.linear_model.LogisticRegression",
        "params": {"max_iter": 500},
    },
    "split": {"test_size": 0.3, "seed": 42, "stratify": True, "cv_folds": 3},
    "gate": {"metric": "test_f1_macro", "threshold": 0.8},
}
HOSTILE = '<script>alert("card")</script> & <img src=x onerror=alert(1)>'


@dataclass(frozen=True)
class Logged:
    """A version whose card was logged, with the card files read back from the store."""

    name: str
    version: str
    run_id: str
    paths: model_card.ModelCardPaths
    html: str
    markdown: str


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowClient]:
    """A throwaway store for the module (what `mlflow_store` does, once per module)."""
    root = tmp_path_factory.mktemp("model-card-store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.setenv("MLFLOW_REGISTRY_URI", uri)
        patch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        patch.delenv("MLFLOW_RUN_ID", raising=False)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        yield MlflowClient()
        if mlflow.active_run():
            mlflow.end_run()
        tracking_utils._tracking_uri = None
        registry_utils._registry_uri = None


@pytest.fixture(scope="module")
def iris(client: MlflowClient) -> Logged:
    """Version 1 of a real pipeline run on iris, gated, with its card logged."""
    config_path = Path.cwd() / "iris.yaml"
    config_path.write_text(yaml.safe_dump(IRIS, sort_keys=False))
    result = flow.run_all(load_config(config_path))
    return _log_card(client, result.registered.name, result.registered.version)


def _log_card(client: MlflowClient, name: str, version: str) -> Logged:
    paths = model_card.log_model_card(client, name, version)
    return Logged(
        name=name,
        version=version,
        run_id=paths.run_id,
        paths=paths,
        html=_artifact_text(client, paths.run_id, paths.html),
        markdown=_artifact_text(client, paths.run_id, paths.markdown),
    )


def _artifact_text(client: MlflowClient, run_id: str, path: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        return Path(client.download_artifacts(run_id, path, tmp)).read_text(encoding="utf-8")


def _artifact_bytes(client: MlflowClient, run_id: str, path: str) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        return Path(client.download_artifacts(run_id, path, tmp)).read_bytes()


def _hand_made_version(
    client: MlflowClient,
    name: str,
    *,
    tags: Mapping[str, str] | None = None,
    params: Mapping[str, str] | None = None,
    metrics: Mapping[str, float] | None = None,
    version_tags: Mapping[str, str] | None = None,
    artifacts: Mapping[str, bytes] | None = None,
    nested_runs: int = 0,
) -> tuple[str, str]:
    """A registered version of a run holding exactly what is given; returns (version, run id)."""
    experiment = client.get_experiment_by_name("hand-made")
    experiment_id = (
        experiment.experiment_id if experiment else client.create_experiment("hand-made")
    )
    run = client.create_run(experiment_id, tags=dict(tags or {}), run_name=f"{name}-run")
    run_id = run.info.run_id
    for key, value in (params or {}).items():
        client.log_param(run_id, key, value)
    for key, number in (metrics or {}).items():
        client.log_metric(run_id, key, number)
    with tempfile.TemporaryDirectory() as tmp:
        for path, content in (artifacts or {}).items():
            local = Path(tmp) / path
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(content)
            client.log_artifact(run_id, str(local), posixpath.dirname(path) or None)
    for number in range(nested_runs):
        trial = client.create_run(
            experiment_id, tags={"mlflow.parentRunId": run_id, "search.trial": str(number)}
        )
        client.set_terminated(trial.info.run_id)
    client.set_terminated(run_id)
    client.create_registered_model(name)
    version = client.create_model_version(
        name, source=f"{run.info.artifact_uri}/model", run_id=run_id, tags=dict(version_tags or {})
    )
    return str(version.version), run_id


# --- the real pipeline run ---------------------------------------------------------------------


def test_both_card_files_are_logged_on_the_versions_run_and_the_version_points_to_the_html(
    client: MlflowClient, iris: Logged
) -> None:
    listed = {a.path for a in client.list_artifacts(iris.run_id, "model_card/v1")}
    assert listed == {"model_card/v1/model_card.html", "model_card/v1/model_card.md"}
    assert (iris.paths.html, iris.paths.markdown) == tuple(sorted(listed))
    version = client.get_model_version(iris.name, iris.version)
    assert version.run_id == iris.run_id
    assert version.tags["model_card"] == "model_card/v1/model_card.html"
    assert iris.html.startswith("<!DOCTYPE html>")
    assert iris.markdown.startswith("# Model card: card-test version 1")


def test_both_cards_show_every_held_out_and_cv_metric_of_the_run_to_four_decimals(
    client: MlflowClient, iris: Logged
) -> None:
    metrics = client.get_run(iris.run_id).data.metrics
    assert {"test_accuracy", "test_f1_macro", "test_roc_auc", "test_log_loss"} <= set(metrics)
    for name, value in metrics.items():
        assert f"<tr><th>{name}</th><td>{value:.4f}</td></tr>" in iris.html
        assert f"| {name} | {value:.4f} |" in iris.markdown


def test_both_cards_show_the_data_and_lineage_the_run_recorded(
    client: MlflowClient, iris: Logged
) -> None:
    tags = client.get_run(iris.run_id).data.tags
    recorded = [tags["data.hash"], tags["git.commit"], tags["config.hash"], tags["data.source"]]
    columns = json.loads(tags["data.columns"])
    recorded += columns["numeric"]
    for library, version in json.loads(tags["lineage.libraries"]).items():
        recorded += [library, version]
    for label, count in json.loads(tags["data.class_balance"]).items():
        recorded += [label, f"{count} ("]
    for text in (iris.html, iris.markdown):
        for value in recorded:
            assert html.escape(value) in text, value
        assert f"| Rows | {tags['data.rows']} |" in iris.markdown
        assert f"#/experiments/{client.get_run(iris.run_id).info.experiment_id}/runs/" in text
        assert tags["code.hash"] in text
    # The run link is a link a person can click (a local store is browsed with `make ui`).
    link = f"{model_card.LOCAL_UI_URL}/#/experiments/"
    assert f'<a href="{link}' in iris.html
    assert f"MLflow run: <{link}" in iris.markdown


def test_both_cards_show_the_gate_decision_its_reason_and_its_rule(
    client: MlflowClient, iris: Logged
) -> None:
    tags = client.get_model_version(iris.name, iris.version).tags
    assert tags["gate.decision"] == "promoted"
    for text in (iris.html, iris.markdown):
        assert html.escape(tags["gate.reason"], quote=False) in text
        assert html.escape(tags["gate.rule"], quote=False) in text
        assert "none (first model)" in text
    assert '<span class="decision promoted">promoted</span>' in iris.html
    assert "| Decision | promoted |" in iris.markdown


def test_the_html_card_embeds_every_plot_of_the_run_as_a_png_data_uri(
    client: MlflowClient, iris: Logged
) -> None:
    plots = [a.path for a in client.list_artifacts(iris.run_id, "plots")]
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', iris.html)
    order = (
        "plots/confusion_matrix.png",
        "plots/roc_curve.png",
        "plots/precision_recall_curve.png",
        "plots/reliability_curve.png",
        "plots/feature_importance.png",
    )
    assert set(plots) == set(order)
    assert [base64.b64decode(data) for data in embedded] == [
        _artifact_bytes(client, iris.run_id, path) for path in order
    ]


def test_the_markdown_card_links_each_plot_by_a_path_that_resolves_to_the_run_artifact(
    client: MlflowClient, iris: Logged
) -> None:
    links = re.findall(r"!\[([^\]]+)\]\(([^)]+)\)", iris.markdown)
    assert [title for title, _ in links] == [
        "Confusion matrix",
        "ROC curve",
        "Precision-recall curve",
        "Reliability (calibration) curve",
        "Permutation importance",
    ]
    card_dir = posixpath.dirname(iris.paths.markdown)
    resolved = {posixpath.normpath(posixpath.join(card_dir, link)) for _, link in links}
    assert resolved == {a.path for a in client.list_artifacts(iris.run_id, "plots")}


def test_the_card_shows_the_resolved_config_the_run_logged(
    client: MlflowClient, iris: Logged
) -> None:
    logged = _artifact_text(client, iris.run_id, "config/resolved_config.yaml")
    assert f"```yaml\n{logged.rstrip()}\n```" in iris.markdown
    assert f"<pre>{html.escape(logged)}</pre>" in iris.html
    assert yaml.safe_load(logged)["estimator"]["params"] == {"max_iter": 500}


def test_logging_a_card_writes_only_the_card_files_and_the_model_card_tag(
    client: MlflowClient, iris: Logged
) -> None:
    before_run = client.get_run(iris.run_id).data
    before_tags = dict(client.get_model_version(iris.name, iris.version).tags)
    before_artifacts = {a.path for a in client.list_artifacts(iris.run_id)}
    again = _log_card(client, iris.name, iris.version)
    after_run = client.get_run(iris.run_id).data
    assert (after_run.params, after_run.metrics, after_run.tags) == (
        before_run.params,
        before_run.metrics,
        before_run.tags,
    )
    assert dict(client.get_model_version(iris.name, iris.version).tags) == before_tags
    assert {a.path for a in client.list_artifacts(iris.run_id)} == before_artifacts
    assert again.markdown == iris.markdown


# --- hand-made runs for what one real run cannot show ------------------------------------------


def test_recorded_strings_are_escaped_in_the_html_card_and_in_the_markdown(
    client: MlflowClient,
) -> None:
    version, _ = _hand_made_version(
        client,
        "card-hostile",
        tags={"data.source": HOSTILE, "data.class_balance": json.dumps({HOSTILE: 3})},
        params={"estimator": "sklearn.dummy.DummyClassifier", "model.strategy": HOSTILE},
        version_tags={"gate.decision": "rejected", "gate.reason": HOSTILE},
    )
    logged = _log_card(client, "card-hostile", version)
    for text in (logged.html, logged.markdown):
        assert "<script" not in text
        assert "<img src=x" not in text
        assert "&lt;script&gt;alert(" in text
    assert logged.html.count(html.escape(HOSTILE)) == 5
    assert '<span class="decision rejected">rejected</span>' in logged.html


def test_a_version_whose_run_recorded_little_says_not_recorded_instead_of_guessing(
    client: MlflowClient,
) -> None:
    version, _ = _hand_made_version(client, "card-bare", metrics={"test_accuracy": 0.75})
    card = model_card.build_model_card_input(client, "card-bare", version)
    assert card.gate is None
    assert card.plots == ()
    assert card.config_yaml is None
    assert card.lineage.libraries is None
    assert card.data.class_balance is None
    logged = _log_card(client, "card-bare", version)
    for text in (logged.html, logged.markdown):
        assert "No gate decision is recorded for this version." in text
        assert "0.7500" in text
        assert text.count("not recorded") >= 10
    assert "### Class balance\n\nnot recorded." in logged.markdown
    assert "### Library versions\n\nnot recorded." in logged.markdown
    assert "data:image/png" not in logged.html


def test_a_gate_with_a_bootstrap_interval_shows_gain_interval_level_and_resamples(
    client: MlflowClient,
) -> None:
    gate = {
        "gate.decision": "rejected",
        "gate.reason": "test_f1_macro beats champion v1 but the gain is within noise",
        "gate.rule": "the lower 95% confidence bound of the gain must be above 0",
        "gate.metric": "test_f1_macro",
        "gate.candidate_value": "0.93333",
        "gate.champion_version": "1",
        "gate.champion_value": "0.91111",
        "gate.diff": "0.0222222",
        "gate.ci_lower": "-0.0444444",
        "gate.ci_upper": "0.0888889",
        "gate.ci_level": "0.95",
        "gate.resamples": "1000",
        "gate.comparison_rows": "45",
    }
    version, _ = _hand_made_version(client, "card-interval", version_tags=gate)
    logged = _log_card(client, "card-interval", version)
    for text in (logged.html, logged.markdown):
        for shown in ("0.9333", "v1", "0.9111", "0.0222", "[-0.0444, 0.0889]", "95%", "1000"):
            assert shown in text, shown
    assert "| Confidence interval of the gain | [-0.0444, 0.0889] |" in logged.markdown


def test_the_gate_table_shows_every_model_on_the_same_rows_apart_from_own_held_out_scores(
    client: MlflowClient,
) -> None:
    champion_version, _ = _hand_made_version(
        client, "card-rows", version_tags={"test_f1_macro": "0.97777"}
    )
    gate = {
        "gate.decision": "rejected",
        "gate.reason": "test_f1_macro equals champion v1: no improvement",
        "gate.metric": "test_f1_macro",
        "gate.candidate_value": "0.97778",
        "gate.candidate_compared_value": "0.88571",
        "gate.champion_version": champion_version,
        "gate.champion_value": "0.88571",
        "gate.baseline_value": "0.16667",
        "gate.baseline_ci_lower": "0.5",
        "gate.baseline_ci_upper": "0.9",
        "gate.diff": "0",
        "gate.comparison_rows": "11",
    }
    run = client.create_run(client.get_experiment_by_name("hand-made").experiment_id)
    client.set_terminated(run.info.run_id)
    version = client.create_model_version(
        "card-rows", source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id, tags=gate
    ).version
    markdown = _log_card(client, "card-rows", str(version)).markdown
    for row in (
        "| Rows compared (held-out, unseen by every model compared) | 11 |",
        "| This version, on the compared rows | 0.8857 |",
        f"| Champion v{champion_version}, on the compared rows | 0.8857 |",
        "| Trivial baseline, on the compared rows | 0.1667 |",
        "| Gain over the baseline (positive: better), confidence interval | [0.5000, 0.9000] |",
        "| This version, on all its own held-out rows | 0.9778 |",
        f"| Champion v{champion_version}, on its own held-out rows (when trained) | 0.9778 |",
    ):
        assert row in markdown, row


def test_a_searched_version_shows_the_search_and_calls_its_params_the_best_ones(
    client: MlflowClient,
) -> None:
    version, _ = _hand_made_version(
        client,
        "card-search",
        params={
            "search.strategy": "random",
            "search.trials": "3",
            "search.scoring": "f1_macro",
            "search.best_score": "0.961905",
            "search.best_trial": "2",
            "model.C": "0.37",
        },
        nested_runs=3,
    )
    card = model_card.build_model_card_input(client, "card-search", version)
    assert card.search is not None
    assert (card.search.strategy, card.search.trials, card.search.nested_runs) == ("random", 3, 3)
    assert card.search.other == {"search.best_trial": "2"}
    markdown = model_card.render_markdown(card)
    assert "### Best parameters (chosen by the search)" in markdown
    assert "| Best CV score | 0.9619 |" in markdown
    assert "| Nested trial runs | 3 |" in markdown
    assert "| C | 0.37 |" in markdown


def test_a_regressors_card_shows_the_target_summary_residual_plot_and_git_state(
    client: MlflowClient, iris: Logged
) -> None:
    png = _artifact_bytes(client, iris.run_id, "plots/confusion_matrix.png")
    summary = {"mean": 152.133, "std": 77.093, "min": 25.0, "max": 346.0}
    version, _ = _hand_made_version(
        client,
        "card-regression",
        tags={
            "task": "regression",
            "data.target_summary": json.dumps(summary),
            "git.commit": "0123456789abcdef0123456789abcdef01234567",
            "git.dirty": "true",
        },
        metrics={"test_rmse": 53.8532, "test_r2": 0.4526},
        artifacts={"plots/residuals.png": png},
    )
    logged = _log_card(client, "card-regression", version)
    assert "| Statistic | Value |\n| --- | --- |\n| mean | 152.1330 |" in logged.markdown
    assert "![Residuals vs predicted](../../plots/residuals.png)" in logged.markdown
    assert base64.b64encode(png).decode() in logged.html
    assert "| Git commit | 0123456789abcdef0123456789abcdef01234567 |" in logged.markdown
    assert "| Uncommitted changes (git dirty) | true |" in logged.markdown
    for text in (logged.html, logged.markdown):
        assert "Target summary" in text
        assert "53.8532" in text
        assert "Class balance" not in text


# --- refusals --------------------------------------------------------------------------------


def test_a_card_for_an_unknown_version_is_refused_naming_it(
    client: MlflowClient, iris: Logged
) -> None:
    with pytest.raises(RegistryError, match="'card-test' has no version '99'") as caught:
        model_card.log_model_card(client, "card-test", "99")
    assert caught.value.exit_code == 4


def test_a_card_for_a_version_without_a_run_is_refused_and_nothing_is_tagged(
    client: MlflowClient,
) -> None:
    client.create_registered_model("card-no-run")
    version = client.create_model_version("card-no-run", source="file:///nowhere/model")
    with pytest.raises(PipelineError, match="version 1 of 'card-no-run' was registered without"):
        model_card.log_model_card(client, "card-no-run", str(version.version))
    assert "model_card" not in client.get_model_version("card-no-run", "1").tags


def test_a_challenger_judged_on_live_traffic_shows_a_live_evidence_section_in_both_cards(
    client: MlflowClient,
) -> None:
    live = {
        "live.compared_at": "2026-01-06T00:00:00+00:00",
        "live.window": "between 2026-01-05T00:00:00+00:00 and now",
        "live.champion_version": "1",
        "live.metric": "test_accuracy",
        "live.shared": "400",
        "live.labelled": "300",
        "live.agreement": "0.71",
        "live.drift_js": "0.0412",
        "live.challenger_score": "0.95",
        "live.champion_score": "0.7",
        "live.gain": "0.25",
        "live.ci_lower": "0.19",
        "live.ci_upper": "0.31",
        "live.ci_level": "0.95",
        "live.resamples": "1000",
        "live.challenger_error_rate": "0.01",
        "live.champion_latency_p99_ms": "2.5",
        "live.run_id": "abc123",
        "live.decision": "promoted",
        "live.reason": "better than the champion on live traffic",
    }
    version, _ = _hand_made_version(client, "card-live", version_tags=live)
    logged = _log_card(client, "card-live", version)
    for text in (logged.html, logged.markdown):
        assert "Live evidence" in text
        for shown in ("champion v1", "400", "71.00%", "0.0412", "[0.1900, 0.3100]", "abc123"):
            assert shown in text, shown
    assert "| live-gate decision | promoted |" in logged.markdown
    assert "| Error rate: champion / this version | not recorded / 1.00% |" in logged.markdown


def test_a_card_without_live_tags_has_no_live_evidence_section(client: MlflowClient) -> None:
    version, _ = _hand_made_version(client, "card-offline")
    logged = _log_card(client, "card-offline", version)
    assert "Live evidence" not in logged.html and "Live evidence" not in logged.markdown
