"""Champion and challenger on live traffic: what each costs (issue 15), measured on our server.

Three figures, each against its target:

- **shadow cost**: single-row ``/predict`` throughput with a challenger in shadow mode against
  the same server with ``SERVING_CHALLENGER_MODE=off``, same champion, same load (target: at
  most 15% lower). The challenger is as costly as the champion (a logistic regression with
  another ``C``), so the figure is the price of predicting every request twice.
- **canary share**: the share of requests answered by the challenger (``X-Model-Version``)
  over 10,000 requests with distinct ``X-Routing-Key`` values, against
  ``SERVING_CANARY_PERCENT`` (target: within 1 percentage point).
- **client-visible errors** with a canary challenger that fails on every request for real (a
  one-hot encoder that raises on a city it never saw) at 50%: the count of non-200 answers
  (target: 0), and whether the server rolled it back.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.serving.console import log
from bench.serving.load import run_load
from bench.serving.profiling import profiled
from bench.serving.servers import ServerProcess, our_server, stop_all_servers
from bench.serving.store import Dataset, Store, build_store, log_version
from bench.serving.wire import build_payloads

SHADOW_COST_LIMIT = 0.15
CANARY_SHARE_TOLERANCE = 1.0  # percentage points
CANARY_PERCENT = 10.0
FAILING_CANARY_PERCENT = 50.0
_CANARY_CONCURRENCY = 16
_NICE = {"age": 30.0, "rooms": 3.0, "city": "nice"}


@dataclass
class LiveFigures:
    off_req_per_s: float | None = None
    shadow_req_per_s: float | None = None
    shadow_errors: int = 0
    shadow_answered: int = 0
    """Requests the champion answered in shadow mode (warm-up included)."""
    shadow_predicted: int = 0
    """Of them, those the challenger predicted too: a shadow that skips work is no bargain."""
    shadow_dropped: int = 0
    canary_requests: int = 0
    canary_percent: float = CANARY_PERCENT
    canary_share: float | None = None
    failing_requests: int = 0
    failing_client_errors: int | None = None
    failing_rolled_back: bool = False
    failing_rollback_reason: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def shadow_cost(self) -> float | None:
        if not self.off_req_per_s or self.shadow_req_per_s is None:
            return None
        return 1 - self.shadow_req_per_s / self.off_req_per_s

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "shadow_cost": self.shadow_cost}


def bench_live(args: argparse.Namespace, X_train: Any, y_train: Any, data: Dataset) -> LiveFigures:
    """Run the three measurements in a throwaway store; never raises for a server failure
    (it becomes a note)."""
    figures = LiveFigures()
    tmp = Path(tempfile.mkdtemp(prefix="bench-live-"))
    try:
        log(f"[live] throwaway MLflow store in {tmp}")
        store = build_store(tmp, ["lr"], X_train, y_train)
        name = store.registered["lr"]
        _stage(store, name, _log_version(store, name, _challenger_lr(X_train, y_train), X_train))
        _shadow_cost(args, store, data, tmp, figures)
        _canary_share(args, store, data, tmp, figures)
        _failing_canary(args, store, tmp, figures)
    finally:
        stop_all_servers()
        if args.keep_store:
            log(f"[live] kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return figures


def live_lines(figures: LiveFigures) -> list[str]:
    """The report's section."""
    lines = ["", "Champion and challenger on live traffic (issue 15)"]
    cost = figures.shadow_cost
    if cost is None:
        lines.append("  shadow cost: not measured")
    else:
        verdict = "ok" if cost <= SHADOW_COST_LIMIT else "ABOVE TARGET"
        lines.append(
            f"  shadow cost: {cost:+.1%} of single-row /predict throughput "
            f"({figures.shadow_req_per_s:,.0f} req/s with a shadow challenger vs "
            f"{figures.off_req_per_s:,.0f} req/s without; target <= "
            f"{SHADOW_COST_LIMIT:.0%}: {verdict})"
        )
    if figures.shadow_answered:
        lines.append(
            f"  shadowed: the challenger predicted {figures.shadow_predicted:,} of the "
            f"{figures.shadow_answered:,} requests the champion answered "
            f"({figures.shadow_dropped:,} dropped: too many in flight)"
        )
    if figures.canary_share is None:
        lines.append("  canary share: not measured")
    else:
        gap = figures.canary_share - figures.canary_percent
        verdict = "ok" if abs(gap) <= CANARY_SHARE_TOLERANCE else "OUTSIDE TARGET"
        lines.append(
            f"  canary share: {figures.canary_share:.2f}% of {figures.canary_requests:,} "
            f"requests answered by the challenger at SERVING_CANARY_PERCENT="
            f"{figures.canary_percent:g} ({gap:+.2f} points; target within "
            f"{CANARY_SHARE_TOLERANCE:g}: {verdict})"
        )
    if figures.failing_client_errors is None:
        lines.append("  failing challenger: not measured")
    else:
        verdict = "ok" if figures.failing_client_errors == 0 else "ABOVE TARGET"
        rolled = (
            f"rolled back ({figures.failing_rollback_reason})"
            if figures.failing_rolled_back
            else "NOT rolled back"
        )
        lines.append(
            f"  failing challenger at {FAILING_CANARY_PERCENT:g}% canary: "
            f"{figures.failing_client_errors} client-visible errors in "
            f"{figures.failing_requests:,} requests (target 0: {verdict}); {rolled}"
        )
    lines += [f"  note: {note}" for note in figures.notes]
    return lines


