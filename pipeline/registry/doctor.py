"""`python -m pipeline doctor`: are a model's Production and Staging consistent, and repair them
if asked.

Without `repair` it only reads (no lock taken) and lists what `reconcile` would fix. With it,
it takes the Production lock (a lock left by a killed process of this host is broken at
once), reconciles, and reads again to confirm.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlflow.tracking import MlflowClient

from pipeline.errors import RegistryError
from pipeline.registry import production, transaction


@dataclass(frozen=True)
class DoctorReport:
    name: str
    found: tuple[str, ...]
    """Problems seen before any repair."""
    repairs: tuple[str, ...]
    remaining: tuple[str, ...]
    """Problems still there (all of `found` when not repairing)."""
    production: str | None
    lock: str | None
    """Who holds the Production lock now, when someone does (a change in progress)."""
    staging: str | None = None
    """The challenger's version, when one is in Staging."""

    @property
    def consistent(self) -> bool:
        return not self.remaining

    def lines(self, repair: bool) -> list[str]:
        now = f"version {self.production}" if self.production else "no version"
        challenger = f"; Staging is version {self.staging} (challenger)" if self.staging else ""
        out = [f"{self.name}: Production is {now}{challenger}"]
        out += [f"problem: {problem}" for problem in self.found]
        out += [f"repaired: {repair_made}" for repair_made in self.repairs]
        if self.lock:
            out.append(f"note: the Production lock is held by {self.lock} (a change in progress)")
        if self.consistent:
            out.append(
                "consistent: one version in Production, champion on it, history agrees; at "
                "most one in Staging, challenger on it and on no other"
            )
        elif not repair:
            out.append(f"inconsistent: run `python -m pipeline doctor --name {self.name} --repair`")
        else:
            out += [f"still wrong: {problem}" for problem in self.remaining]
        return out


def run(client: MlflowClient, name: str, *, repair: bool) -> DoctorReport:
    if production.is_internal_model(name):
        raise RegistryError(f"'{name}' is a Production lock, not a model; pass the model's name")
    before = transaction.observe(client, name)
    found = tuple(before.problems())
    repairs: list[str] = []
    after = before
    if repair:
        with production.production_lock(client, name):
            repairs = transaction.reconcile(client, name)
        if before.lock is not None and production.holder_is_dead(before.lock):
            repairs.insert(0, f"broke the orphan lock of {production.describe_holder(before.lock)}")
        after = transaction.observe(client, name)
    lock = (
        after.lock if after.lock is not None and not production.holder_is_dead(after.lock) else None
    )
    return DoctorReport(
        name=name,
        found=found,
        repairs=tuple(repairs),
        remaining=tuple(after.problems()),
        production=after.production_versions[-1] if after.production_versions else None,
        lock=None if lock is None else production.describe_holder(lock),
        staging=after.staging_versions[-1] if after.staging_versions else None,
    )
