"""The one dependency the protocol routes get the model from.

``current_predictor`` is the single place that knows where predictions come from; re-point it
(for example at a micro-batcher) and every protocol route follows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from serving.model.inference import ClassPrediction, Prediction, PredictionRow, RegressionPrediction
from serving.model.state import ActiveModel
from serving.model.store import LoadedModel

Record = dict[str, Any]


class ModelUnavailableError(Exception):
    """No model is loaded yet; each protocol renders it as a 503 in its own body."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Predictor:
    """The model answering now, and a way to ask it for predictions."""

    active: ActiveModel

    @property
    def loaded(self) -> LoadedModel:
        return self.active.loaded

    async def predict_rows(self, records: Sequence[Record]) -> list[PredictionRow]:
        """Predict ``records`` (dicts keyed by input column name) through the model's batcher,
        so protocol requests are merged with /predict requests into the same model calls;
        plain rows, as the prediction log takes them."""
        return await self.active.predict(list(records))

    async def predict(self, records: Sequence[Record]) -> list[Prediction]:
        """:meth:`predict_rows`, as typed predictions."""
        return self.typed(await self.predict_rows(records))

    def typed(self, rows: Sequence[PredictionRow]) -> list[Prediction]:
        """Plain rows as typed predictions."""
        if self.loaded.task == "regression":
            return [RegressionPrediction(**row) for row in rows]
        return [ClassPrediction(**row) for row in rows]


def current_predictor(request: Request) -> Predictor | None:
    """The predictor for the model loaded now, or None when no model is loaded."""
    holder = getattr(request.app.state, "models", None)
    active = getattr(holder, "active", None)
    if active is None:
        return None
    return Predictor(active=active)


def _not_loaded_reason(request: Request) -> str:
    holder = getattr(request.app.state, "models", None)
    reason = getattr(holder, "reason", None)
    return str(reason) if reason else "No model is loaded yet: retry in a few seconds."


OptionalPredictorDep = Annotated[Predictor | None, Depends(current_predictor)]


def get_predictor(request: Request, predictor: OptionalPredictorDep) -> Predictor:
    """The predictor; raises :class:`ModelUnavailableError` (a 503) when no model is loaded."""
    if predictor is None:
        raise ModelUnavailableError(_not_loaded_reason(request))
    return predictor


PredictorDep = Annotated[Predictor, Depends(get_predictor)]