# --- the three measurements ---------------------------------------------------------------


def _shadow_cost(
    args: argparse.Namespace, store: Store, data: Dataset, tmp: Path, figures: LiveFigures
) -> None:
    payloads = build_payloads("predict", data)
    results: dict[str, float] = {}
    # Off first, then shadow; with --rounds, they take turns at going first.
    order = ["off", "shadow"]
    for round_index in range(args.rounds):
        for mode in order if round_index % 2 == 0 else order[::-1]:
            server = _server(store, "lr", tmp, {"SERVING_CHALLENGER_MODE": mode})
            # The default hot-reload interval: polling two slots every second (what the
            # other live measurements use, to see a rollback quickly) is not a shadow's cost.
            server.env.pop("SERVING_POLL_SECONDS")
            try:
                server.start(args.startup_timeout)
                if mode == "shadow":
                    _wait_for_challenger(server.port)
                with profiled(args.profile, f"live-{mode}", server.pgid, args.warmup):
                    result = run_load(
                        args.generator,
                        server.port,
                        payloads,
                        args.concurrency,
                        args.warmup,
                        args.duration,
                        server.pgid,
                        not args.no_uvloop,
                    )
                if mode == "shadow":
                    _await_shadows(server.port, figures)
            except Exception as exc:
                figures.notes.append(f"shadow cost ({mode}): {exc}")
                return
            finally:
                server.stop()
            cpu = result.server_cpu_cores
            per_request = (
                f", {1e6 * cpu / result.req_per_s:,.0f} µs server CPU a request"
                if cpu and result.req_per_s
                else ""
            )
            log(
                f"[live] {mode}: {result.req_per_s:,.0f} req/s, {result.errors} errors{per_request}"
            )
            results.setdefault(mode, 0.0)
            results[mode] += result.req_per_s / args.rounds
            if mode == "shadow":
                figures.shadow_errors += result.errors
    figures.off_req_per_s, figures.shadow_req_per_s = results["off"], results["shadow"]


def _canary_share(
    args: argparse.Namespace, store: Store, data: Dataset, tmp: Path, figures: LiveFigures
) -> None:
    requests = args.live_requests
    env = {"SERVING_CHALLENGER_MODE": "canary", "SERVING_CANARY_PERCENT": str(CANARY_PERCENT)}
    server = _server(store, "lr", tmp, env)
    try:
        server.start(args.startup_timeout)
        _wait_for_challenger(server.port)
        body = build_payloads("predict", data).single[0]
        versions = asyncio.run(_routed(server.port, body, requests))
    except Exception as exc:
        figures.notes.append(f"canary share: {exc}")
        return
    finally:
        server.stop()
    answered = [v for v in versions if v is not None]
    if len(answered) < len(versions):
        figures.notes.append(f"canary share: {len(versions) - len(answered)} requests failed")
    figures.canary_requests = len(answered)
    figures.canary_share = 100 * answered.count("2") / max(1, len(answered))


