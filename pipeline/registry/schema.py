"""Schema guard: a version Production's clients could not call does not reach Production silently.

The server builds its request contract from the answering model's input signature, forbids
unknown fields and refuses a missing required one. Swapping to a version with other inputs
therefore turns every existing client's request into a 422. A candidate is *compatible* when
every request the current Production accepts is accepted by the candidate too:

- breaking: a column removed (clients still send it: "not an input of this model"); a required
  column added; an optional column made required; a type change that refuses values the old
  type took: float -> integer (1.5 is refused), a narrower integer (long -> integer), or any
  change to or from string or boolean; a candidate that declares no input columns at all while
  Production does.
- compatible (reported as notes, never refused): an optional column added; a required column
  made optional; a wider integer (integer -> long); integer -> float or double (a JSON integer
  is a number; the server takes whole-number floats for integer columns, not the reverse);
  float <-> double (both take any finite JSON number); a different column order (requests
  name their fields).

With no Production version, or a Production version that declares no named input columns,
there is nothing to break and the guard passes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from mlflow.exceptions import MlflowException
from mlflow.models import get_model_info
from mlflow.tracking import MlflowClient
from mlflow.types.schema import ColSpec, DataType, Schema

from pipeline.contracts import COLUMN_TYPES, ColumnType
from pipeline.errors import RegistryError
from pipeline.registry import production

logger = logging.getLogger(__name__)

OVERRIDE_HINT = (
    "update the clients first, then promote with --allow-schema-change "
    "(the gate: set gate.allow_schema_change: true)"
)


class SchemaChangeError(RegistryError):
    """Promotion refused: the candidate's inputs would break requests Production accepts."""


@dataclass(frozen=True)
class SchemaChange:
    """One difference between two input signatures, in words."""

    column: str | None
    description: str
    breaking: bool


@dataclass(frozen=True)
class SchemaComparison:
    """Every difference between Production's inputs and a candidate's, breaking ones first."""

    changes: tuple[SchemaChange, ...]

    @property
    def breaking(self) -> tuple[SchemaChange, ...]:
        return tuple(change for change in self.changes if change.breaking)

    @property
    def compatible(self) -> bool:
        return not self.breaking

    def describe(self) -> str:
        """The breaking differences as one line ("" when compatible)."""
        return "; ".join(change.description for change in self.breaking)


def compare(current: Schema | None, candidate: Schema | None) -> SchemaComparison:
    """Compare Production's input schema (`current`) with a candidate's; pure, no MLflow calls."""
    old = _columns(current)
    if old is None:
        return SchemaComparison(())
    new = _columns(candidate)
    if new is None:
        listed = ", ".join(f"'{name}'" for name in old)
        return SchemaComparison(
            (
                SchemaChange(
                    None,
                    f"the candidate declares no input columns, Production declares {listed}",
                    breaking=True,
                ),
            )
        )
    changes = [_removed(spec) for name, spec in old.items() if name not in new]
    changes += [_added(spec) for name, spec in new.items() if name not in old]
    for name in old.keys() & new.keys():
        changes += _changed(old[name], new[name])
    ordered = sorted(changes, key=lambda c: (not c.breaking, c.column or ""))
    return SchemaComparison(tuple(ordered))


def input_schema(client: MlflowClient, name: str, version: str) -> Schema | None:
    """The input schema logged with version `version` of `name` (None if it has no signature).

    Only the version's MLmodel file is read, from the artifact location `client`'s registry
    records, so the check costs one small download, not a model load.
    """
    try:
        location = client.get_model_version_download_uri(name, version)
        signature = get_model_info(location).signature
    except (MlflowException, OSError) as exc:
        raise RegistryError(
            f"cannot read the input signature of version {version} of '{name}': {exc}; "
            "check the version exists and its artifacts are reachable"
        ) from exc
    return None if signature is None else signature.inputs


def compare_versions(
    client: MlflowClient, name: str, candidate: str, production_version: str
) -> SchemaComparison:
    """How version `candidate`'s inputs differ from those of version `production_version`."""
    return compare(
        input_schema(client, name, production_version), input_schema(client, name, candidate)
    )


def check(
    client: MlflowClient,
    name: str,
    version: str,
    production_version: str | None,
    *,
    allow_schema_change: bool = False,
) -> SchemaComparison | None:
    """Refuse `version` if its inputs break requests `production_version` accepts.

    Returns the comparison (None without a Production version). A breaking change raises
    SchemaChangeError listing every difference, unless `allow_schema_change`, when it is
    logged as a warning instead.
    """
    if production_version is None or str(production_version) == str(version):
        return None
    comparison = compare_versions(client, name, str(version), str(production_version))
    for change in comparison.changes:
        if not change.breaking:
            logger.info("Version %s of '%s': %s", version, name, change.description)
    if comparison.compatible:
        return comparison
    if allow_schema_change:
        logger.warning(
            "Version %s of '%s' changes the inputs Production v%s accepts (allowed): %s",
            version,
            name,
            production_version,
            comparison.describe(),
        )
        return comparison
    raise SchemaChangeError(refusal(name, str(version), str(production_version), comparison))


