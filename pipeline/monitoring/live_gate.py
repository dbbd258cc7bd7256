"""live-gate: promote the challenger to Production, or retire it, on live evidence.

The evidence is live-compare's (``live_compare``: logged as a run of the monitoring experiment
and as ``live.*`` tags on the challenger), computed outside the Production lock. ``live.judge``
decides:

- **promote** (exit 0): at least ``gate.live_min_labels`` labelled shared requests, the lower
  bound of the paired interval of the gain above 0, and (``gate.beat_baseline``) the lower
  bound of the gain over the trivial baseline above 0. The challenger moves to Production in
  one registry transaction (``transaction.change_stage``), which also takes ``challenger`` off
  it; the server picks it up at its next poll.
- **reject** (exit 10): the upper bound of the gain is below 0, it is no better than the
  baseline, or the server rolled the canary back (``contracts.CANARY_ROLLBACK_TAG`` on the
  version). The challenger is archived (``transaction.retire``) with the reason in words.
- **wait** (exit 20): too few labels, or an interval that includes 0; nothing changes, and the
  reason says how many more labels are needed.

Under the lock the gate only reconciles, checks that Production and Staging still hold the
versions it judged (the evidence is about those two) and writes; the outcome tags
(``gate.decision`` last) are the transaction's last writes, so a live-gate killed anywhere
never leaves a false decision.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime

from mlflow.tracking import MlflowClient

from pipeline import artifacts, contracts
from pipeline.config import PipelineConfig
from pipeline.errors import DataValidationError, RegistryError
from pipeline.monitoring import live, live_compare
from pipeline.registry import production, transaction

logger = logging.getLogger(__name__)

ACTION_PROMOTE = "live-gate"
ACTION_REJECT = "live-reject"
_OUTCOMES = {"promote": "promoted", "reject": "rejected", "wait": "waiting"}


@dataclass(frozen=True)
class LiveGateResult:
    model_name: str
    champion_version: str
    challenger_version: str
    decision: live.LiveDecision
    comparison: live_compare.LiveComparison | None
    """None when the canary was rolled back and the log held no shared request to compare."""
    event: production.PromotionEvent | None
    """The registry change made (promotion or retirement); None when waiting."""

    @property
    def exit_code(self) -> int:
        return self.decision.exit_code

    def lines(self) -> list[str]:
        """One line of outcome first, then the evidence, as the command prints it."""
        name, version = self.model_name, self.challenger_version
        if self.decision.outcome == "promote":
            head = (
                f"promoted: {name} v{version} is now Production (was v{self.champion_version}): "
                f"{self.decision.reason}"
            )
        elif self.decision.outcome == "reject":
            head = f"rejected: {name} v{version} is archived: {self.decision.reason}"
        else:
            head = (
                f"not enough evidence: {name} v{version} stays the challenger: "
                f"{self.decision.reason}"
            )
        evidence = [] if self.comparison is None else self.comparison.lines()
        run = [] if self.comparison is None else [f"run_id={self.comparison.run_id}"]
        return [head, *evidence, *run]


def run(
    config: PipelineConfig,
    since: datetime | None = None,
    until: datetime | None = None,
    *,
    run_id: str | None = None,
) -> LiveGateResult:
    """Judge the challenger on the live window and promote it, retire it, or leave it waiting."""
    client = MlflowClient()
    name = config.registered_model
    transaction.ensure_consistent(client, name)
    versions = live_compare.resolve_versions(client, name)
    rolled_back = versions.challenger.tags.get(contracts.CANARY_ROLLBACK_TAG)
    comparison = _compare(client, config, versions, since, until, run_id, rolled_back)
    evidence = comparison.evidence if comparison else _no_evidence(config)
    decision = live.judge(config, evidence, rolled_back=rolled_back)
    if comparison is not None and comparison.run_id:
        client.set_tag(comparison.run_id, "live.decision", _OUTCOMES[decision.outcome])
        client.set_tag(comparison.run_id, "live.reason", decision.reason[:5000])
    event = None
    if decision.outcome != "wait":
        event = _commit(client, config, versions, decision, comparison)
    live_compare.log_card(client, name, str(versions.challenger.version))
    result = LiveGateResult(
        model_name=name,
        champion_version=str(versions.champion.version),
        challenger_version=str(versions.challenger.version),
        decision=decision,
        comparison=comparison,
        event=event,
    )
    logger.info("live-gate %s v%s: %s", name, result.challenger_version, result.lines()[0])
    return result


def _compare(
    client: MlflowClient,
    config: PipelineConfig,
    versions: live_compare.Versions,
    since: datetime | None,
    until: datetime | None,
    run_id: str | None,
    rolled_back: str | None,
) -> live_compare.LiveComparison | None:
    """live-compare's evidence, logged and tagged; a rolled-back canary needs none."""
    try:
        found = live_compare.gather(config, versions, since, until)
    except DataValidationError:
        if rolled_back is None:
            raise
        logger.warning("No live evidence to show beside the canary's rollback: %s", rolled_back)
        return None
    found = replace(found, run_id=live_compare.log_run(client, config, found, run_id=run_id))
    live_compare.record_on_version(client, found)
    return found


def _no_evidence(config: PipelineConfig) -> live.LiveEvidence:
    return live.LiveEvidence(config.gate.metric, 0, None, 0, None, None, None, None)


def _commit(
    client: MlflowClient,
    config: PipelineConfig,
    versions: live_compare.Versions,
    decision: live.LiveDecision,
    comparison: live_compare.LiveComparison | None,
) -> production.PromotionEvent:
    """Promote or retire the challenger under the lock, if the registry still holds the two
    versions judged; else RegistryError (the evidence is about those two: run live-gate again).
    """
    name = config.registered_model
    champion, challenger = str(versions.champion.version), str(versions.challenger.version)
    tags = _outcome_tags(versions, decision, comparison)
    with production.production_lock(client, name):
        transaction.reconcile(client, name)
        now = live_compare.resolve_versions(client, name)
        moved = (str(now.champion.version), str(now.challenger.version)) != (champion, challenger)
        if moved:
            raise RegistryError(
                f"the registry of '{name}' changed while live-gate judged challenger v{challenger} "
                f"against champion v{champion}: Production is now v{now.champion.version}, "
                f"Staging v{now.challenger.version}; run live-gate again to judge them"
            )
        if decision.outcome == "promote":
            return transaction.change_stage(
                client,
                name,
                challenger,
                stage=contracts.CHAMPION_STAGE,
                action=ACTION_PROMOTE,
                reason=decision.reason,
                outcome_tags=tags,
            )
        return transaction.retire(
            client,
            name,
            challenger,
            action=ACTION_REJECT,
            reason=decision.reason,
            outcome_tags=tags,
        )


def _outcome_tags(
    versions: live_compare.Versions,
    decision: live.LiveDecision,
    comparison: live_compare.LiveComparison | None,
) -> dict[str, str]:
    """The version tags the decision writes, `gate.decision` last (the transaction writes them
    in order, after the stage move). The offline gate's reason is kept beside the live one."""
    tags = {
        "live.decision": _OUTCOMES[decision.outcome],
        "live.reason": decision.reason,
        "live.judged_against": str(versions.champion.version),
    }
    if comparison is not None and comparison.run_id:
        tags["live.run_id"] = comparison.run_id
    offline = versions.challenger.tags.get("gate.reason")
    if offline is not None:
        tags["gate.offline_reason"] = offline
    tags["gate.reason"] = decision.reason
    tags[artifacts.GATE_DECISION] = _OUTCOMES[decision.outcome]
    return tags
