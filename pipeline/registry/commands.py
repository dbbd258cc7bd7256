"""Explicit changes of the registry: promote a chosen version (to Production, or to Staging as
the challenger), roll Production back to the previous one, and the history as a table.

Both read the registry, decide and write under the Production lock, so a gate or another
person acting at the same moment cannot slip a change between the check and the move. Both
first reconcile: a change a killed process left half done is finished (or dropped) before
this one is decided, so "already in Production" and the rollback stack see the truth.
"""

from __future__ import annotations

import logging

from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient

from pipeline.errors import RegistryError
from pipeline.registry import production, schema, transaction

logger = logging.getLogger(__name__)


HISTORY_HEADER = ("time", "action", "stage", "from", "to", "actor", "reason")


def promote(
    name: str,
    version: str,
    reason: str | None = None,
    *,
    stage: str = production.PRODUCTION,
    allow_schema_change: bool = False,
) -> production.PromotionEvent:
    """Put `version` in `stage` without the gate (a person decided), and record it.

    `stage` is Production (the champion) or Staging (the challenger, which the server runs
    beside the champion and live-gate judges). A version whose inputs would break requests
    Production accepts is refused (SchemaChangeError listing the differences) unless
    `allow_schema_change`: for Staging too, since the server sends the challenger the very
    requests Production accepts.
    """
    if stage not in (production.PRODUCTION, production.STAGING):
        raise RegistryError(
            f"cannot promote version {version} of '{name}' to stage '{stage}': choose "
            f"{production.PRODUCTION} or {production.STAGING}"
        )
    client = MlflowClient()
    production.get_version(client, name, version)
    # Compared outside the lock (two MLmodel downloads); re-checked below only if Production
    # moved while we waited for the lock.
    before = production.production_version(client, name)
    checked = None if before is None else str(before.version)
    schema.check(client, name, version, checked, allow_schema_change=allow_schema_change)
    with production.production_lock(client, name):
        transaction.reconcile(client, name)
        current = production.production_version(client, name)
        _refuse_a_no_op(client, name, str(version), stage, current)
        now = None if current is None else str(current.version)
        if now != checked:
            schema.check(client, name, version, now, allow_schema_change=allow_schema_change)
        default = "promoted by hand" if stage == production.PRODUCTION else "staged by hand"
        return transaction.change_stage(
            client, name, version, stage=stage, action="promote", reason=reason or default
        )


def _refuse_a_no_op(
    client: MlflowClient, name: str, version: str, stage: str, champion: ModelVersion | None
) -> None:
    """Refuse a promote that would change nothing, or make the champion its own challenger."""
    if champion is not None and str(champion.version) == version:
        if stage == production.PRODUCTION:
            raise RegistryError(f"version {version} of '{name}' is already in Production")
        raise RegistryError(
            f"version {version} of '{name}' is in Production (the champion); a challenger must "
            "be another version: stage one that is not in Production"
        )
    challenger = production.challenger_version(client, name)
    if stage == production.STAGING and challenger and str(challenger.version) == version:
        raise RegistryError(
            f"version {version} of '{name}' is already in Staging (the challenger); judge it "
            f"with `python -m pipeline live-gate`, or promote it to {production.PRODUCTION}"
        )


def rollback(name: str, reason: str | None = None) -> production.PromotionEvent:
    """Return Production to the version that held it before the current one."""
    client = MlflowClient()
    if production.production_version(client, name) is None:
        # Checked before locking too: an unknown model must not get a lock model created.
        raise RegistryError(f"'{name}' has no Production version; nothing to roll back")
    with production.production_lock(client, name):
        transaction.reconcile(client, name)
        current = production.production_version(client, name)
        if current is None:
            raise RegistryError(f"'{name}' has no Production version; nothing to roll back")
        reigns = _production_stack(production.history(client, name))
        if not reigns or reigns[-1] != str(current.version):
            raise RegistryError(
                f"Production of '{name}' (version {current.version}) was set outside this "
                "pipeline; choose the version yourself with `python -m pipeline promote`"
            )
        if len(reigns) < 2:
            raise RegistryError(
                f"'{name}' has no earlier Production version than {current.version} to roll back to"
            )
        target = reigns[-2]
        production.get_version(client, name, target)
        return transaction.change_stage(
            client,
            name,
            target,
            stage=production.PRODUCTION,
            action="rollback",
            reason=reason or f"rolled back from version {current.version}",
        )


def history_rows(events_newest_first: list[production.PromotionEvent]) -> list[tuple[str, ...]]:
    """The history as a table: HISTORY_HEADER, then one row per event, newest first.

    The stage column says where `to` went (Production, Staging, or Archived for a retired
    challenger), so a challenger's way reads Staging, then Production or Archived.
    """
    rows: list[tuple[str, ...]] = [HISTORY_HEADER]
    return rows + [
        (
            event.time,
            event.action,
            event.stage,
            event.from_version or "-",
            event.to_version,
            event.actor,
            event.reason,
        )
        for event in events_newest_first
    ]


def _production_stack(events_newest_first: list[production.PromotionEvent]) -> list[str]:
    # Promotions push, rollbacks pop: repeated rollbacks walk further back in time. Only
    # Production's events count: staging or retiring a challenger never moved the champion.
    stack: list[str] = []
    for event in reversed(events_newest_first):
        if event.stage != production.PRODUCTION:
            continue
        if event.action == "rollback":
            while stack and stack[-1] != event.to_version:
                stack.pop()
            if not stack:
                stack.append(event.to_version)
        elif not stack or stack[-1] != event.to_version:
            stack.append(event.to_version)
    return stack
