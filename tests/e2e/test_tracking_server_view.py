"""What a user sees in the MLflow UI, read through a real `mlflow server` over its REST API.

The pipeline CLI runs twice into one store: a plain champion, then a grid search whose best
setting is clearly better. A real tracking server then serves that store, and every check goes
through HTTP only, to the same endpoints the UI calls: runs with readable names, headline
params, metrics and lineage tags; nested trials under their parent; the registered versions,
their gate evidence and the champion alias; the artifacts and the model card.
"""

from __future__ import annotations

import html
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

SEARCH_CONFIG = Path(__file__).resolve().parent / "configs" / "iris_search_small.yaml"
MODEL = "iris"
# A deliberately weak champion (heavy regularisation) that still clears the 0.8 threshold, so
# the searched challenger beats it and the second version is promoted: the alias must move.
CHAMPION_CONFIG: dict[str, Any] = {
    "experiment": "iris",
    "registered_model": MODEL,
    "task": "classification",
    "data": {"dataset": "iris", "target": "species"},
    "estimator": {
        "class_path": "sklearn.linear_model.LogisticRegression",
        "params": {"C": 0.03, "max_iter": 500},
    },
    "split": {"test_size": 0.3, "seed": 42, "stratify": True, "cv_folds": 2},
    "gate": {"metric": "test_f1_macro", "threshold": 0.8, "min_improvement": 0.0},
}
ESTIMATOR = "sklearn.linear_model.LogisticRegression"
TEST_METRICS = ("test_accuracy", "test_f1_macro", "test_roc_auc", "test_log_loss")
LINEAGE_TAGS = (
    "data.hash",
    "data.rows",
    "data.source",
    "git.commit",
    "git.dirty",
    "config.hash",
    "code.hash",
    "lineage.libraries",
)

pytestmark = pytest.mark.e2e


