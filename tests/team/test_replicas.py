"""Replicated serving: real replicas under load converge on a promotion and fail no request."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx
import pytest

from pipeline.registry import production
from tests.factories import IRIS_SETOSA

if TYPE_CHECKING:
    from conftest import Team, TrainedVersion

pytestmark = [pytest.mark.e2e, pytest.mark.team]

POLL_SECONDS = 1.0
# Download, safe-load and warm-up of a small model, on a loaded 2-core machine.
LOAD_SECONDS = 20.0


@dataclass(frozen=True)
class Answer:
    at: float
    replica: int
    version: str | None
    failure: str | None


class Load:
    """One client thread per replica, each posting predictions back to back until stopped."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self.answers: list[Answer] = []
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(len(urls))
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _run(self, replica: int) -> None:
        with httpx.Client(base_url=self.urls[replica], timeout=10) as client:
            # Continuous, yet leaving the CPU to the replicas: this client shares their 2 cores.
            while not self._stop.wait(0.02):
                self._record(replica, client)

    def _record(self, replica: int, client: httpx.Client) -> None:
        try:
            response = client.post("/predict", json=IRIS_SETOSA)
        except httpx.HTTPError as exc:
            answer = Answer(time.monotonic(), replica, None, f"{type(exc).__name__}: {exc}")
        else:
            body = response.json() if response.status_code == 200 else {}
            version = body.get("model_version")
            ok = (
                response.status_code == 200
                and body["prediction"]["label"] == "setosa"
                and response.headers.get("X-Model-Version") == version
            )
            failure = None if ok else f"{response.status_code}: {response.text[:300]}"
            answer = Answer(time.monotonic(), replica, version, failure)
        with self._guard:
            self.answers.append(answer)

    def snapshot(self) -> list[Answer]:
        with self._guard:
            return list(self.answers)

    def wait_until(self, condition: Callable[[list[Answer]], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition(self.snapshot()):
                return True
            time.sleep(0.05)
        return condition(self.snapshot())


def _every_replica_answered(version: str, replicas: int, since: float = 0.0) -> Callable:
    def check(answers: list[Answer]) -> bool:
        seen = {a.replica for a in answers if a.version == version and a.at >= since}
        return len(seen) == replicas

    return check


def test_two_replicas_converge_on_a_promotion_under_load_without_a_failed_request(
    team: Team, trained: TrainedVersion, copies_of: Callable[[str, int], list[str]]
) -> None:
    name = "iris-replicas"
    old, new = copies_of(name, 2)
    client = team.client()
    production.set_production(client, name, old, action="promote", reason="replica test start")
    with (
        team.replicas(name, count=2, poll_seconds=POLL_SECONDS) as replicas,
        Load([r.url for r in replicas]) as load,
    ):
        assert load.wait_until(_every_replica_answered(old, 2), timeout=30)
        served = httpx.get(f"{replicas[0].url}/model", timeout=10).json()
        assert (served["name"], served["version"]) == (name, old)
        assert served["run_id"] == trained.run_id
        promotion = team.start("promote", "--name", name, "--version", new, "--reason", "test")
        # When the change is visible in the registry, not when the CLI process has exited.
        promoted_at = None
        while promotion.poll() is None or promoted_at is None:
            current = production.production_version(client, name)
            if current is not None and str(current.version) == new:
                promoted_at = time.monotonic()
                break
            assert promotion.poll() in (None, 0), promotion.communicate()[1][-2000:]
            time.sleep(0.05)
        assert promoted_at is not None
        _, stderr = promotion.communicate(timeout=120)
        assert promotion.returncode == 0, stderr[-2000:]
        converged = load.wait_until(_every_replica_answered(new, 2), POLL_SECONDS + LOAD_SECONDS)
        # Keep the load on a little longer: the swapped-in model must keep answering.
        time.sleep(1.0)
    answers = load.snapshot()
    failures = [a for a in answers if a.failure is not None]
    assert not failures, failures[:5]
    assert converged, {r: {a.version for a in answers if a.replica == r} for r in (0, 1)}
    for replica in (0, 1):
        mine = [a for a in answers if a.replica == replica]
        first_new = next(a.at for a in mine if a.version == new)
        # A replica never goes back to the old version once it answers with the new one.
        assert all(a.version == new for a in mine if a.at > first_new)
        assert first_new - promoted_at <= POLL_SECONDS + LOAD_SECONDS
    assert len(answers) >= 50
