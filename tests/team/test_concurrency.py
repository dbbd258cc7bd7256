"""Concurrent writers on one registry: the Production lock over HTTP, and two real pipelines."""

from __future__ import annotations

import itertools
import threading
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

from pipeline.registry import production

if TYPE_CHECKING:
    from conftest import Team
    from mlflow.tracking import MlflowClient

pytestmark = [pytest.mark.e2e, pytest.mark.team]

WORKERS = 4


def _in_parallel(workers: int, work: Callable[[int], None]) -> None:
    """Run `work(i)` on `workers` threads released together; re-raise the first failure."""
    barrier = threading.Barrier(workers)
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            barrier.wait(timeout=60)
            work(index)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(thread.is_alive() for thread in threads), "a worker never finished"
    if errors:
        raise errors[0]


def _stages(client: MlflowClient, name: str) -> dict[str, str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return {
            str(v.version): v.current_stage for v in client.search_model_versions(f"name='{name}'")
        }


def _assert_history_is_one_unbroken_chain(
    events: list[production.PromotionEvent], expected: str
) -> None:
    oldest_first = list(reversed(events))
    assert oldest_first[0].from_version is None
    for before, after in itertools.pairwise(oldest_first):
        assert after.from_version == before.to_version, oldest_first
    assert oldest_first[-1].to_version == expected


def test_the_lock_admits_one_holder_at_a_time_so_no_increment_is_lost(team: Team) -> None:
    name = "lock-counter"
    team.client().create_registered_model(name, tags={"count": "0"})
    rounds = 3
    holders = 0
    most_holders = 0
    guard = threading.Lock()

    def increment(_: int) -> None:
        nonlocal holders, most_holders
        client = team.client()
        for _ in range(rounds):
            with production.production_lock(client, name, timeout_seconds=120):
                with guard:
                    holders += 1
                    most_holders = max(most_holders, holders)
                count = int(client.get_registered_model(name).tags["count"])
                # Widen the read-modify-write window: without the lock, updates would be lost.
                time.sleep(0.05)
                client.set_registered_model_tag(name, "count", str(count + 1))
                with guard:
                    holders -= 1

    _in_parallel(WORKERS, increment)
    client = team.client()
    assert client.get_registered_model(name).tags["count"] == str(WORKERS * rounds)
    assert most_holders == 1
    assert not client.search_registered_models(f"name = '{production.lock_name(name)}'")


def test_simultaneous_promotions_leave_one_production_version_and_an_unbroken_history(
    team: Team, copies_of: Callable[[str, int], list[str]]
) -> None:
    name = "iris-race-direct"
    versions = copies_of(name, WORKERS)

    def promote(index: int) -> None:
        production.set_production(
            team.client(), name, versions[index], action="promote", reason=f"worker {index}"
        )

    _in_parallel(WORKERS, promote)
    client = team.client()
    stages = _stages(client, name)
    in_production = [v for v, stage in stages.items() if stage == "Production"]
    assert len(in_production) == 1, stages
    assert str(client.get_model_version_by_alias(name, "champion").version) == in_production[0]
    events = production.history(client, name)
    assert sorted(e.to_version for e in events) == sorted(versions)
    _assert_history_is_one_unbroken_chain(events, in_production[0])


def test_two_pipelines_finishing_together_leave_one_production_version_and_both_decisions(
    team: Team,
) -> None:
    name = "iris-race"
    configs = [
        team.config(name),
        team.config(
            name,
            estimator={
                "class_path": "sklearn.linear_model.LogisticRegression",
                "params": {"C": 0.1, "max_iter": 500},
            },
        ),
    ]
    processes = [team.start("main", "--config", str(config)) for config in configs]
    outputs = [process.communicate(timeout=300) for process in processes]
    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr[-3000:]

    client = team.client()
    stages = _stages(client, name)
    assert sorted(stages) == ["1", "2"]
    in_production = [v for v, stage in stages.items() if stage == "Production"]
    assert len(in_production) == 1, stages
    assert str(client.get_model_version_by_alias(name, "champion").version) == in_production[0]
    tags = {v: client.get_model_version(name, v).tags for v in stages}
    assert {t["gate.decision"] for t in tags.values()} <= {"promoted", "rejected"}
    promoted = sorted(v for v, t in tags.items() if t["gate.decision"] == "promoted")
    events = production.history(client, name)
    assert sorted(e.to_version for e in events) == promoted
    _assert_history_is_one_unbroken_chain(events, in_production[0])
    # Each gate judged against the champion of the moment it promoted: only one was first.
    for event in events:
        assert tags[event.to_version]["gate.champion_version"] == (event.from_version or "none")
    assert sum(t["gate.reason"].startswith("first model") for t in tags.values()) == 1
    assert not client.search_registered_models(f"name = '{production.lock_name(name)}'")