def _env(store: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "SERVING_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{store / 'mlflow.db'}"
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    return env


def _pipeline_main(store: Path, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "main", "--config", str(config)],
        cwd=store,
        env=_env(store),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Store:
    path: Path
    champion_stem: str
    challenger_stem: str


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """A store with a promoted champion (v1) and a searched challenger (v2), made by the CLI."""
    path = tmp_path_factory.mktemp("store")
    champion_config = path / "iris_champion.yaml"
    champion_config.write_text(yaml.safe_dump(CHAMPION_CONFIG, sort_keys=False))
    first = _pipeline_main(path, champion_config)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "gate: promoted: first model" in first.stdout
    second = _pipeline_main(path, SEARCH_CONFIG)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"registered {MODEL} version 2" in second.stdout
    return Store(path=path, champion_stem=champion_config.stem, challenger_stem=SEARCH_CONFIG.stem)


@pytest.fixture(scope="module")
def server(store: Store) -> Iterator[str]:
    port = _free_port()
    env = {
        **_env(store.path),
        # Background jobs need a job queue this test does not use; the UI does not need them.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{store.path / 'mlflow.db'}",
        "--default-artifact-root",
        str(store.path / "mlruns"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    log_path = store.path / "mlflow-server.log"
    log = log_path.open("w")
    # `mlflow server` runs uvicorn as a child: a session of its own lets the teardown stop both.
    process = subprocess.Popen(
        command, cwd=store.path, env=env, stdout=log, stderr=log, start_new_session=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, log_path.read_text()[-3000:]
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "mlflow server never answered /health"
            time.sleep(0.5)
        yield base
    finally:
        _stop(process)
        log.close()


def _stop(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


# --- REST helpers: the endpoints the UI itself calls -------------------------------------------


def _get(server: str, endpoint: str, **params: str) -> dict[str, Any]:
    response = httpx.get(f"{server}/ajax-api/2.0/mlflow/{endpoint}", params=params, timeout=30)
    assert response.status_code == 200, f"{endpoint}: {response.status_code} {response.text}"
    body: dict[str, Any] = response.json()
    return body


def _tags(entity: Mapping[str, Any]) -> dict[str, str]:
    return {tag["key"]: tag["value"] for tag in entity.get("tags", [])}


def _kv(run: Mapping[str, Any], kind: str) -> dict[str, Any]:
    return {item["key"]: item["value"] for item in run["data"].get(kind, [])}


@dataclass(frozen=True)
class View:
    experiment: dict[str, Any]
    runs: list[dict[str, Any]]

    def candidates(self) -> list[dict[str, Any]]:
        return [r for r in self.runs if "mlflow.parentRunId" not in _kv(r, "tags")]

    def candidate(self, stem: str) -> dict[str, Any]:
        (run,) = [r for r in self.candidates() if r["info"]["run_name"].startswith(f"{stem}-")]
        return run

    def children_of(self, run_id: str) -> list[dict[str, Any]]:
        return [r for r in self.runs if _kv(r, "tags").get("mlflow.parentRunId") == run_id]


@pytest.fixture(scope="module")
def view(server: str) -> View:
    experiment = _get(server, "experiments/get-by-name", experiment_name="iris")["experiment"]
    runs: list[dict[str, Any]] = []
    page_token: str | None = None
    while True:
        body = {"experiment_ids": [experiment["experiment_id"]], "max_results": 100}
        if page_token:
            body["page_token"] = page_token
        response = httpx.post(f"{server}/ajax-api/2.0/mlflow/runs/search", json=body, timeout=30)
        assert response.status_code == 200, response.text
        payload = response.json()
        runs += payload.get("runs", [])
        page_token = payload.get("next_page_token")
        if not page_token:
            return View(experiment=experiment, runs=runs)


def _version(server: str, version: str) -> dict[str, Any]:
    body = _get(server, "model-versions/get", name=MODEL, version=version)
    model_version: dict[str, Any] = body["model_version"]
    return model_version


def _artifact(server: str, run_id: str, path: str) -> httpx.Response:
    # The UI's artifact view reads files from this route.
    return httpx.get(
        f"{server}/get-artifact", params={"path": path, "run_uuid": run_id}, timeout=30
    )


# --- the experiment's runs table ---------------------------------------------------------------


def test_the_experiment_has_one_row_per_candidate_with_a_readable_name(
    store: Store, view: View
) -> None:
    candidates = view.candidates()
    assert len(candidates) == 2
    for stem in (store.champion_stem, store.challenger_stem):
        run = view.candidate(stem)
        data_hash = _kv(run, "tags")["data.hash"]
        assert run["info"]["run_name"] == f"{stem}-LogisticRegression-{data_hash[:8]}"
        assert run["info"]["status"] == "FINISHED"


def test_a_candidate_row_carries_headline_params_test_and_cv_metrics(
    store: Store, view: View
) -> None:
    run = view.candidate(store.challenger_stem)
    params, metrics = _kv(run, "params"), _kv(run, "metrics")
    assert params["estimator"] == ESTIMATOR
    assert params["model.C"] in {"0.01", "0.1", "1.0", "10.0"}
    assert params["split.seed"] == "42"
    assert params["split.test_size"] == "0.3"
    assert params["search.strategy"] == "grid"
    assert params["search.scoring"] == "f1_macro"
    for name in TEST_METRICS:
        assert name in metrics, f"metric {name} missing from the run"
    assert 0.0 < metrics["test_f1_macro"] <= 1.0
    assert {"cv_f1_macro_mean", "cv_f1_macro_std", "cv_accuracy_mean"} <= set(metrics)


def test_a_candidate_row_carries_its_lineage_a_dataset_input_and_a_logged_model(
    store: Store, server: str, view: View
) -> None:
    run = view.candidate(store.challenger_stem)
    tags = _kv(run, "tags")
    missing = [name for name in LINEAGE_TAGS if not tags.get(name)]
    assert not missing, f"lineage tags missing from the run: {missing}"
    assert re.fullmatch(r"[0-9a-f]{64}", tags["data.hash"])
    assert tags["data.rows"] == "150"
    assert tags["data.source"] == "sklearn:iris"
    server_version = httpx.get(f"{server}/version", timeout=10).text.strip()
    assert json.loads(tags["lineage.libraries"])["mlflow"] == server_version
    (dataset_input,) = run["inputs"]["dataset_inputs"]
    assert dataset_input["dataset"]["name"] == MODEL
    assert json.loads(dataset_input["dataset"]["profile"])["num_rows"] == 150
    assert _tags(dataset_input)["mlflow.data.context"] == "training"
    (model_output,) = run["outputs"]["model_outputs"]
    logged = _get(server, f"logged-models/{model_output['model_id']}")["model"]
    assert logged["info"]["source_run_id"] == run["info"]["run_id"]


def test_the_lineage_commit_agrees_with_the_commit_mlflow_shows_for_the_run(
    store: Store, view: View
) -> None:
    # The CLI runs from a directory outside the checkout, as a user with data elsewhere does;
    # the commit that matters is the one of the code that trained, which MLflow itself
    # detects from the entry point's source file. Both appear on the run page.
    tags = _kv(view.candidate(store.challenger_stem), "tags")
    expected = tags.get("mlflow.source.git.commit", "unknown")
    assert tags["git.commit"] == expected, (
        f"git.commit is {tags['git.commit']!r} but the code that ran is at commit {expected!r} "
        f"({tags.get('mlflow.source.name')})"
    )
    assert tags["git.dirty"] in ({"unknown"} if expected == "unknown" else {"true", "false"})


def test_the_search_trials_are_nested_under_their_parent_with_the_declared_count(
    store: Store, view: View
) -> None:
    parent = view.candidate(store.challenger_stem)
    parent_id, parent_name = parent["info"]["run_id"], parent["info"]["run_name"]
    params = _kv(parent, "params")
    declared = yaml.safe_load(SEARCH_CONFIG.read_text())["search"]
    trials = sorted(view.children_of(parent_id), key=lambda r: r["info"]["run_name"])
    assert len(trials) == len(declared["space"]["C"]) == int(params["search.trials"])
    assert len(view.runs) == 2 + len(trials)
    assert [t["info"]["run_name"] for t in trials] == [
        f"{parent_name}-trial-{n:03d}" for n in range(len(trials))
    ]
    assert {_kv(t, "params")["model.C"] for t in trials} == {str(c) for c in declared["space"]["C"]}
    assert all(t["info"]["status"] == "FINISHED" for t in trials)
    # The parent holds the best trial's setting, chosen by the declared scoring.
    scores = {_kv(t, "params")["model.C"]: _kv(t, "metrics")["search_score_mean"] for t in trials}
    assert scores[params["model.C"]] == max(scores.values())
    best = trials[int(params["search.best_trial"])]
    assert _kv(best, "params")["model.C"] == params["model.C"]
    assert view.children_of(view.candidate(store.champion_stem)["info"]["run_id"]) == []


def test_the_shared_runs_table_view_selects_the_headline_columns(view: View) -> None:
    tag = _tags(view.experiment)["mlflow.sharedViewState.pipeline"]
    columns = json.loads(tag)["selectedColumns"]
    for column in (
        "params.`estimator`",
        "params.`model.C`",
        "params.`split.seed`",
        "metrics.`test_f1_macro`",
        "metrics.`test_accuracy`",
        "metrics.`cv_f1_macro_mean`",
    ):
        assert column in columns, f"{column} not in the shared view: {columns}"


# --- the model registry ------------------------------------------------------------------------


def test_the_champion_alias_and_production_stage_point_to_the_promoted_challenger(
    server: str,
) -> None:
    model = _get(server, "registered-models/get", name=MODEL)["registered_model"]
    aliases = {a["alias"]: a["version"] for a in model.get("aliases", [])}
    assert aliases == {"champion": "2"}
    stages = {v["version"]: v["current_stage"] for v in model["latest_versions"]}
    assert stages == {"1": "Archived", "2": "Production"}
    by_alias = _get(server, "registered-models/alias", name=MODEL, alias="champion")
    assert by_alias["model_version"]["current_stage"] == "Production"
    history = sorted(
        (int(k.removeprefix("history.")), json.loads(v))
        for k, v in _tags(model).items()
        if k.startswith("history.")
    )
    assert [(e["action"], e["from_version"], e["to_version"]) for _, e in history] == [
        ("gate", None, "1"),
        ("gate", "1", "2"),
    ]


def test_the_challenger_version_carries_its_lineage_metrics_and_gate_evidence(
    store: Store, server: str, view: View
) -> None:
    run = view.candidate(store.challenger_stem)
    version = _version(server, "2")
    tags = _tags(version)
    assert version["run_id"] == tags["run_id"] == run["info"]["run_id"]
    (model_output,) = run["outputs"]["model_outputs"]
    assert version["source"] == f"models:/{model_output['model_id']}"
    assert tags["data.hash"] == _kv(run, "tags")["data.hash"]
    for name in TEST_METRICS:
        assert float(tags[name]) == pytest.approx(_kv(run, "metrics")[name], rel=1e-5)
    assert tags["gate.decision"] == "promoted"
    assert "beats champion v1" in tags["gate.reason"]
    assert tags["gate.rule"]
    assert tags["gate.champion_version"] == "1"
    lower, diff, upper = (float(tags[k]) for k in ("gate.ci_lower", "gate.diff", "gate.ci_upper"))
    assert lower <= diff <= upper
    assert diff > 0
    assert float(tags["gate.ci_level"]) == 0.95
    assert tags["gate.resamples"] == "500"
    assert tags["model_card"] == "model_card/v2/model_card.html"


def test_the_first_version_records_a_first_model_decision_without_an_interval(
    server: str,
) -> None:
    tags = _tags(_version(server, "1"))
    assert tags["gate.decision"] == "promoted"
    assert tags["gate.reason"].startswith("first model: no champion yet")
    assert not {"gate.ci_lower", "gate.ci_upper", "gate.diff"} & set(tags)
    assert tags["model_card"] == "model_card/v1/model_card.html"


# --- artifacts and the model card --------------------------------------------------------------


def test_the_candidate_run_lists_its_config_plots_split_and_model_card(
    store: Store, server: str, view: View
) -> None:
    run_id = view.candidate(store.challenger_stem)["info"]["run_id"]

    def listed(path: str) -> set[str]:
        files = _get(server, "artifacts/list", run_id=run_id, path=path).get("files", [])
        return {f["path"] for f in files}

    assert {"config", "plots", "split", "model_card"} <= listed("")
    assert "config/resolved_config.yaml" in listed("config")
    assert "plots/confusion_matrix.png" in listed("plots")
    assert "split/training_rows.npz" in listed("split")
    assert listed("model_card/v2") == {
        "model_card/v2/model_card.html",
        "model_card/v2/model_card.md",
    }
    config = _artifact(server, run_id, "config/resolved_config.yaml")
    assert config.status_code == 200
    resolved = yaml.safe_load(config.text)
    assert resolved["search"]["strategy"] == "grid"
    assert resolved["estimator"]["class_path"] == ESTIMATOR
    plot = _artifact(server, run_id, "plots/confusion_matrix.png")
    assert plot.status_code == 200
    assert plot.content.startswith(b"\x89PNG")


def test_the_model_card_served_by_the_ui_shows_the_versions_metric_and_gate_reason(
    store: Store, server: str, view: View
) -> None:
    run = view.candidate(store.challenger_stem)
    tags = _tags(_version(server, "2"))
    response = _artifact(server, run["info"]["run_id"], tags["model_card"])
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = html.unescape(response.text)
    assert f"{_kv(run, 'metrics')['test_f1_macro']:.4f}" in page
    assert tags["gate.reason"] in page
    assert run["info"]["run_name"] in page


def test_an_artifact_that_does_not_exist_is_a_404_not_a_server_error(
    store: Store, server: str, view: View
) -> None:
    run_id = view.candidate(store.challenger_stem)["info"]["run_id"]
    response = _artifact(server, run_id, "model_card/v9/model_card.html")
    assert response.status_code == 404


def test_the_ui_root_page_is_served(server: str) -> None:
    response = httpx.get(f"{server}/", timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "<html" in response.text.lower()
    assert "static-files" in response.text