def check_promotion(
    client: MlflowClient, name: str, version: str, *, allow_schema_change: bool = False
) -> SchemaComparison | None:
    """`check` against the version in Production now (read from the registry)."""
    current = production.production_version(client, name)
    return check(
        client,
        name,
        version,
        None if current is None else str(current.version),
        allow_schema_change=allow_schema_change,
    )


def gate_rejection(
    client: MlflowClient,
    name: str,
    version: str,
    champion_version: str | None,
    *,
    allow_schema_change: bool,
) -> str | None:
    """The gate's reason to reject `version` for its inputs, or None if they do not block it.

    The gate records a rejection instead of failing, so the same rule as `check` is returned
    as the reason (the same one-line message) rather than raised.
    """
    try:
        check(client, name, version, champion_version, allow_schema_change=allow_schema_change)
    except SchemaChangeError as exc:
        return str(exc)
    return None


def refusal(name: str, version: str, production_version: str, comparison: SchemaComparison) -> str:
    """The one-line message that refuses a breaking candidate and says how to override."""
    return (
        f"version {version} of '{name}' would break clients of Production version "
        f"{production_version}: {comparison.describe()}; {OVERRIDE_HINT}"
    )


def _columns(schema: Schema | None) -> Mapping[str, ColSpec] | None:
    # A tensor signature or unnamed columns give the server no per-field contract to keep.
    if schema is None or schema.is_tensor_spec() or not schema.has_input_names():
        return None
    return {str(spec.name): spec for spec in schema.inputs if isinstance(spec, ColSpec)}


def _type_name(spec: ColSpec) -> str:
    return spec.type.name if isinstance(spec.type, DataType) else str(spec.type)


def _label(spec: ColSpec) -> str:
    return f"{_type_name(spec)}, {'required' if spec.required else 'optional'}"


def _removed(spec: ColSpec) -> SchemaChange:
    return SchemaChange(
        spec.name,
        f"column '{spec.name}' ({_label(spec)}) was removed, "
        "so requests that send it would be refused",
        breaking=True,
    )


def _added(spec: ColSpec) -> SchemaChange:
    if spec.required:
        return SchemaChange(
            spec.name,
            f"required column '{spec.name}' ({_type_name(spec)}) was added, "
            "so requests without it would be refused",
            breaking=True,
        )
    return SchemaChange(
        spec.name,
        f"optional column '{spec.name}' ({_type_name(spec)}) was added",
        breaking=False,
    )


def _changed(old: ColSpec, new: ColSpec) -> list[SchemaChange]:
    changes = []
    if old.required and not new.required:
        changes.append(SchemaChange(old.name, f"column '{old.name}' became optional", False))
    elif new.required and not old.required:
        changes.append(
            SchemaChange(
                old.name,
                f"column '{old.name}' became required, so requests without it would be refused",
                breaking=True,
            )
        )
    retyped = _retyped(str(old.name), _type_name(old), _type_name(new))
    return changes if retyped is None else [*changes, retyped]


def _retyped(column: str, old: str, new: str) -> SchemaChange | None:
    if old == new:
        return None
    old_type, new_type = COLUMN_TYPES.get(old), COLUMN_TYPES.get(new)
    if old_type is not None and new_type is not None and _widens(old_type, new_type):
        return SchemaChange(
            column, f"column '{column}' changed type from {old} to {new}, which accepts it", False
        )
    return SchemaChange(
        column,
        f"column '{column}' changed type from {old} to {new}, so {_refused(old_type, new_type)}",
        breaking=True,
    )


def _widens(old: ColumnType, new: ColumnType) -> bool:
    """True when every value a request may send for `old` is valid for `new`."""
    if old.kind == "integer" and new.kind == "integer":
        return (new.bits or 0) >= (old.bits or 0)
    if old.kind == "integer" and new.kind == "float":
        return True
    return old.kind == "float" and new.kind == "float"


def _refused(old: ColumnType | None, new: ColumnType | None) -> str:
    if old is not None and new is not None and old.kind == "float" and new.kind == "integer":
        return "requests with fractional values such as 1.5 would be refused"
    if old is not None and new is not None and old.kind == new.kind == "integer":
        return f"values beyond {new.bits} bits would be refused"
    sent = old.json_kind if old is not None else "the old type's values"
    return f"requests sending {sent} would be refused"
