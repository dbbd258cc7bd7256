"""The registry invariant, checked with plain MLflow calls, independently of the code under test.

`bench/registry_faults.py` owns the crash benchmark and its harness; the bench directory is not
a package on the test path, so it is loaded here by file. Its `violations` knows Production
only (it reads the history's last event whatever its stage), so the invariant of both slots is
spelled out here: Production exactly as the benchmark checks it, on Production's events, and
the Staging slot (at most one version, `challenger` on it and on nothing else, the last Staging
event pointing to it).
"""

from __future__ import annotations

import importlib.util
import json
import sys
import warnings
from types import ModuleType
from typing import Any

from mlflow.tracking import MlflowClient

from tests.pipeline.factories import REPO_ROOT


def _load_bench() -> ModuleType:
    name = "bench_registry_faults"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "bench" / "registry_faults.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


registry_faults = _load_bench()


def violations(client: MlflowClient, name: str) -> list[str]:
    """What breaks the invariant of `name`'s Production and Staging, in words (empty if none)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        versions = client.search_model_versions(f"name = '{name}'")
        stages = {str(v.version): str(v.current_stage) for v in versions}
    model = client.get_registered_model(name)
    events = _events(model.tags)
    aliases = {key: str(value) for key, value in (model.aliases or {}).items()}
    found = _production(stages, aliases, events) + _staging(stages, aliases, events)
    txns = [event["txn"] for event in events if event.get("txn")]
    if len(txns) != len(set(txns)):
        found.append("a transaction's history event was written twice")
    if "txn.intent" in model.tags:
        found.append("a transaction intent is left")
    if client.search_registered_models(f"name = '{name}.lock'"):
        found.append("the Production lock is left")
    for decision, stage in (("promoted", "Production"), ("staged", "Staging")):
        held = {e["to_version"] for e in events if e.get("stage", "Production") == stage}
        held |= {v for v, s in stages.items() if s == stage}
        found += [
            f"version {v.version} says gate.decision={decision} but never held {stage}"
            for v in versions
            if v.tags.get("gate.decision") == decision and str(v.version) not in held
        ]
    return found


def _events(tags: dict[str, str]) -> list[dict[str, Any]]:
    """History events, oldest first."""
    return [
        json.loads(value)
        for key, value in sorted(
            ((k, v) for k, v in tags.items() if k.startswith("history.")),
            key=lambda item: int(item[0].split(".", 1)[1]),
        )
    ]


def _production(
    stages: dict[str, str], aliases: dict[str, str], events: list[dict[str, Any]]
) -> list[str]:
    found = []
    in_production = sorted(v for v, stage in stages.items() if stage == "Production")
    if len(in_production) != 1:
        found.append(f"{len(in_production)} versions in Production: {in_production}")
    champion = aliases.get("champion")
    if in_production and champion != in_production[-1]:
        found.append(f"champion on {champion}, Production {in_production}")
    ours = [e for e in events if e.get("stage", "Production") == "Production"]
    if in_production and (not ours or ours[-1]["to_version"] != in_production[-1]):
        last = ours[-1]["to_version"] if ours else None
        found.append(f"last Production event to {last}, Production {in_production}")
    return found


def _staging(
    stages: dict[str, str], aliases: dict[str, str], events: list[dict[str, Any]]
) -> list[str]:
    found = []
    in_staging = sorted(v for v, stage in stages.items() if stage == "Staging")
    challenger = aliases.get("challenger")
    if len(in_staging) > 1:
        found.append(f"{len(in_staging)} versions in Staging: {in_staging}")
    if challenger is not None and challenger == aliases.get("champion"):
        found.append(f"champion and challenger both on {challenger}")
    if challenger != (in_staging[-1] if in_staging else None):
        found.append(f"challenger on {challenger}, Staging {in_staging}")
    ours = [e for e in events if e.get("stage") in ("Staging", "Archived")]
    last = (ours[-1]["stage"], ours[-1]["to_version"]) if ours else None
    if in_staging and last != ("Staging", in_staging[-1]):
        found.append(f"last Staging-slot event {last}, Staging {in_staging}")
    return found
