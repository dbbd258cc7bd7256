"""The MLflow UI as the comparison tool, looked at in a real browser at 1,400 px.

A store as a user has it after training iris (the champion, Production), a small grid search
(its trials nested under the candidate) and `mlflow run` again on iris (a cache hit: nothing
trained). A real `mlflow server` serves it; headless Chromium (Debian's, driven by Playwright)
opens the link `make ui` prints (`python -m pipeline ui-url`) and the checks are what a person
sees: one row per candidate, the status, estimator and held-out metric columns inside the
window, the Production run marked, the trials folded under their parent, no row that is
unexplained. The screenshot is kept in `test-artifacts/` (git-ignored).

The MLflow Assistant panel opens by itself the first time a browser profile visits the UI and
covers a quarter of the window; the test closes it as a person would (once: the UI remembers).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, sync_playwright

from tests.e2e.conftest import free_port, running
from tests.e2e.project import (
    REPO_ROOT,
    VENV_BIN,
    copy_project,
    mlflow_run,
    pipeline,
    project_env,
)

pytestmark = pytest.mark.e2e

# Debian's chromium, which `make test` installs; `make test CHROMIUM=...` names another build.
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = REPO_ROOT / "test-artifacts"
WIDTH, HEIGHT = 1400, 900
# What a person must see without scrolling: the status, the estimator and every held-out
# metric of a classifier, the gate's (test_f1_macro) among them.
COLUMNS = (
    "pipeline.status",
    "estimator",
    "test_accuracy",
    "test_f1_macro",
    "test_roc_auc",
    "test_log_loss",
)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = copy_project(tmp_path_factory.mktemp("ui"))
    for config in ("configs/iris.yaml", "configs/iris_search_small.yaml"):
        trained = pipeline(project, "main", "--config", config)
        assert trained.returncode == 0, trained.stderr[-3000:]
    again = mlflow_run(project, "config=configs/iris.yaml", experiment="iris")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "cache hit" in again.stdout
    return project


@pytest.fixture(scope="module")
def ui(project: Path) -> Iterator[str]:
    """A real `mlflow server` on the project's store; its base URL once it answers."""
    port = free_port()
    env = {**project_env(project), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    store = env["MLFLOW_TRACKING_URI"]
    args = [str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", store]
    args += ["--default-artifact-root", str(project / "mlruns"), "--workers", "1"]
    args += ["--host", "127.0.0.1", "--port", str(port)]
    base = f"http://127.0.0.1:{port}"
    log_path = project / "mlflow-server.log"
    with running(args, cwd=project, env=env, log_path=log_path, ready_url=f"{base}/health"):
        yield base


@pytest.fixture(scope="module")
def printed_link(project: Path, ui: str) -> str:
    """The link `make ui` prints."""
    printed = pipeline(project, "ui-url", "--config", "configs/iris.yaml", "--base-url", ui)
    assert printed.returncode == 0, printed.stderr
    return printed.stdout.strip()


@pytest.fixture(scope="module")
def page(printed_link: str) -> Iterator[Page]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs it (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            # As root in a container: no sandbox, and /dev/shm is small.
            args=["--no-sandbox", "--disable-dev-shm-usage"],
        )
        page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
        page.goto(printed_link)
        page.get_by_role("row").filter(has_text="iris_search_small").first.wait_for(timeout=60_000)
        close = page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]')
        if close.count():
            close.first.click()
        page.get_by_role("columnheader", name="test_log_loss").first.wait_for(timeout=30_000)
        page.wait_for_timeout(1000)  # let the grid lay its columns out after the panel closed
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "mlflow-ui-runs-table.png"))
        yield page
        browser.close()


def _rows(page: Page) -> list[str]:
    """The text of each data row, its cells joined (the grid splits pinned and other cells
    into two rows with the same row index)."""
    cells: dict[str, list[str]] = {}
    for row in page.locator('[role="row"][row-index]').all():
        cells.setdefault(str(row.get_attribute("row-index")), []).append(row.inner_text())
    return [" | ".join(parts).replace("\n", " | ") for _, parts in sorted(cells.items())]


def test_the_printed_link_opens_the_training_runs_table_of_the_experiment(
    page: Page, printed_link: str
) -> None:
    assert "workflowType=machine_learning" in printed_link
    assert "/runs" in page.url
    assert page.get_by_text("Run Name").first.is_visible()


def test_the_comparison_columns_are_inside_a_1400_px_window(page: Page) -> None:
    for name in COLUMNS:
        header = page.get_by_role("columnheader", name=name, exact=True).first
        box = header.bounding_box()
        assert box is not None, f"no column '{name}'"
        assert box["x"] >= 0 and box["x"] + box["width"] <= WIDTH, f"'{name}' is off screen: {box}"
    assert (ARTIFACTS / "mlflow-ui-runs-table.png").stat().st_size > 10_000


def test_each_candidate_is_a_row_and_the_trials_are_folded_under_their_parent(
    page: Page,
) -> None:
    rows = _rows(page)
    candidates = [r for r in rows if "sklearn.linear_model.LogisticRegression" in r]
    assert len(candidates) == 2, rows
    assert any("iris_search_small-LogisticRegression" in r for r in candidates)
    assert not any("-trial-" in r for r in rows), rows
    parent = page.get_by_role("row").filter(has_text="iris_search_small").first
    parent.get_by_role("button").first.click()  # the expander
    page.get_by_text("-trial-000").first.wait_for(timeout=10_000)
    assert sum("-trial-" in r for r in _rows(page)) == 4


def test_the_production_run_is_marked_and_no_row_is_unexplained(page: Page) -> None:
    rows = [r for r in _rows(page) if "-trial-" not in r]
    production = [r for r in rows if "Production: iris v1" in r]
    assert len(production) == 1 and "iris-LogisticRegression" in production[0], rows
    # The launcher run of the cache hit trained nothing: its status column says so.
    unexplained = [r for r in rows if "0." not in r and "cache hit of " not in r]
    assert unexplained == [], rows
    assert any("cache hit of iris-LogisticRegression" in r for r in rows), rows


def test_the_screenshot_is_kept_for_a_person_to_look_at() -> None:
    assert (ARTIFACTS / "mlflow-ui-runs-table.png").exists()
    assert "test-artifacts/" in (REPO_ROOT / ".gitignore").read_text().splitlines()
    assert os.access(ARTIFACTS, os.W_OK)