def _failing_canary(
    args: argparse.Namespace, store: Store, tmp: Path, figures: LiveFigures
) -> None:
    name = _failing_model(store)
    requests = max(200, args.live_requests // 10)
    env = {
        "SERVING_CHALLENGER_MODE": "canary",
        "SERVING_CANARY_PERCENT": str(FAILING_CANARY_PERCENT),
        "SERVING_MODEL_NAME": name,
    }
    server = _server(store, "lr", tmp, env)
    try:
        server.start(args.startup_timeout)
        _wait_for_challenger(server.port)
        statuses = asyncio.run(_statuses(server.port, requests))
        challenger = _challenger(server.port)
    except Exception as exc:
        figures.notes.append(f"failing challenger: {exc}")
        return
    finally:
        server.stop()
    figures.failing_requests = len(statuses)
    figures.failing_client_errors = sum(status != 200 for status in statuses)
    figures.failing_rolled_back = challenger.get("state") == "rolled_back"
    rollback = challenger.get("rollback") or {}
    figures.failing_rollback_reason = rollback.get("reason")


# --- load -------------------------------------------------------------------------------------


async def _routed(port: int, body: bytes, requests: int) -> list[str | None]:
    """Send ``requests`` /predict requests, each with its own routing key; the answering
    version of each (None for a failed request)."""
    versions: list[str | None] = [None] * requests
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(requests):
        queue.put_nowait(index)
    headers = {"Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:

        async def worker() -> None:
            while not queue.empty():
                index = queue.get_nowait()
                key = {"X-Routing-Key": f"user-{index}"}
                response = await client.post("/predict", content=body, headers=headers | key)
                if response.status_code == 200:
                    versions[index] = response.headers.get("X-Model-Version")

        await asyncio.gather(*(worker() for _ in range(_CANARY_CONCURRENCY)))
    return versions


async def _statuses(port: int, requests: int) -> list[int]:
    statuses: list[int] = []
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:

        async def worker(count: int) -> None:
            for _ in range(count):
                statuses.append((await client.post("/predict", json=_NICE)).status_code)

        share, rest = divmod(requests, _CANARY_CONCURRENCY)
        counts = [share + (i < rest) for i in range(_CANARY_CONCURRENCY)]
        await asyncio.gather(*(worker(count) for count in counts))
    return statuses


# --- servers and models -----------------------------------------------------------------------


def _server(store: Store, key: str, tmp: Path, env: dict[str, str]) -> ServerProcess:
    server = our_server(store, key, tmp, None, None)  # the prediction log off: model cost only
    server.env.update({"SERVING_POLL_SECONDS": "1", **env})
    server.label = f"ours ({env.get('SERVING_CHALLENGER_MODE')})"
    return server


def _await_shadows(port: int, figures: LiveFigures, timeout: float = 10.0) -> None:
    """Once the load has stopped, wait for the queued shadow predictions, then add how many
    requests the champion answered, the challenger predicted and the shadow dropped."""
    deadline = time.monotonic() + timeout
    while True:
        counts = _live_counts(port)
        answered = counts.get(("champion", "ok"), 0)
        done = sum(n for (role, _), n in counts.items() if role == "challenger")
        dropped = counts.get(("dropped", ""), 0)
        if done + dropped >= answered or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    figures.shadow_answered += answered
    figures.shadow_predicted += counts.get(("challenger", "ok"), 0)
    figures.shadow_dropped += dropped


def _live_counts(port: int) -> dict[tuple[str, str], int]:
    """``serving_live_predictions_total`` by (role, outcome), and the shadow's drops as
    ("dropped", ""), from the server's ``/metrics``."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    counts: dict[tuple[str, str], int] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "serving_live_predictions_total":
                key = (sample.labels["role"], sample.labels["outcome"])
                counts[key] = int(sample.value)
            elif sample.name == "serving_live_shadow_dropped_total":
                counts[("dropped", "")] = int(sample.value)
    return counts


def _challenger(port: int) -> dict[str, Any]:
    answer = httpx.get(f"http://127.0.0.1:{port}/model", timeout=10).json()
    info: dict[str, Any] = answer.get("challenger") or {}
    return info


def _wait_for_challenger(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while _challenger(port).get("state") != "active":
        if time.monotonic() > deadline:
            raise RuntimeError(f"the challenger never loaded: {_challenger(port)}")
        time.sleep(0.2)


def _challenger_lr(X_train: Any, y_train: Any) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    preprocess = ColumnTransformer([("num", StandardScaler(), list(X_train.columns))])
    model = Pipeline([("preprocess", preprocess), ("model", LogisticRegression(C=0.3))])
    return model.fit(X_train, y_train)


def _log_version(store: Store, name: str, model: Any, X_train: Any) -> str:
    """Log a fitted ``model`` and register it as a new version of ``name``."""
    import mlflow

    # The benchmark's experiment: its artifacts stay in the throwaway store.
    experiment = mlflow.get_experiment_by_name("bench-serving")
    assert experiment is not None
    return log_version(experiment.experiment_id, name, model, X_train, run_name=f"{name}-live")


def _stage(store: Store, name: str, version: str, stage: str = "Staging") -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=store.tracking_uri, registry_uri=store.tracking_uri)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        client.transition_model_version_stage(name, version, stage)
    alias = "champion" if stage == "Production" else "challenger"
    client.set_registered_model_alias(name, alias, version)


def _failing_model(store: Store) -> str:
    """``bench-live-fail``: a champion on (age, rooms, city), and a challenger that raises on
    the city 'nice', which it never saw (its input example passes, so it loads)."""
    import numpy as np
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    rng = np.random.default_rng(0)
    n = 300
    frame = pd.DataFrame(
        {
            "age": rng.normal(40, 10, n),
            "rooms": rng.integers(1, 6, n).astype("float64"),
            "city": pd.Series(rng.choice(["paris", "lyon", "nice"], n), dtype=object),
        }
    )
    y = (frame["rooms"] > 2).astype("int64")
    name = "bench-live-fail"

    def fitted(data: pd.DataFrame, unknown: str) -> Any:
        preprocess = ColumnTransformer(
            [
                ("num", StandardScaler(), ["age", "rooms"]),
                ("cat", OneHotEncoder(handle_unknown=unknown), ["city"]),
            ]
        )
        return Pipeline([("preprocess", preprocess), ("model", LogisticRegression())]).fit(data, y)

    champion = _log_version(store, name, fitted(frame, "ignore"), frame)
    _stage(store, name, champion, "Production")
    without_nice = frame.assign(city=frame["city"].replace("nice", "lyon"))
    _stage(store, name, _log_version(store, name, fitted(without_nice, "error"), without_nice))
    return name
