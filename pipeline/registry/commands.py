"""Explicit changes of Production: promote a chosen version, or roll back to the previous one.

Both read the registry, decide and write under the Production lock, so a gate or another
person acting at the same moment cannot slip a change between the check and the move. Both
first reconcile: a change a killed process left half done is finished (or dropped) before
this one is decided, so "already in Production" and the rollback stack see the truth.
"""

from __future__ import annotations

import logging

from mlflow.tracking import MlflowClient

from pipeline.errors import RegistryError
from pipeline.registry import production, schema, transaction

logger = logging.getLogger(__name__)


def promote(
    name: str, version: str, reason: str | None = None, *, allow_schema_change: bool = False
) -> production.PromotionEvent:
    """Put `version` in Production without the gate (a person decided), and record it.

    A version whose inputs would break requests Production accepts is refused (SchemaChangeError
    listing the differences) unless `allow_schema_change`.
    """
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
        if current is not None and str(current.version) == str(version):
            raise RegistryError(f"version {version} of '{name}' is already in Production")
        now = None if current is None else str(current.version)
        if now != checked:
            schema.check(client, name, version, now, allow_schema_change=allow_schema_change)
        return transaction.change_production(
            client, name, version, action="promote", reason=reason or "promoted by hand"
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
        return transaction.change_production(
            client,
            name,
            target,
            action="rollback",
            reason=reason or f"rolled back from version {current.version}",
        )


def _production_stack(events_newest_first: list[production.PromotionEvent]) -> list[str]:
    # Promotions push, rollbacks pop: repeated rollbacks walk further back in time.
    stack: list[str] = []
    for event in reversed(events_newest_first):
        if event.action == "rollback":
            while stack and stack[-1] != event.to_version:
                stack.pop()
            if not stack:
                stack.append(event.to_version)
        elif not stack or stack[-1] != event.to_version:
            stack.append(event.to_version)
    return stack
