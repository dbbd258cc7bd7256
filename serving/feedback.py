"""Late labels: ``POST /feedback`` bodies, checked against the model that answers. No HTTP.

A body is one label, ``{"request_id": "...", "row": 0, "label": ...}``, or several,
``{"labels": [{...}, ...]}``. ``request_id`` is the ``X-Request-ID`` of the prediction's
answer, ``row`` the index of the record within that request (default 0). A classifier's label
must be one of its classes (``1`` and ``"1"`` both name class ``1``); a regressor's label is a
finite number. Whether the request id was ever logged is not checked here: the monitor joins
labels to predictions on (request_id, row), and the latest label wins.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from serving.errors import ErrorDetail, InvalidRequestError
from serving.limits import RequestLimits, capped, check_rows, more_problems
from serving.middleware.request_id import DESCRIPTION, is_valid_request_id
from serving.model.inference import json_kind
from serving.model.store import LoadedModel
from serving.prediction_log import FeedbackLabel

FIELDS = ("request_id", "row", "label")
_FORM = (
    'Send {"request_id": "<X-Request-ID of the prediction>", "row": 0, "label": <true label>}, '
    'or {"labels": [...]} for several.'
)
_SHOWN_CLASSES = 20
DEFAULT_LIMITS = RequestLimits()


def parse_feedback(
    payload: Any, loaded: LoadedModel, limits: RequestLimits = DEFAULT_LIMITS
) -> list[FeedbackLabel]:
    """The labels of a decoded JSON body, each checked against ``loaded``.

    Raises:
        LimitExceededError: more labels than ``limits.max_rows``.
        InvalidRequestError: naming the first ``limits.max_error_details`` fields that are
            missing, unknown or wrong, and why, and counting the rest.
    """
    if not isinstance(payload, dict):
        raise InvalidRequestError(
            f"The body must be a JSON object, not {json_kind(payload)}. {_FORM}",
            [ErrorDetail(field="body", message=f"expected an object, got {json_kind(payload)}")],
        )
    if "labels" in payload:
        items, prefix = _items(payload), "labels"
        check_rows(len(items), limits)
    else:
        items, prefix = [payload], ""
    labels: list[FeedbackLabel] = []
    problems: list[ErrorDetail] = []
    for index, item in enumerate(items):
        where = f"{prefix}[{index}]." if prefix else ""
        label = _label(item, where, loaded, problems)
        if label is not None:
            labels.append(label)
    if problems:
        listed, hidden = capped(problems, limits)
        fields = ", ".join(dict.fromkeys(f"'{p.field}'" for p in listed))
        raise InvalidRequestError(
            f"Invalid feedback in {fields}: fix the listed fields and retry."
            + more_problems(hidden),
            listed,
        )
    return labels


def _items(payload: dict[str, Any]) -> Sequence[Any]:
    extra = [key for key in payload if key != "labels"]
    items = payload["labels"]
    if extra:
        raise InvalidRequestError(
            f"A body with 'labels' takes nothing else: remove {', '.join(map(repr, extra))}.",
            [ErrorDetail(field=key, message="not allowed next to 'labels'") for key in extra],
        )
    if not isinstance(items, list) or not items:
        got = "an empty array" if isinstance(items, list) else json_kind(items)
        raise InvalidRequestError(
            f"'labels' must be a non-empty array of label objects, got {got}. {_FORM}",
            [ErrorDetail(field="labels", message=f"expected a non-empty array, got {got}")],
        )
    return items


def _label(
    item: Any, where: str, loaded: LoadedModel, problems: list[ErrorDetail]
) -> FeedbackLabel | None:
    if not isinstance(item, dict):
        problems.append(
            ErrorDetail(
                field=where.rstrip(".") or "body",
                message=f"each label must be a JSON object, got {json_kind(item)}",
            )
        )
        return None
    found = len(problems)
    for key in item:
        if key not in FIELDS:
            problems.append(
                ErrorDetail(
                    field=f"{where}{key[:40]}",
                    message=f"{_shown(key)} is not a feedback field: send only "
                    f"{', '.join(FIELDS)}.",
                )
            )
    request_id = item.get("request_id")
    if request_id is None:
        problems.append(
            ErrorDetail(
                field=f"{where}request_id",
                message="'request_id' is required: send the X-Request-ID header of the "
                "prediction's answer.",
            )
        )
    elif not is_valid_request_id(request_id):
        got = json_kind(request_id) if not isinstance(request_id, str) else _shown(request_id)
        problems.append(
            ErrorDetail(
                field=f"{where}request_id",
                message=f"'request_id' must be a string of {DESCRIPTION} (the X-Request-ID of "
                f"the prediction's answer), got {got}.",
            )
        )
    row = item.get("row", 0)
    if not (isinstance(row, int) and not isinstance(row, bool) and 0 <= row < 2**63):
        problems.append(
            ErrorDetail(
                field=f"{where}row",
                message="'row' must be a non-negative integer: the index of the record within "
                f"its request (0 for a single record), got {_described(row)}.",
            )
        )
    label = _checked_label(item, where, loaded, problems)
    if len(problems) > found or label is None:
        return None
    return FeedbackLabel(request_id=str(request_id), row=int(row), label=label)


def _checked_label(
    item: dict[str, Any], where: str, loaded: LoadedModel, problems: list[ErrorDetail]
) -> str | float | None:
    field = f"{where}label"
    if "label" not in item or item["label"] is None:
        expected = "the true class" if loaded.task == "classification" else "the true value"
        problems.append(
            ErrorDetail(field=field, message=f"'label' is required: {expected} of the prediction.")
        )
        return None
    value = item["label"]
    if loaded.task == "regression":
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.append(
                ErrorDetail(
                    field=field,
                    message=f"'label' must be a number for regression model '{loaded.name}', "
                    f"got {json_kind(value)}.",
                )
            )
            return None
        try:
            number = float(value)
        except OverflowError:  # an integer beyond float64
            number = math.inf
        if not math.isfinite(number):
            problems.append(ErrorDetail(field=field, message="'label' must be a finite number."))
            return None
        return number
    matched = class_label(value, loaded.classes)
    if matched is None:
        classes = [str(c) for c in loaded.classes or ()]
        shown = ", ".join(classes[:_SHOWN_CLASSES]) + (
            " ..." if len(classes) > _SHOWN_CLASSES else ""
        )
        problems.append(
            ErrorDetail(
                field=field,
                message=f"'label' must be one of the classes of model '{loaded.name}' "
                f"({shown}), got {_described(value)}.",
            )
        )
    return matched


def class_label(value: Any, classes: Sequence[Any] | None) -> str | None:
    """``str()`` of the class ``value`` names, as the prediction log writes predictions; None
    when it names none. Equal values match (``1`` and ``1.0``; a boolean only a boolean),
    and so does the text of a class (``"1"`` for class ``1``)."""
    if isinstance(value, dict | list) or value is None:
        return None
    if classes is None:  # a classifier that does not list its classes: take the label as is
        return str(value)
    for candidate in classes:
        if (isinstance(value, bool) or isinstance(candidate, bool)) and type(value) is not type(
            candidate
        ):
            continue
        if value == candidate:
            return str(candidate)
    if isinstance(value, str):
        for candidate in classes:
            if str(candidate) == value:
                return str(candidate)
    return None


def _described(value: Any) -> str:
    if isinstance(value, str):
        return _shown(value)
    if isinstance(value, bool) or value is None or isinstance(value, dict | list):
        return json_kind(value)
    return repr(value)


def _shown(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:40] + "...")
