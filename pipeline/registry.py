"""Registry primitives shared by the gate and the explicit promote/rollback commands.

Production is kept in two places that must move together: the (deprecated, still widely
read) `Production` stage and the `champion` alias. Every change is appended to the registered
model's history as one tag per event, so concurrent writers never rewrite each other's record.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline.errors import RegistryError
from pipeline.tracking import current_actor

logger = logging.getLogger(__name__)

PRODUCTION = "Production"
CHAMPION_ALIAS = "champion"
HISTORY_TAG_PREFIX = "history."


@dataclass(frozen=True)
class PromotionEvent:
    time: str
    actor: str
    action: str
    from_version: str | None
    to_version: str
    reason: str


def get_version(client: MlflowClient, name: str, version: str) -> ModelVersion:
    try:
        return client.get_model_version(name, version)
    except MlflowException as exc:
        raise RegistryError(
            f"registered model '{name}' has no version '{version}'; pass an existing one "
            "(the MLflow UI's Models page lists them)"
        ) from exc


def production_version(client: MlflowClient, name: str) -> ModelVersion | None:
    """The version in the Production stage, or None (also when the model does not exist)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            versions = client.get_latest_versions(name, stages=[PRODUCTION])
    except MlflowException:
        return None
    return versions[0] if versions else None


def set_production(
    client: MlflowClient, name: str, version: str, *, action: str, reason: str
) -> PromotionEvent:
    """Move the Production stage and the champion alias to `version` and record why."""
    previous = production_version(client, name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        client.transition_model_version_stage(
            name, version, PRODUCTION, archive_existing_versions=True
        )
    client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
    event = PromotionEvent(
        time=datetime.now(UTC).isoformat(timespec="seconds"),
        actor=current_actor(),
        action=action,
        from_version=str(previous.version) if previous else None,
        to_version=str(version),
        reason=reason,
    )
    client.set_registered_model_tag(
        name, f"{HISTORY_TAG_PREFIX}{time.time_ns()}", json.dumps(asdict(event))
    )
    client.set_model_version_tag(name, version, "promoted.at", event.time)
    client.set_model_version_tag(name, version, "promoted.by", event.actor)
    logger.info(
        "%s: version %s of '%s' is now Production (was %s): %s",
        action,
        version,
        name,
        event.from_version or "none",
        reason,
    )
    return event


def history(client: MlflowClient, name: str) -> list[PromotionEvent]:
    """Every recorded change of Production, newest first."""
    try:
        tags = client.get_registered_model(name).tags
    except MlflowException as exc:
        raise RegistryError(f"registered model '{name}' does not exist") from exc
    keyed = sorted(
        (
            (int(key.removeprefix(HISTORY_TAG_PREFIX)), value)
            for key, value in tags.items()
            if key.startswith(HISTORY_TAG_PREFIX)
        ),
        reverse=True,
    )
    return [PromotionEvent(**json.loads(value)) for _, value in keyed]
